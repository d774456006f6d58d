"""Inference: the trained detector applied to files, bytes and base64 strings.

A saved detector is a folder with ``model.keras`` (the Keras model, preprocessing inside)
and ``model.meta.json`` (threshold chosen on validation, class names, image size). The
same :func:`deepfake.data.decode_image` that fed training decodes and resizes here.
Nothing here talks to MLflow; :mod:`deepfake.tracking` wraps :class:`Predictor` as a pyfunc.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from deepfake import backbones
from deepfake.errors import DeepfakeError

KERAS_FILE = "model.keras"
META_FILE = "model.meta.json"


@dataclass
class ModelMeta:
    threshold: float = 0.5
    class_names: list[str] = field(default_factory=lambda: ["real", "fake"])
    image_size: int = 224
    threshold_method: str = "youden"
    weights_source: str = "unknown"
    backbone: str = backbones.DEFAULT  # models saved before backbones were a choice are ResNet50
    temperature: float = 1.0  # logit temperature fitted on validation (1.0 = none)

    @classmethod
    def load(cls, path: str | Path) -> "ModelMeta":
        path = Path(path)
        if not path.is_file():
            raise DeepfakeError(f"model metadata {path} is missing; a saved detector needs {KERAS_FILE} and {META_FILE}")
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def save_detector(model, meta: ModelMeta, out_dir: str | Path) -> Path:
    """Write ``model.keras`` and ``model.meta.json`` into ``out_dir``; return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / KERAS_FILE)
    meta.save(out / META_FILE)
    return out


