"""Export a detector to ONNX and run it with ONNX Runtime (faster CPU inference).

``deepfake export --model REF --format onnx --out DIR`` writes ``DIR/model.onnx`` and the
same ``model.meta.json`` (threshold, classes, image size); ``deepfake predict --model DIR``
then runs on ONNX Runtime. Preprocessing is inside the exported graph, as in Keras.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from deepfake.errors import DeepfakeError

ONNX_FILE = "model.onnx"
FORMATS = ("onnx",)


class OnnxModel:
    """An ONNX Runtime session with the slice of the Keras API that :class:`Predictor` uses."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise DeepfakeError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:150]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, images: np.ndarray, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        x = np.asarray(images, dtype="float32")
        outs = [self.session.run(None, {self.input_name: x[i : i + batch_size]})[0]
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, 1), dtype="float32")


def export(model_ref: str, out_dir: str | Path, fmt: str = "onnx", check_images: int = 100) -> dict:
    """Export ``model_ref`` to ``out_dir`` and check it agrees with Keras; returns the max abs difference."""
    from deepfake.inference import META_FILE, load_predictor

    if fmt not in FORMATS:
        raise DeepfakeError(f"--format {fmt}: unsupported; use one of {', '.join(FORMATS)}")
    predictor = load_predictor(model_ref)
    if isinstance(predictor.model, OnnxModel):
        raise DeepfakeError(f"--model {model_ref} is already an exported ONNX model")
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
        shutil.rmtree(out / ONNX_FILE, ignore_errors=True)
        raise DeepfakeError(f"exported model disagrees with Keras (max abs difference {diff:.2e}); not exported")
    return {"path": str(out / ONNX_FILE), "max_abs_diff": diff, "n_checked": check_images}
