"""The 468-point face mesh: MediaPipe's face landmark model, run with ONNX Runtime, for self-blended masks.

The model is ``deepfake/assets/face_landmark.onnx``: MediaPipe's ``face_landmark.tflite`` (Apache-2.0, from the
``mediapipe==0.10.21`` wheel) converted to ONNX by ``tools/convert_face_mesh.py`` (``deepfake/assets/NOTICE``
says where from, what changed and the checksums). MediaPipe itself is no dependency (its protobuf pin clashes
with TensorFlow's); ONNX Runtime runs the model on the CPU, one session per process, made on first use.

The model's conventions (MediaPipe's ``face_landmark_cpu.pbtxt``, and measured on DFDC face crops): a
``(n, 192, 192, 3)`` RGB float input in [0, 1] (given [-1, 1], the points below lie 5.4% of the eye distance
from MTCNN's keypoints, not 4.7%), holding a face region of interest (ROI): the face's box enlarged 1.5 times;
outputs ``landmarks`` ``(n, 1, 1, 1404)``: 468 x (x, y, z), x and y in input pixels, and ``face_flag``
``(n, 1, 1, 1)``: the logit of a face being there. :func:`landmarks_batch` runs it twice, as MediaPipe does
between video frames: first on the whole image, taken as a face crop (its longer side 1.5 times, edges
repeated), then on the ROI the first pass's points give (their box's centre, 1.5 times its longer side). On 50
DFDC face crops the five points that match MTCNN's keypoints lay 4.7% of the eye distance from them, against
14% with the crop given as it is (the model then squeezes the face into the middle). ROIs are not rotated:
faces are taken as upright.

:func:`meshes_for` meshes each file once and caches the points (fractions of the image's width and height) in
``data.media_cache_dir``, keyed by the file's path, size and modification time and :data:`CACHE_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from deepfake import atomic
from deepfake.errors import DeepfakeError

log = logging.getLogger(__name__)

MODEL_FILE = "face_landmark.onnx"  # in deepfake/assets/
INPUT_SIZE = 192  # the model's square input side
POINTS = 468
ROI_SCALE = 1.5  # MediaPipe's ROI: the face's box enlarged 1.5 times (face_landmark_front_cpu.pbtxt)
MIN_PRESENCE = 0.5  # MediaPipe's min_tracking_confidence: sigmoid(face_flag) below it is no face
BATCH = 16  # images given to the model at once
CACHE_FILE = "face_mesh.npz"
CACHE_VERSION = "mediapipe-0.10.21-face_landmark/roi1.5x2/1"  # change when cached meshes change meaning

# The face's outline in the mesh, in order around the face (clockwise in the image, from the top of the
# forehead): the chain of mediapipe.python.solutions.face_mesh_connections.FACEMESH_FACE_OVAL (mediapipe
# 0.10.21, Apache-2.0), whose edges (10, 338), (338, 297), ... (109, 10) it walks.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
FOREHEAD, CHIN = 10, 152  # the oval's top and bottom
EYE_CORNERS = (33, 133, 362, 263)  # outer and inner corners of the image-left eye, then the image-right one

_session: Any = None
_session_lock = threading.Lock()


def model_path() -> Path:
    """The shipped ONNX model (package data)."""
    return Path(str(resources.files("deepfake").joinpath("assets", MODEL_FILE)))


def _get_session() -> Any:
    """The process's ONNX Runtime session, made on first use (CPU)."""
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime as ort

            path = model_path()
            if not path.is_file():
                raise DeepfakeError(f"the face mesh model {path} is missing; reinstall deepfake "
                                    f"(or rebuild it: python tools/convert_face_mesh.py)")
            options = ort.SessionOptions()
            options.log_severity_level = 3
            _session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return _session


