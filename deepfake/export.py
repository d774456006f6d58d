"""Export a detector for fast CPU inference: ONNX Runtime, or OpenVINO in float32, bfloat16 or int8.

``deepfake export --model REF --format FORMAT --out DIR`` writes the model file(s) and the same
``model.meta.json`` (threshold, classes, image size, and the runtime's ``format`` and ``precision``);
``deepfake predict|evaluate --model DIR``, the pyfunc and ``mlflow models serve`` then run on that
runtime (:mod:`deepfake.runtimes`). Preprocessing is inside the exported graph, as in Keras.

Formats (measured in ``benchmarks/results/inference.md``):

- ``onnx``: the Keras model as ONNX, run by ONNX Runtime.
- ``openvino``: that ONNX model converted to OpenVINO's format, run in float32.
- ``openvino-bf16``: the same files, run with OpenVINO's bfloat16 inference precision on CPUs with
  AVX512_BF16 or AMX (float32 elsewhere).
- ``openvino-int8``: post-training static quantisation (ONNX Runtime's ``quantize_static``, QDQ format,
  int8 weights per channel, uint8 activations) calibrated on images of the validation split of ``--data``,
  converted to OpenVINO, which runs the quantised layers in int8 (VNNI/AMX). ONNX Runtime's quantiser was
  picked over NNCF: run by OpenVINO, its model measured as fast as NNCF's (36 against 36 images/s at
  batch 32 on ResNet50, 224 px, here) and it is a dependency we already have; NNCF would add networkx, ninja,
  pydot, rich and more.

Every export is checked before anything is written to ``--out``: the exported model's probabilities are
compared with Keras on held-back images (the validation split of ``--data``, else random pixels) by max
absolute difference; with ``--data``, its validation ROC-AUC must also be within 0.005 of Keras' (the check
that decides for int8, whose probabilities move more). A model that scores the mean over a grid of crops
(``data.fit: crop``) is checked on those crops, and its ROC-AUC and decisions on each image's mean, as it is
scored. An export that fails is refused with the figures and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deepfake.errors import DeepfakeError
from deepfake.inference import KERAS_FILE, META_FILE, Predictor
from deepfake.runtimes import EXPORTED_FILES, ONNX_FILE, OPENVINO_FILE

FORMATS = ("onnx", "openvino", "openvino-bf16", "openvino-int8")
PRECISION = {"onnx": "f32", "openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
# Largest max abs difference of probabilities from Keras that passes (int8 is judged by ROC-AUC).
MAX_ABS_DIFF = {"onnx": 1e-3, "openvino": 1e-3, "openvino-bf16": 0.05, "openvino-int8": 1.0}
MAX_AUC_DROP = 0.005
CHECK_IMAGES = 500  # at most this many validation images are predicted for the check
CALIBRATION_IMAGES = 300  # of which at most this many calibrate int8 quantisation
FLOAT32_PARTS = ("preprocess", "head")  # the detector's parts (model.py names them) int8 leaves in float32


def check_images(predictor: Predictor, split: Any | None, n_random: int = 100,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The model's inputs to check an export on, the labels of their images, and for a crop model the image each
    input is a crop of (else ``None``): up to :data:`CHECK_IMAGES` images of ``split`` (a
    :class:`deepfake.data.Split`, seeded pick) as the model sees them at inference (its pixels, or for ``fit: crop``
    every crop of its grid), or ``n_random`` images of uniform noise when there is none."""
    size = predictor.image_size
    rng = np.random.default_rng(seed)
    if split is None:
        return rng.uniform(0, 255, (n_random, size, size, 3)).astype("float32"), None, None
    from deepfake.config import DataConfig
    from deepfake.input_pipeline import batches as batches_of
    from deepfake.input_pipeline import make_dataset

    pick = np.sort(rng.permutation(len(split.paths))[:CHECK_IMAGES])
    sub = split.subset(pick)
    cfg = DataConfig(image_size=size, batch_size=32, cache="none", fit=predictor.meta.fit,
                     test_crops=predictor.meta.test_crops)  # as Predictor.predict_split scores a split
    batches = list(batches_of(make_dataset(sub, cfg, training=False, owners=predictor.crop)))
    owners = np.concatenate([b[2] for b in batches]) if predictor.crop else None
    return (np.concatenate([b[0] for b in batches]).astype("float32"), np.asarray(sub.labels, dtype=int), owners)


