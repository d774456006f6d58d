"""Inference: the trained detector applied to files, bytes and base64 strings.

A saved detector is a folder with ``model.keras`` (the Keras model, preprocessing inside)
and ``model.meta.json`` (threshold chosen on validation, class names, image size). Images are decoded and
resized by :func:`deepfake.pixels.decode`, the NumPy/Pillow twin of the :func:`deepfake.images.decode_image` that
fed training (the same pixels, without TensorFlow's per-op overhead on one image at a time). A folder
exported by :mod:`deepfake.export` holds ``model.onnx`` (ONNX Runtime) or ``model.xml``/``model.bin``
(OpenVINO) instead, run by :mod:`deepfake.runtimes`.

Nothing here talks to MLflow: models are read from local folders (:func:`deepfake.tracking.local_model`
downloads MLflow model URIs first), and ``deepfake/pyfunc_model.py`` serves :class:`Predictor` as a pyfunc.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake import atomic, backbones
from deepfake.calibration import apply_temperature
from deepfake.errors import DeepfakeError, TooLarge, first_line
from deepfake.images import DEFAULT_MAX_PIXELS
from deepfake.runtimes import EXPORTED_FILES, OnnxModel, OpenVinoModel, load_exported
from deepfake.video import is_video_bytes

if TYPE_CHECKING:
    import keras
    import pandas as pd

    from deepfake.config import Config, DataConfig
    from deepfake.data import Split
    from deepfake.media import Media

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
    format: str = "keras"  # keras, or the export format (deepfake.export.FORMATS)
    precision: str = "f32"  # the runtime's inference precision for an exported model: f32, bf16 (int8 is in the model)
    faces: dict = field(default_factory=dict)  # the FaceConfig it was trained with (empty: no face crops)
    video: dict = field(default_factory=dict)  # the VideoConfig it was trained with (frame sampling, aggregation)
    fit: str = "resize"  # data.fit: resize (older models), or crop: the mean over a grid of crops at full resolution
    test_crops: int = 3  # data.test_crops: for fit crop, at most this many crops per side
    datasets: list[str] = field(default_factory=list)  # the folder names of the datasets it was trained on

    @classmethod
    def from_config(cls, cfg: Config, **fitted: Any) -> ModelMeta:
        """The metadata of a detector trained with ``cfg``; ``fitted``: what its training found (``threshold``,
        ``temperature``, ``weights_source``)."""
        d = cfg.data
        datasets = [Path(p).name for p in (d.path, *d.extra_paths) if p]
        return cls(class_names=list(d.class_names), image_size=d.image_size, backbone=cfg.model.backbone,
                   faces=asdict(d.faces), video=asdict(d.video), fit=d.fit, test_crops=d.test_crops,
                   datasets=datasets, **fitted)

    @classmethod
    def load(cls, path: str | Path) -> ModelMeta:
        path = Path(path)
        if not path.is_file():
            raise DeepfakeError(f"model metadata {path} is missing; a saved detector needs {KERAS_FILE} and "
                                f"{META_FILE}")
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: str | Path) -> Path:
        return atomic.write_text(path, json.dumps(asdict(self), indent=2))


def save_detector(model: keras.Model, meta: ModelMeta, out_dir: str | Path) -> Path:
    """Write ``model.keras`` and ``model.meta.json`` into ``out_dir`` (each atomically); return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out)
    atomic.save_model(model, out / KERAS_FILE)
    meta.save(out / META_FILE)
    return out


PATH_ROOT_ENV = "DEEPFAKE_SERVE_PATH_ROOT"  # the folder a served model may read image paths from
PATHS_REFUSED = ("not a base64-encoded image; send image bytes or base64 (this model does not read file paths; "
                 "see 'Using a detector' in the README)")
PATH_UNREADABLE = ("not a base64-encoded image, nor a readable file inside the folder this model may read "
                   f"paths from ({PATH_ROOT_ENV})")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_BASE64_URLSAFE = re.compile(r"[A-Za-z0-9_-]+={0,2}")

