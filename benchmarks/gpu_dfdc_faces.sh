#!/usr/bin/env bash
# The dfdc_faces recipe on the device machine's GPU, JAX then PyTorch (benchmarks/results/gpu.md says how to run it).
# Needs the ignored folder .gpu/ that tools/gpu_wheels.sh builds (wheels, the deepfake wheel, the dataset's copy),
# carried with the call: run(command="bash benchmarks/gpu_dfdc_faces.sh --epochs 1 --fine-tune-epochs 3",
# carry=[".gpu"], timeout_s=600). Writes $OUT/gpu_dfdc_faces.{log,json,md} (and install.log).
# Arguments go to benchmarks/gpu_dfdc_faces.py (--backends, --epochs, --fine-tune-epochs, --timeout, --set, ...).
set -uo pipefail
OUT=${OUT:-$PWD/benchmarks/_work/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
{
  echo "# $(date -u +%FT%TZ) $(uname -m) $($PY -V 2>&1)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  if [ -d .gpu/whl ]; then
    # the project's pure-Python needs the machine lacks, and the deepfake wheel (its configs, entry point)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
      || { echo "wheel install failed"; exit 3; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "no .gpu/whl: run tools/gpu_wheels.sh here and carry .gpu"
  fi
  # Keras defaults to TensorFlow, absent there: the check imports it on JAX (each training run sets its own backend)
  (cd /tmp && KERAS_BACKEND=jax $PY - <<'PYEOF' 2>&1) || echo "import check failed (see above); training anyway"
import importlib
from importlib import metadata
for name in ("keras", "jax", "jaxlib", "jax-cuda13-plugin", "torch", "numpy", "mlflow-skinny", "optuna", "deepfake"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "MISSING")
import deepfake, keras
print("deepfake from", deepfake.__file__, "; keras", keras.__version__, "on", keras.backend.backend())
PYEOF
} 2>&1 | tee "$OUT/install.log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 3
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
PYTHONUNBUFFERED=1 exec $PY benchmarks/gpu_dfdc_faces.py --out "$OUT" "$@"