def predict(tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw model on float32 ``(n, 192, 192, 3)`` RGB ROIs in [0, 1]: ``(points (n, 468, 2) in input pixels,
    face presence (n,) in [0, 1])``."""
    tensors = np.ascontiguousarray(tensors, dtype=np.float32)
    if tensors.ndim != 4 or tensors.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"expected (n, {INPUT_SIZE}, {INPUT_SIZE}, 3) ROIs, got {tensors.shape}")
    points, flag = _get_session().run(["landmarks", "face_flag"], {"image": tensors})
    presence = 1.0 / (1.0 + np.exp(-np.clip(flag.reshape(-1).astype(np.float64), -60, 60)))
    return points.reshape(len(tensors), POINTS, 3)[..., :2].astype(np.float32), presence


def roi(image: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """The square ``side`` x ``side`` region of ``image`` (uint8 ``(H, W, 3)``) centred on ``(cx, cy)``, resized to
    the model's input: float32 ``(192, 192, 3)`` in [0, 1]. Beyond the image its edge pixels are repeated."""
    from PIL import Image

    h, w = image.shape[:2]
    x0, y0 = cx - side / 2, cy - side / 2
    pad = int(np.ceil(max(0.0, -x0, -y0, x0 + side - w, y0 + side - h))) + 1
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    box = (x0 + pad, y0 + pad, x0 + pad + side, y0 + pad + side)
    out = Image.fromarray(padded).transform((INPUT_SIZE, INPUT_SIZE), Image.Transform.EXTENT, box,
                                            resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32) / 255.0


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")


def _pass(images: Sequence[np.ndarray], rois: Sequence[tuple[float, float, float]]) -> tuple[list, np.ndarray]:
    """The model on one ROI (cx, cy, side) per image: (points in image pixels, presence)."""
    found: list[np.ndarray] = []
    presence = np.zeros(len(images))
    for start in range(0, len(images), BATCH):
        chunk = range(start, min(start + BATCH, len(images)))
        points, score = predict(np.stack([roi(images[i], *rois[i]) for i in chunk]))
        presence[start:start + len(chunk)] = score
        for k, i in enumerate(chunk):
            cx, cy, side = rois[i]
            found.append(points[k] * (side / INPUT_SIZE) + np.array([cx - side / 2, cy - side / 2], np.float32))
    return found, presence


def _roi_of(points: np.ndarray) -> tuple[float, float, float]:
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre = (lo + hi) / 2
    return float(centre[0]), float(centre[1]), float((hi - lo).max() * ROI_SCALE)


def landmarks_batch(images: Sequence[np.ndarray], min_presence: float = MIN_PRESENCE) -> list[np.ndarray | None]:
    """The face mesh of each uint8 ``(H, W, 3)`` RGB face crop: float32 ``(468, 2)`` (x, y) in the image's pixels
    (points may lie beyond a tight crop's edge), or ``None`` where the model sees no face (its presence score
    below ``min_presence``). Two passes: the whole image, then the ROI its points give."""
    for image in images:
        _check(image)
    if not images:
        return []
    whole = [(image.shape[1] / 2, image.shape[0] / 2, max(image.shape[:2]) * ROI_SCALE) for image in images]
    first, presence = _pass(images, whole)
    out: list[np.ndarray | None] = [None] * len(images)
    again = [i for i in range(len(images)) if presence[i] >= min_presence]
    if again:
        second, presence2 = _pass([images[i] for i in again], [_roi_of(first[i]) for i in again])
        for k, i in enumerate(again):
            if presence2[k] >= min_presence:
                out[i] = second[k].astype(np.float32)
    return out


def landmarks(image: np.ndarray, min_presence: float = MIN_PRESENCE) -> np.ndarray | None:
    """:func:`landmarks_batch` for one image: float32 ``(468, 2)`` pixel coordinates, or ``None``."""
    return landmarks_batch([image], min_presence)[0]


# --------------------------------------------------------------------------- cache


def _key(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha1(json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns]).encode()).hexdigest()


def _load_rgb(path: str) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError):
        return None


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    """key -> float32 (468, 2) fractions of width and height (NaN: no face); {} when absent, stale or unreadable."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["version"]) != CACHE_VERSION:
                return {}
            return dict(zip(stored["keys"].tolist(), stored["points"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}


def _write_cache(path: Path, cached: dict[str, np.ndarray]) -> None:
    keys = sorted(cached)
    points = np.stack([cached[k] for k in keys]) if keys else np.zeros((0, POINTS, 2), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez adds no suffix
        np.savez(fh, version=np.array(CACHE_VERSION), keys=np.array(keys, dtype=str), points=points)


def meshes_for(paths: Sequence[str], image_size: int, cache_dir: str | os.PathLike) -> np.ndarray:
    """The face mesh of each image file, in pixels of the ``image_size`` square it is resized to (the input
    pipeline's decoded images): float32 ``(len(paths), 468, 2)``, NaN where no face was found or the file
    cannot be read.

    Meshed once: the points (as fractions of the image's width and height) are cached in
    ``cache_dir/face_mesh.npz``, keyed by the file's path, size and modification time and :data:`CACHE_VERSION`,
    and written atomically.
    """
    cache_file = Path(cache_dir) / CACHE_FILE
    cached = _read_cache(cache_file)
    keys = [_key(p) for p in paths]
    missing = list(dict.fromkeys(k for k in keys if k not in cached))
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        log.info("finding the face mesh of %d image(s) for self-blended fakes (cached in %s)", len(missing),
                 cache_file.parent)
        chunk_size = 4 * BATCH
        for start in range(0, len(missing), chunk_size):
            chunk = missing[start:start + chunk_size]
            images = {k: _load_rgb(paths[first[k]]) for k in chunk}
            readable = [k for k in chunk if images[k] is not None]
            found = landmarks_batch([images[k] for k in readable])
            for k in chunk:
                cached[k] = np.full((POINTS, 2), np.nan, np.float32)
            for k, points in zip(readable, found, strict=True):
                if points is not None:
                    h, w = images[k].shape[:2]
                    cached[k] = (points / np.array([w, h], np.float32)).astype(np.float32)
        _write_cache(cache_file, cached)
    return np.stack([cached[k] for k in keys]).astype(np.float32) * image_size if keys else \
        np.zeros((0, POINTS, 2), np.float32)