PathAccess = bool | Path  # True: any path; False: none; a folder: only files inside it


def path_access(allow_paths: bool = False, root: str | Path | None = None) -> PathAccess:
    """What a model may read file paths from: only inside ``root`` when one is named (symlinks
    resolved), else anywhere (``allow_paths``), else nowhere (the default)."""
    if not root:
        return bool(allow_paths)
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DeepfakeError(f"{PATH_ROOT_ENV} / path_root {root}: no such folder; set it to the folder the "
                            "model may read images from, or unset it to accept image bytes and base64 only")
    return folder.resolve()


def _decode_base64(text: str) -> bytes | None:
    """The bytes a base64 (standard or URL-safe, padding optional, line breaks allowed) string
    encodes, or ``None`` if it is not base64."""
    compact = "".join(text.split())
    if len(compact) % 4 == 1:
        return None
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if _BASE64.fullmatch(padded):
            return base64.b64decode(padded, validate=True)
        if _BASE64_URLSAFE.fullmatch(padded):
            return base64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError):
        return None
    return None


def _is_image(raw: bytes) -> bool:
    """Pillow identifies ``raw`` as one of the accepted image formats (header only)."""
    from PIL import Image, UnidentifiedImageError

    from deepfake.images import IMAGE_FORMATS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS):
                return True
    except UnidentifiedImageError:
        return False
    except Exception:  # noqa: BLE001 - any other failure of a user's image header: the image checks say why
        return True


def media_kind(raw: bytes) -> str | None:
    """``"image"`` or ``"video"`` as the bytes' signature says (nothing decoded), or ``None`` for neither."""
    from deepfake.images import signature_format

    if is_video_bytes(raw):
        return "video"
    return "image" if signature_format(raw) else None


def _read_path(text: str, access: PathAccess) -> bytes:
    """A file's bytes, as far as ``access`` allows; errors never repeat the path."""
    from deepfake.images import read_error

    if access is True:
        try:
            path = Path(text).expanduser()
            return path.read_bytes()
        except IsADirectoryError:
            raise ValueError("a folder, not an image file") from None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG) and not os.path.islink(path):
                raise ValueError("no such file (and not base64)") from None
            raise ValueError(f"cannot read file: {read_error(path, exc)}") from None
        except (RuntimeError, ValueError):  # "~nobody/x.jpg", an embedded NUL character
            raise ValueError("no such file (and not base64)") from None
    # Inside the allowed folder only, and one answer for every refusal: a client learns nothing
    # about which paths exist on the server.
    try:
        resolved = (access / text).resolve(strict=True)  # an absolute text replaces the folder
        if not resolved.is_relative_to(access) or not resolved.is_file():
            raise ValueError
        return resolved.read_bytes()
    except (OSError, RuntimeError, ValueError):
        raise ValueError(PATH_UNREADABLE) from None


def _as_bytes(value: Any, access: PathAccess = True) -> bytes:
    """Raw encoded bytes, a base64 string (or data URL) or, as ``access`` allows, a file path ->
    encoded image bytes. What is plainly a base64 image is decoded without touching the
    filesystem; errors never repeat the input."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError(f"unsupported input type {type(value).__name__}; give image bytes or a base64 string"
                         + (" or a file path" if access is not False else ""))
    text = value.strip()
    if not text:
        raise ValueError("empty input")
    if text.startswith("data:") and "," in text:  # data URL
        decoded = _decode_base64(text.split(",", 1)[1])
        if decoded is None:
            raise ValueError("a data URL whose data is not valid base64")
        return decoded
    decoded = _decode_base64(text)
    if decoded is not None and (_is_image(decoded) or is_video_bytes(decoded)):
        return decoded
    if access is not False:
        return _read_path(text, access)
    if decoded is not None:
        return decoded  # base64, but not of an image: the image checks say so
    raise ValueError(PATHS_REFUSED)


def empty_row() -> dict[str, Any]:
    """A prediction row before it is answered: every field ``deepfake predict`` and the server report."""
    return {"fake_probability": None, "label": None, "error": None, "frames": None, "frame_probabilities": None,
            "note": None}


def keras_numpy(value: Any) -> np.ndarray:
    """A model's output as a NumPy array (a backend tensor converted; arrays pass through)."""
    if isinstance(value, np.ndarray):
        return value
    import keras

    return keras.ops.convert_to_numpy(value)