def _as_bytes(value: Any) -> bytes:
    """A path, raw encoded bytes or a base64 string -> encoded image bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError(f"unsupported input type {type(value).__name__}; give a path, bytes or base64 string")
    text = value.strip()
    if not text:
        raise ValueError("empty input")
    if len(text) < 4096 and Path(text).expanduser().is_file():
        return Path(text).expanduser().read_bytes()
    if text.startswith("data:") and "," in text:  # data URL
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        if len(text) < 4096 and ("/" in text or "." in text):
            raise ValueError(f"no such file: {text}") from None
        raise ValueError("not a file path and not valid base64") from None


class Predictor:
    """A loaded detector: ``predict_*`` methods return fake probabilities and labels."""

    def __init__(self, keras_model, meta: ModelMeta):
        self.model = keras_model
        self.meta = meta

    @classmethod
    def from_files(cls, keras_path: str | Path, meta_path: str | Path) -> "Predictor":
        from deepfake.model import load_keras_model

        return cls(load_keras_model(keras_path), ModelMeta.load(meta_path))

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Predictor":
        """A folder with ``model.keras`` (Keras) or ``model.onnx`` (ONNX Runtime), or a ``.keras`` file."""
        from deepfake.export import ONNX_FILE, OnnxModel

        model_dir = Path(model_dir)
        if model_dir.is_dir() and (model_dir / ONNX_FILE).is_file() and not (model_dir / KERAS_FILE).is_file():
            return cls(OnnxModel(model_dir / ONNX_FILE), ModelMeta.load(model_dir / META_FILE))
        if model_dir.is_file() and model_dir.suffix == ".keras":
            meta = model_dir.with_name(META_FILE)
            return cls.from_files(model_dir, meta)
        return cls.from_files(model_dir / KERAS_FILE, model_dir / META_FILE)

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    def label_of(self, probability: float) -> str:
        return self.meta.class_names[int(probability >= self.meta.threshold)]

    def predict_arrays(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Decoded images ``(N, S, S, 3)`` in 0..255 -> fake probabilities ``(N,)``."""
        if len(images) == 0:
            return np.zeros((0,), dtype="float64")
        return self.calibrate(self.model.predict(np.asarray(images, dtype="float32"), batch_size=batch_size,
                                                 verbose=0))

    def calibrate(self, raw: Any) -> np.ndarray:
        """The model's raw sigmoid outputs -> the fake probabilities this detector reports ``(N,)``
        (the temperature fitted on validation applied); predict_arrays and Grad-CAM both use it."""
        return apply_temperature(np.asarray(raw, dtype="float64").reshape(-1), self.meta.temperature)

    def decode(self, value: Any) -> np.ndarray:
        """One input (path, bytes or base64) -> ``(S, S, 3)`` float32 pixels; raises ValueError."""
        from deepfake.data import check_bytes, decode_image

        raw = _as_bytes(value)
        problem = check_bytes(raw)
        if problem:
            raise ValueError(problem)
        try:
            return np.asarray(decode_image(raw, self.image_size))
        except Exception as exc:  # tf.errors.InvalidArgumentError and friends
            raise ValueError(f"cannot decode image: {str(exc).splitlines()[0][:120]}") from None

    def predict_values(self, values: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        """Any mix of paths/bytes/base64 -> one dict per input; bad inputs get ``error``."""
        rows: list[dict[str, Any]] = []
        for start in range(0, len(values), batch_size):
            chunk = values[start : start + batch_size]
            images, good = [], []
            out = [{"fake_probability": float("nan"), "label": None, "error": None} for _ in chunk]
            for i, value in enumerate(chunk):
                try:
                    images.append(self.decode(value))
                    good.append(i)
                except (ValueError, OSError) as exc:
                    out[i]["error"] = str(exc)
            if images:
                probs = self.predict_arrays(np.stack(images), batch_size=batch_size)
                for i, p in zip(good, probs):
                    out[i].update(fake_probability=float(p), label=self.label_of(float(p)))
            rows.extend(out)
        return rows

    def predict_frame(self, frame):
        """pyfunc entry: DataFrame with an ``image`` column -> DataFrame of results."""
        import pandas as pd

        if isinstance(frame, pd.DataFrame):
            if "image" not in frame.columns:
                if len(frame.columns) == 1:
                    values = frame.iloc[:, 0].tolist()
                else:
                    raise DeepfakeError("input needs an 'image' column (file paths, bytes or base64 strings)")
            else:
                values = frame["image"].tolist()
        elif isinstance(frame, dict) and "image" in frame:
            values = list(frame["image"]) if not isinstance(frame["image"], (str, bytes)) else [frame["image"]]
        else:
            values = list(frame)
        rows = self.predict_values(values)
        return pd.DataFrame(
            {
                "fake_probability": [r["fake_probability"] for r in rows],
                "label": [r["label"] or "" for r in rows],
                "error": [r["error"] or "" for r in rows],
            }
        )


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities' logits by 1/temperature (temperature scaling)."""
    if temperature == 1.0:
        return probs
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    logits = np.log(p / (1 - p)) / temperature
    return 1.0 / (1.0 + np.exp(-logits))


def example_frames(meta: ModelMeta):
    """A one-row input example (a base64 PNG) and the matching output, for the model signature."""
    import pandas as pd

    example_img = _example_png(min(meta.image_size, 32))
    example = pd.DataFrame({"image": [base64.b64encode(example_img).decode("ascii")]})
    output = pd.DataFrame({"fake_probability": [0.5], "label": [meta.class_names[1]], "error": [""]})
    return example, output


def _example_png(size: int) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def pip_requirements() -> list[str]:
    from importlib import metadata

    reqs = []
    for name in ("tensorflow-cpu", "keras", "mlflow", "numpy", "pandas", "pillow"):
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name == "tensorflow-cpu":
                try:
                    reqs.append(f"tensorflow=={metadata.version('tensorflow')}")
                except metadata.PackageNotFoundError:
                    pass
    return reqs


def iter_image_files(paths: Iterable[str]) -> list[Path]:
    """Files, folders (recursive) and globs -> image files, sorted, de-duplicated."""
    import glob

    from deepfake.data import IMAGE_EXTENSIONS

    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found.extend(f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(glob.glob(str(p), recursive=True))
            if not matches:
                raise DeepfakeError(f"{raw}: no such file, folder or matching glob")
            found.extend(Path(m) for m in matches if Path(m).is_file())
    seen, unique = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


DEFAULT_MODEL_URI = "models:/deepfake-detector@champion"


def load_predictor(ref: str) -> Predictor:
    """A local model folder / ``.keras`` file, or an MLflow model URI (downloaded first)."""
    from deepfake import tracking

    if tracking.is_model_uri(ref):
        return Predictor.from_dir(tracking.download_model_dir(ref))
    path = Path(ref).expanduser()
    if not path.exists():
        raise DeepfakeError(
            f"--model {ref}: no such file or folder; give a model folder (with {KERAS_FILE}) or a URI "
            "such as models:/deepfake-detector@champion"
        )
    return Predictor.from_dir(path)


def sample_predictions(predictor: Predictor, split, class_names: Sequence[str], n: int = 1, seed: int = 0):
    """Predict ``n`` randomly chosen images of ``split`` (seeded); undecodable picks are replaced."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.paths))
    picked: list[dict[str, Any]] = []
    for idx in order:
        path = split.paths[idx]
        try:
            image = predictor.decode(path)
        except (ValueError, OSError):
            continue
        prob = float(predictor.predict_arrays(image[None])[0])
        picked.append({
            "path": str(path),
            "name": Path(path).name,
            "image": image,
            "true_label": class_names[split.labels[idx]],
            "predicted_label": predictor.label_of(prob),
            "fake_probability": prob,
        })
        if len(picked) == n:
            break
    if not picked:
        raise DeepfakeError("no decodable image in the chosen split; check the dataset")
    return picked


def predict_split(predictor: Predictor, split, batch_size: int = 32) -> np.ndarray:
    """Fake probabilities for every image of a dataset split, streamed through the training decoder."""
    from deepfake.config import DataConfig
    from deepfake.data import make_dataset

    cfg = DataConfig(image_size=predictor.image_size, batch_size=batch_size, cache="none")
    probs = [predictor.predict_arrays(images.numpy(), batch_size=batch_size)
             for images, _ in make_dataset(split, cfg, training=False)]
    return np.concatenate(probs) if probs else np.zeros((0,))