def _roc_auc(labels: np.ndarray | None, probs: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if labels is None or len(set(labels.tolist())) < 2:
        return None
    return float(roc_auc_score(labels, probs))


def _quantize_int8(onnx_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Static int8 quantisation of ``onnx_path`` (QDQ, per-channel int8 weights, uint8 activations)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: calibration[i : i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = out_path.with_name("prepared.onnx")
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    # The preprocessing (pixels, the NPR residual) and the head stay float32: only the backbone is quantised.
    keep_float = [node.name for node in onnx.load(str(prepared)).graph.node
                  if any(f"/{part}" in node.name for part in FLOAT32_PARTS)]
    quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
    prepared.unlink()


def to_onnx(model: Any, path: Path) -> None:
    """The Keras model as an ONNX file (Keras' own export: through tf2onnx on TensorFlow, ``torch.onnx`` on PyTorch,
    elsewhere): the step every format starts from. On JAX the model is saved and exported by a child process on
    TensorFlow or PyTorch, whichever is installed (:func:`_export_elsewhere`): jax2onnx's graph of ResNet50 is one
    ONNX Runtime refuses (its max pooling). Either way the caller checks the file against this process's Keras."""
    import keras

    if keras.backend.backend() == "jax":
        _export_elsewhere(model, path)
        return
    if not getattr(model, "_called", True):  # Keras exports only a model that has run once (a freshly loaded one)
        model(np.zeros((1, *model.input_shape[1:]), dtype="float32"), training=False)
    model.export(str(path), format="onnx", verbose=False)


def _export_elsewhere(model: Any, path: Path) -> None:
    """``model`` as ONNX, exported by ``python -m deepfake.export`` on the first backend of TensorFlow and PyTorch
    that is installed."""
    import importlib.util
    import os
    import subprocess
    import sys

    from deepfake import atomic

    exporter = next((name for name in ("tensorflow", "torch") if importlib.util.find_spec(name)), None)
    if exporter is None:
        raise DeepfakeError("exporting a model from the jax backend needs TensorFlow or PyTorch installed to write "
                            "the ONNX file: pip install 'deepfake[cpu]'")
    with tempfile.TemporaryDirectory(prefix="deepfake-export-") as tmp:
        saved = Path(tmp) / KERAS_FILE
        atomic.save_model(model, saved)
        env = {**os.environ, "KERAS_BACKEND": exporter, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, "-m", "deepfake.export", str(saved), str(path)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise DeepfakeError(f"the ONNX export on {exporter} failed: {last[:200]}")


def _main(argv: list[str]) -> None:
    """``python -m deepfake.export SAVED.keras OUT.onnx``: the ONNX file of a saved detector, on this process's
    backend (:func:`_export_elsewhere` runs it)."""
    from deepfake.model import load_keras_model

    to_onnx(load_keras_model(argv[0]), Path(argv[1]))


def _to_openvino(onnx_path: Path, folder: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / OPENVINO_FILE), compress_to_fp16=False)


def _write(predictor: Predictor, folder: Path, fmt: str, calibration: np.ndarray | None) -> None:
    """The exported model files and metadata of ``fmt`` into ``folder``."""
    onnx_path = folder / ONNX_FILE
    to_onnx(predictor.model, onnx_path)
    if fmt == "openvino-int8":
        assert calibration is not None
        quantized = folder / "int8.onnx"
        _quantize_int8(onnx_path, quantized, calibration)
        _to_openvino(quantized, folder)
        quantized.unlink()
    elif fmt.startswith("openvino"):
        _to_openvino(onnx_path, folder)
    if fmt != "onnx":
        onnx_path.unlink()
    replace(predictor.meta, format=fmt, precision=PRECISION[fmt]).save(folder / META_FILE)


def _install(tmp: Path, out: Path) -> None:
    """Move the checked files from ``tmp`` into ``out``, the metadata last, removing another format's files."""
    out.mkdir(parents=True, exist_ok=True)
    for name in EXPORTED_FILES:
        if not (tmp / name).exists():
            (out / name).unlink(missing_ok=True)
    for name in [*EXPORTED_FILES, META_FILE]:
        if (tmp / name).exists():
            (tmp / name).replace(out / name)


def export(predictor: Predictor, out_dir: str | Path, fmt: str = "onnx", *, split: Any | None = None,
           tolerance: float | None = None, echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Export a loaded Keras detector to ``out_dir`` as ``fmt``, checked against Keras first (see the module
    docstring); ``split`` is the validation split that calibrates int8 and checks the export. Returns the
    path, the format and the check's figures."""
    if fmt not in FORMATS:
        raise DeepfakeError(f"--format {fmt}: unsupported; use one of {', '.join(FORMATS)}")
    if predictor.is_exported:
        raise DeepfakeError(f"--model: this is already an exported {predictor.meta.format} model; export the "
                            f"Keras model ({KERAS_FILE})")
    if fmt == "openvino-int8" and split is None:
        raise DeepfakeError("--format openvino-int8 needs --data DIR: its validation images calibrate the "
                            "quantisation and check the int8 model's ROC-AUC")
    out = Path(out_dir)
    if (out / KERAS_FILE).exists():
        raise DeepfakeError(f"--out {out}: holds a Keras model ({KERAS_FILE}); export into another folder")
    echo("Reading check images..." if split is not None else "Checking on random images (no --data)")
    x, labels, owners = check_images(predictor, split)
    expected = predictor.model.predict(x, batch_size=32, verbose=0).reshape(-1)  # also builds the model for export
    calibration = x[:CALIBRATION_IMAGES] if fmt == "openvino-int8" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-export-", dir=out.parent))
    try:
        echo(f"Exporting to {fmt}" + (f" (calibrating on {len(calibration)} validation images)"
                                      if calibration is not None else ""))
        _write(predictor, tmp, fmt, calibration)
        exported = Predictor.from_dir(tmp)
        got = exported.model.predict(x, batch_size=32).reshape(-1)
        report = _check(fmt, expected, got, labels, tolerance, owners,
                        decide=lambda raw: predictor.calibrate(raw) >= predictor.meta.threshold)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = out / (ONNX_FILE if fmt == "onnx" else OPENVINO_FILE)
    return {"path": str(path), "format": fmt, **report}


def _check(fmt: str, expected: np.ndarray, got: np.ndarray, labels: np.ndarray | None, tolerance: float | None,
           owners: np.ndarray | None, decide: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """The agreement figures of an export: the largest difference of the raw outputs of any input, and the ROC-AUC and
    decisions (``decide``: fake or not from raw outputs) of each image, from the mean over its crops when ``owners``
    (:func:`check_images`) says which image each input is a crop of; raises :class:`DeepfakeError` when they fail."""
    from deepfake.input_pipeline import mean_by_owner

    diff = float(np.abs(got - expected).max())
    limit = MAX_ABS_DIFF[fmt] if tolerance is None else tolerance
    keras_images, export_images = ((raw if owners is None else mean_by_owner(raw, owners, len(labels)))
                                   for raw in (expected, got))
    auc_keras, auc_export = _roc_auc(labels, keras_images), _roc_auc(labels, export_images)
    report: dict[str, Any] = {
        "n_checked": len(keras_images), "n_inputs": len(expected), "max_abs_diff": diff, "roc_auc_keras": auc_keras,
        "roc_auc_export": auc_export, "same_decisions": float(np.mean(decide(keras_images) == decide(export_images))),
    }
    problems = []
    if diff > limit:
        problems.append(f"max abs difference of probabilities {diff:.2e} > {limit:.0e}")
    if auc_keras is not None and auc_export is not None and auc_keras - auc_export > MAX_AUC_DROP:
        problems.append(f"validation ROC-AUC {auc_export:.4f} against Keras {auc_keras:.4f} "
                        f"(more than {MAX_AUC_DROP} lower)")
    if problems:
        raise DeepfakeError(f"the {fmt} export disagrees with Keras on {len(keras_images)} images: "
                            f"{'; '.join(problems)}; nothing exported (try another --format)")
    return report


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