@dataclass
class Prepared:
    """One input decoded for scoring (:meth:`Predictor.prepare`): ``units`` are the pictures it is scored from, each
    the ``(K, S, S, 3)`` rows whose mean raw output is that picture's (K = 1, or the crop grid of ``fit: crop``);
    ``media`` tells where they came from (``None`` for an image scored as it is)."""

    units: list[np.ndarray]
    media: Media | None = None

    @property
    def kind(self) -> str:
        return "image" if self.media is None else self.media.kind


class Predictor:
    """A loaded detector: ``predict_*`` methods return fake probabilities and labels.

    ``paths`` is what string inputs may name as files (:func:`path_access`): anywhere by default
    (the command line, the user's own process); the pyfunc of a served model sets it to none,
    or to one folder when the operator allows it.
    """

    def __init__(self, keras_model: keras.Model | OnnxModel | OpenVinoModel, meta: ModelMeta,
                 paths: PathAccess = True):
        from deepfake.config import FaceConfig, VideoConfig

        self.model = keras_model
        self.meta = meta
        self.paths = paths
        self.max_pixels = DEFAULT_MAX_PIXELS  # an image or video frame with more pixels is refused (TooLarge)
        # Face crops exactly as in training; video sampling and aggregation as in training unless changed
        # (``deepfake predict --frames/--aggregate``).
        self.faces = FaceConfig(**{k: v for k, v in meta.faces.items() if k in FaceConfig.__dataclass_fields__})
        self.video = VideoConfig(**{k: v for k, v in meta.video.items() if k in VideoConfig.__dataclass_fields__})

    @property
    def is_exported(self) -> bool:
        """Runs on ONNX Runtime or OpenVINO (no Keras model to explain, fine-tune or export again)."""
        return isinstance(self.model, (OnnxModel, OpenVinoModel))

    @classmethod
    def from_files(cls, keras_path: str | Path, meta_path: str | Path) -> Predictor:
        from deepfake.model import load_keras_model

        return cls(load_keras_model(keras_path), ModelMeta.load(meta_path))

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Predictor:
        """A folder with ``model.keras`` (Keras) or an exported model (:mod:`deepfake.runtimes`), or a ``.keras``
        file."""
        model_dir = Path(model_dir)
        if model_dir.is_dir() and not (model_dir / KERAS_FILE).is_file() and (model_dir / META_FILE).is_file():
            meta = ModelMeta.load(model_dir / META_FILE)
            exported = load_exported(model_dir, meta.precision)
            if exported is not None:
                return cls(exported, meta)
        if model_dir.is_file() and model_dir.suffix == ".keras":
            meta = model_dir.with_name(META_FILE)
            return cls.from_files(model_dir, meta)
        return cls.from_files(model_dir / KERAS_FILE, model_dir / META_FILE)

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    def data_config(self, path: str | Path | None = None) -> DataConfig:
        """The data settings that made this detector's inputs (class names, image size, face crops, video
        sampling), for a dataset scanned to evaluate or calibrate it."""
        from deepfake.config import DataConfig

        return DataConfig(path=None if path is None else str(path), class_names=list(self.meta.class_names),
                          image_size=self.image_size, faces=self.faces, video=self.video, fit=self.meta.fit,
                          test_crops=self.meta.test_crops)

    @property
    def crop(self) -> bool:
        """Scores the mean over a grid of crops at full resolution (``data.fit: crop``), not resized pixels."""
        return self.meta.fit == "crop"

    def label_of(self, probability: float) -> str:
        return self.meta.class_names[int(probability >= self.meta.threshold)]

    def predict_arrays(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Decoded images ``(N, S, S, 3)`` in 0..255 -> fake probabilities ``(N,)``."""
        if len(images) == 0:
            return np.zeros((0,), dtype="float64")
        return self.calibrate(self.model.predict(np.asarray(images, dtype="float32"), batch_size=batch_size,
                                                 verbose=0))

    def predict_crops(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """The crop grids ``(K_i, S, S, 3)`` of N images (:meth:`decode_crops`) -> fake probabilities ``(N,)``: the
        mean of the model's raw outputs over each image's crops, then calibrated, as the pipeline's evaluation
        (:func:`deepfake.input_pipeline.predict_images`) scores them."""
        from deepfake.input_pipeline import mean_by_owner

        if len(crops) == 0:
            return np.zeros((0,), dtype="float64")
        owners = np.repeat(np.arange(len(crops)), [len(c) for c in crops])
        raw = self.model.predict(np.concatenate(crops).astype("float32"), batch_size=batch_size, verbose=0)
        return self.calibrate(mean_by_owner(np.asarray(raw, dtype="float64").reshape(-1), owners, len(crops)))

    def calibrate(self, raw: Any) -> np.ndarray:
        """The model's raw sigmoid outputs -> the fake probabilities this detector reports ``(N,)``
        (the temperature fitted on validation applied); predict_arrays and Grad-CAM both use it."""
        return apply_temperature(np.asarray(raw, dtype="float64").reshape(-1), self.meta.temperature)

    def decode(self, value: Any) -> np.ndarray:
        """One input (bytes, base64 or, as ``self.paths`` allows, a path) -> ``(S, S, 3)`` float32
        pixels; raises ValueError."""
        return self.decode_bytes(_as_bytes(value, self.paths))

    def decode_all(self, value: Any) -> np.ndarray:
        """One input -> the ``(N, S, S, 3)`` float32 pixels of every picture the detector scores: the image itself,
        its faces (a model trained on face crops) or a video's sampled frames; raises ValueError."""
        raw = _as_bytes(value, self.paths)
        media = self.pictures(raw)
        return self.decode_bytes(raw)[None] if media is None else self.decode_pictures(media)

    def decode_bytes(self, raw: bytes) -> np.ndarray:
        """Encoded image bytes -> ``(S, S, 3)`` float32 pixels (for ``fit: crop`` the centre crop, which Grad-CAM
        shows; scoring uses every crop, :meth:`decode_crops`); raises ValueError."""
        return self.decode_crops(raw, 1)[0] if self.crop else self._decoded(raw)

    def decode_scored(self, raw: bytes) -> np.ndarray:
        """Encoded image bytes -> what the detector scores of them (:meth:`predict_decoded` scores a list): the
        ``(S, S, 3)`` pixels, or for ``fit: crop`` the ``(K, S, S, 3)`` grid of crops; raises ValueError."""
        return self.decode_crops(raw) if self.crop else self.decode_bytes(raw)

    def predict_decoded(self, decoded: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """N images as :meth:`decode_scored` gives them -> fake probabilities ``(N,)``, as ``deepfake predict`` scores
        an image: the model on its pixels, or the mean over its grid of crops (:meth:`predict_crops`)."""
        return (self.predict_crops(decoded, batch_size) if self.crop
                else self.predict_arrays(np.asarray(decoded), batch_size=batch_size))

    def decode_crops(self, raw: bytes, n: int | None = None) -> np.ndarray:
        """Encoded image bytes -> the ``(K, S, S, 3)`` float32 grid of crops at full resolution that ``fit: crop``
        scores (at most ``n`` per side, the model's ``test_crops`` by default); raises ValueError."""
        from deepfake.images import crop_grid

        image = self._decoded(raw, "crop")
        return np.asarray(crop_grid(image, self.image_size, n or self.meta.test_crops))

    def _decoded(self, raw: bytes, fit: str = "resize") -> np.ndarray:
        from deepfake.images import check_bytes, input_error
        from deepfake.pixels import decode

        problem = check_bytes(raw, self.max_pixels, load=False)  # the header; decoding finds the rest
        if problem:
            raise input_error(problem)
        try:
            return decode(raw, self.image_size, fit)
        except Exception as exc:  # noqa: BLE001 - any failure to decode a user's image is that row's error
            text = first_line(exc, 120)
            raise ValueError("truncated image" if "truncated" in text.lower() else f"cannot decode image: {text}") \
                from None

    def pictures(self, raw: bytes) -> Media | None:
        """The pictures of one input as training made them (a video's sampled frames, the faces of an image or of
        a video's frames; :mod:`deepfake.media`), or ``None`` for a plain image given as it is; raises ValueError."""
        from deepfake.media import pictures_of
        from deepfake.video import is_video_bytes

        video = is_video_bytes(raw)
        if not video and not self.faces.enabled:
            return None
        if video and len(raw) > self.video.max_bytes:
            raise TooLarge(f"video too large: {len(raw) / 1e6:.1f} MB exceeds the limit of "
                             f"{self.video.max_bytes / 1e6:.1f} MB (data.video.max_bytes)")
        return pictures_of(raw, self.faces, self.video, self.max_pixels)

    def decode_pictures(self, media: Media) -> np.ndarray:
        """Pictures -> ``(N, S, S, 3)`` float32 pixels, through the PNG bytes training cached them as."""
        from deepfake.media import encode_png
        from deepfake.pixels import decode

        return np.stack([decode(encode_png(p), self.image_size) for p in media.pictures])

    def prepare(self, raw: bytes) -> Prepared:
        """Encoded image or video bytes -> what the detector scores of them (:class:`Prepared`), decoded as
        training decoded them; raises ValueError (:class:`deepfake.errors.TooLarge` for one over a size limit)."""
        from deepfake.media import encode_png

        media = self.pictures(raw)
        if media is None:
            scored = self.decode_scored(raw)
            return Prepared([scored if self.crop else scored[None]])
        if self.crop:
            return Prepared([self.decode_crops(encode_png(p)) for p in media.pictures], media)
        return Prepared(list(self.decode_pictures(media)[:, None]), media)

    def score_units(self, units: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """The units of :class:`Prepared` inputs (each ``(K, S, S, 3)``) -> one fake probability per unit: the mean
        of the model's raw outputs over its K rows, calibrated (as :meth:`predict_arrays` and :meth:`predict_crops`
        score them)."""
        from deepfake.input_pipeline import mean_by_owner

        if len(units) == 0:
            return np.zeros((0,), dtype="float64")
        owners = np.repeat(np.arange(len(units)), [len(u) for u in units])
        x = np.concatenate(units).astype("float32", copy=False)
        if len(x) <= batch_size and hasattr(self.model, "predict_on_batch"):
            raw = self.model.predict_on_batch(x)  # one batch: without predict()'s per-call set-up
        else:
            raw = self.model.predict(x, batch_size=batch_size, verbose=0)
        raw = np.asarray(keras_numpy(raw), dtype="float64").reshape(-1)
        return self.calibrate(mean_by_owner(raw, owners, len(units)))

    def answer(self, prepared: Prepared, probabilities: Sequence[float]) -> dict[str, Any]:
        """One :meth:`predict_values` row from an input's :class:`Prepared` pictures and their probabilities."""
        from deepfake.media import aggregate

        row = empty_row()
        media = prepared.media
        p = float(probabilities[0]) if media is None else aggregate(probabilities, self.video)
        row.update(fake_probability=p, label=self.label_of(p), frames=len(probabilities),
                   frame_probabilities=[round(float(x), 6) for x in probabilities])
        if media is not None and (media.limited or media.truncated):
            row["note"] = (f"longer than the limit ({self.video.max_seconds:g} s or {self.video.max_frames} "
                           "frames): sampled within its first part" if media.limited else
                           "ended early (truncated or corrupt): its decodable frames used")
        return row

    def predict_values(self, values: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        """Any mix of paths/bytes/base64 (images or videos) -> one dict per input; bad inputs get ``error`` and a
        ``fake_probability`` of ``None`` (JSON null, never NaN). A video (or, with face crops, an image) is scored
        from its pictures: ``frames`` says how many, ``frame_probabilities`` holds each one's and
        ``fake_probability`` is their aggregate (``data.video.aggregate``)."""
        rows: list[dict[str, Any]] = []
        for start in range(0, len(values), batch_size):
            chunk = values[start : start + batch_size]
            out = [empty_row() for _ in chunk]
            prepared: dict[int, Prepared] = {}
            for i, value in enumerate(chunk):
                try:
                    prepared[i] = self.prepare(_as_bytes(value, self.paths))
                except (ValueError, OSError) as exc:
                    out[i]["error"] = str(exc)
            probabilities = self.score_units([u for p in prepared.values() for u in p.units], batch_size)
            first = 0
            for i, p in prepared.items():
                out[i] = self.answer(p, probabilities[first : first + len(p.units)])
                first += len(p.units)
            rows.extend(out)
        return rows

    def predict_split(self, split: Split, batch_size: int = 32) -> np.ndarray:
        """Fake probabilities of every image of a dataset split (:class:`deepfake.data.Split`), in file
        order, streamed through the training input pipeline."""
        from deepfake.config import DataConfig
        from deepfake.input_pipeline import predict_images

        cfg = DataConfig(image_size=self.image_size, batch_size=batch_size, cache="none", fit=self.meta.fit,
                         test_crops=self.meta.test_crops)
        raw = predict_images(lambda x: self.model.predict(x, batch_size=batch_size, verbose=0), split, cfg)
        return self.calibrate(raw)

    def predict_frame(self, frame: pd.DataFrame | dict[str, Any] | Sequence[Any]) -> pd.DataFrame:
        """pyfunc entry: DataFrame with an ``image`` column -> DataFrame of results."""
        import pandas as pd

        if isinstance(frame, pd.DataFrame):
            if "image" not in frame.columns:
                if len(frame.columns) == 1:
                    values = frame.iloc[:, 0].tolist()
                else:
                    raise DeepfakeError("input needs an 'image' column (image bytes or base64 strings)")
            else:
                values = frame["image"].tolist()
        elif isinstance(frame, dict) and "image" in frame:
            values = list(frame["image"]) if not isinstance(frame["image"], (str, bytes)) else [frame["image"]]
        else:
            values = list(frame)
        rows = self.predict_values(values)
        return pd.DataFrame(
            {
                # object dtype keeps None for error rows: served as JSON null (a float column would give NaN)
                "fake_probability": pd.Series([r["fake_probability"] for r in rows], dtype=object),
                "label": [r["label"] or "" for r in rows],
                "error": [r["error"] or "" for r in rows],
                "frames": [r["frames"] or 0 for r in rows],  # pictures scored: 1 for an image, a video's frames
                "frame_probabilities": [r["frame_probabilities"] or [] for r in rows],
            }
        )


def pyfunc_artifacts(model_dir: str | Path) -> dict[str, str]:
    """The files of a saved detector under the artifact names ``deepfake/pyfunc_model.py`` loads them by:
    ``keras_model`` and ``meta`` for Keras; for an exported folder, each of its files by its own name
    (``meta`` is the metadata; the others lie beside it once logged)."""
    folder = Path(model_dir)
    if (folder / KERAS_FILE).is_file():
        return {"keras_model": str(folder / KERAS_FILE), "meta": str(folder / META_FILE)}
    files = {name.replace(".", "_"): str(folder / name) for name in EXPORTED_FILES if (folder / name).is_file()}
    return files | {"meta": str(folder / META_FILE)}


def example_frames(meta: ModelMeta) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A one-row input example (a base64 PNG) and the matching output, for the model signature."""
    import pandas as pd

    example_img = _example_png(min(meta.image_size, 32))
    example = pd.DataFrame({"image": [base64.b64encode(example_img).decode("ascii")]})
    output = pd.DataFrame({"fake_probability": [0.5], "label": [meta.class_names[1]], "error": [""], "frames": [1],
                           "frame_probabilities": [[0.5]]})
    return example, output


def _example_png(size: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def pip_requirements(meta: ModelMeta | None = None) -> list[str]:
    """The pinned packages a logged detector needs (the export's runtime too, for an exported one; the face
    detector for one trained on face crops; PyAV for videos)."""
    from importlib import metadata

    reqs = []
    runtime = {"onnx": ("onnxruntime",), "openvino": ("openvino",)}.get((meta.format if meta else "keras")
                                                                       .split("-")[0], ())
    faces = ("mtcnn",) if meta is not None and meta.faces.get("enabled") else ()  # the face detector
    for name in ("tensorflow-cpu", "keras", "mlflow", "numpy", "pandas", "pillow", "av", *runtime, *faces):
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            if name == "tensorflow-cpu":
                try:
                    reqs.append(f"tensorflow=={metadata.version('tensorflow')}")
                except metadata.PackageNotFoundError:
                    pass
    return reqs


def load_predictor(ref: str | Path) -> Predictor:
    """A local model folder (Keras or exported ONNX) or ``.keras`` file.

    MLflow model URIs are resolved to local folders first, by :func:`deepfake.tracking.local_model`.
    """
    path = Path(ref).expanduser()
    if not path.exists():
        raise DeepfakeError(f"--model {ref}: no such file or folder; give a model folder (with {KERAS_FILE}) or a URI "
                            "such as models:/deepfake-detector@champion")
    return Predictor.from_dir(path)


def sample_predictions(predictor: Predictor, split: Split, class_names: Sequence[str], n: int = 1,
                       seed: int = 0) -> list[dict[str, Any]]:
    """Predict ``n`` randomly chosen sources of ``split`` (seeded): an image, or a video from all its frames (the
    middle one shown), each scored as ``deepfake predict`` scores an image (:meth:`Predictor.predict_decoded`: for
    ``fit: crop`` the mean over its grid of crops, the centre one shown); undecodable picks are replaced."""
    from deepfake.media import aggregate

    members: dict[str, list[int]] = {}
    for i, group in enumerate(split.group_ids()):
        members.setdefault(group, []).append(i)
    sources = list(members)
    rng = np.random.default_rng(seed)
    picked: list[dict[str, Any]] = []
    for k in rng.permutation(len(sources)):
        source, idx = sources[k], members[sources[k]]
        try:
            raws = [Path(split.paths[i]).read_bytes() for i in idx]
            decoded, shown = [predictor.decode_scored(raw) for raw in raws], predictor.decode_bytes(raws[len(idx) // 2])
        except (ValueError, OSError):
            continue
        probs = predictor.predict_decoded(decoded)
        prob = aggregate(probs, predictor.video) if len(idx) > 1 else float(probs[0])
        scored = f" ({len(idx)} frames, {predictor.video.aggregate})" if len(idx) > 1 else ""
        picked.append({"path": str(source) + scored, "name": Path(source).name + scored, "image": shown,
                       "true_label": class_names[split.labels[idx[0]]], "predicted_label": predictor.label_of(prob),
                       "fake_probability": prob})
        if len(picked) == n:
            break
    if not picked:
        raise DeepfakeError("no decodable image in the chosen split; check the dataset")
    return picked
