"""Export a detector to ONNX, for faster CPU inference with ONNX Runtime.

``deepfake export --model REF --format onnx --out DIR`` writes ``DIR/model.onnx`` and the
same ``model.meta.json`` (threshold, classes, image size); ``deepfake predict --model DIR``
then runs on ONNX Runtime (:class:`deepfake.inference.OnnxModel`). Preprocessing is inside the
exported graph, as in Keras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepfake.errors import DeepfakeError
from deepfake.inference import META_FILE, ONNX_FILE, OnnxModel, Predictor

FORMATS = ("onnx",)


def export(predictor: Predictor, out_dir: str | Path, fmt: str = "onnx", check_images: int = 100) -> dict:
    """Export a loaded Keras detector to ``out_dir`` and check it agrees with Keras on random images;
    returns the path and the max abs difference."""
    if fmt not in FORMATS:
        raise DeepfakeError(f"--format {fmt}: unsupported; use one of {', '.join(FORMATS)}")
    if isinstance(predictor.model, OnnxModel):
        raise DeepfakeError("--model: this is already an exported ONNX model; export the Keras model (model.keras)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = predictor.image_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (check_images, size, size, 3)).astype("float32")
    expected = predictor.model.predict(x, batch_size=32, verbose=0)  # also "calls" the model, as export needs
    predictor.model.export(str(out / ONNX_FILE), format="onnx", verbose=False)
    predictor.meta.save(out / META_FILE)
    got = OnnxModel(out / ONNX_FILE).predict(x)
    diff = float(np.abs(got - expected).max())
    if diff > 1e-3:
        (out / ONNX_FILE).unlink(missing_ok=True)
        raise DeepfakeError(f"exported model disagrees with Keras (max abs difference {diff:.2e}); not exported")
    return {"path": str(out / ONNX_FILE), "max_abs_diff": diff, "n_checked": check_images}
