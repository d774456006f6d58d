"""Faces: find them in an image and cut a square crop around each, the same way for training and inference.

The detector is MTCNN (the ``mtcnn`` package, on TensorFlow): its weights ship inside its PyPI wheel, so
nothing is downloaded at run time and it works offline. It found 60 of 60 faces on real 224 px face crops.
The alternatives lost: MediaPipe 1.x no longer ships a face model in its wheel (it has to be downloaded), and
OpenCV's Haar cascade found only 17 of those 60 faces on tight face crops.

:func:`detect_faces` finds the faces (largest first) in a uint8 RGB image; larger images are downscaled for
detection only. :func:`crop_face` cuts the square crop: centred on the face box, its side the box's longer
side plus ``margin`` of it on every side; where it reaches beyond the image, the edge pixels are repeated
(never black borders, which a detector could learn). :func:`face_crops` does both, as
:class:`~deepfake.config.FaceConfig` says; :func:`settings` is everything that changes a crop, for cache keys
and model metadata.

The detector is built once per process, on first use (TensorFlow and ``mtcnn`` are imported then, not
when this module is imported), and runs on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake.errors import DeepfakeError

if TYPE_CHECKING:
    from deepfake.config import FaceConfig

MTCNN_MISSING = "face crops need the mtcnn package: pip install mtcnn"
MTCNN_BACKEND = ("face detection (MTCNN) runs on the tensorflow backend only, not {backend}: run this with "
                 "deepfake --backend tensorflow (or KERAS_BACKEND=tensorflow)")
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # MTCNN's order
MIN_IMAGE_SIDE = 24  # smaller images are not searched (MTCNN's last stage looks at 48 px, its first at 12)
MTCNN_ONET_THRESHOLD = 0.8  # MTCNN's default for its last stage
BATCH = 32  # images of one shape given to MTCNN at once by detect_faces_batch
CROP_VERSION = 1  # bump when the way a crop is made changes, so cached crops are made again

_detector: Any = None
_detector_lock = threading.Lock()


@dataclass(frozen=True)
class Face:
    """One detected face, in pixels of the original image (the box may reach beyond it)."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    confidence: float
    keypoints: dict[str, tuple[float, float]]  # KEYPOINTS -> (x, y)

    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    def side(self) -> float:
        """The box's longer side."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


# --------------------------------------------------------------------------- detection


def _get_detector() -> Any:
    """The process's MTCNN, built on first use."""
    global _detector
    with _detector_lock:
        if _detector is None:
            from deepfake.backend import current

            if current() != "tensorflow":  # mtcnn builds its networks with Keras, on TensorFlow tensors
                raise DeepfakeError(MTCNN_BACKEND.format(backend=current()))
            try:
                from mtcnn import MTCNN
            except ModuleNotFoundError as exc:
                if exc.name != "mtcnn":
                    raise  # TensorFlow missing: the CLI says how to install it
                raise DeepfakeError(MTCNN_MISSING) from None
            with contextlib.redirect_stdout(io.StringIO()):  # mtcnn 1.0 prints nothing; keep it that way
                _detector = MTCNN(device="CPU:0")
        return _detector


def _check(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {rgb.dtype} {rgb.shape}")


def _for_detection(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """``rgb`` downscaled (antialiased) so its longer side is at most ``max_side``; and the factors from its
    x and y back to the original's."""
    from PIL import Image

    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb, 1.0, 1.0
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))  # Pillow antialiases
    return small, width / size[0], height / size[1]


def _mtcnn_options(cfg: FaceConfig) -> dict[str, Any]:
    # Boxes are not clipped to the image: a face at the edge keeps its whole box, and its crop stays centred.
    # MTCNN's own pyramid is kept (its min_face_size of 20 px; a larger one finds nothing in small images):
    # min_size is applied afterwards. Its last stage keeps confidences above 0.8, or min_confidence if lower.
    return {"box_format": "xyxy", "output_type": "numpy", "fit_to_image": False,
            "threshold_onet": min(cfg.min_confidence, MTCNN_ONET_THRESHOLD)}


def _faces(rows: np.ndarray, fx: float, fy: float, cfg: FaceConfig) -> list[Face]:
    """MTCNN's rows (image id, x0, y0, x1, y1, confidence, five x, five y) -> filtered faces, largest first."""
    found = []
    for row in np.asarray(rows, dtype=np.float64).reshape(-1, 16):
        x0, y0, x1, y1, confidence = row[1:6]
        keypoints = {name: (float(row[6 + i] * fx), float(row[11 + i] * fy)) for i, name in enumerate(KEYPOINTS)}
        face = Face((float(x0 * fx), float(y0 * fy), float(x1 * fx), float(y1 * fy)), float(confidence), keypoints)
        if face.confidence >= cfg.min_confidence and face.side() >= cfg.min_size:
            found.append(face)
    return sorted(found, key=lambda f: (-f.area(), -f.confidence, f.box))


def detect_faces(rgb: np.ndarray, cfg: FaceConfig) -> list[Face]:
    """The faces in a uint8 ``(H, W, 3)`` RGB image, largest first; ``[]`` if none.

    An image whose longer side exceeds ``cfg.detect_max_side`` is downscaled for detection only; boxes and
    keypoints are in pixels of the original. Faces below ``cfg.min_confidence`` or smaller than
    ``cfg.min_size`` (the box's longer side) are left out. The same image always gives the same faces.
    """
    _check(rgb)
    small, fx, fy = _for_detection(rgb, cfg.detect_max_side)
    if min(small.shape[:2]) < MIN_IMAGE_SIDE:
        return []
    rows = _get_detector().detect_faces(small, **_mtcnn_options(cfg))
    return _faces(rows, fx, fy, cfg)


def detect_faces_batch(images: Sequence[np.ndarray], cfg: FaceConfig) -> list[list[Face]]:
    """:func:`detect_faces` of each image, faster for many (video frames, a folder of same-size images).

    Images of the same shape go to MTCNN together, up to :data:`BATCH` at a time (MTCNN pads images of
    different shapes to a common one, which would change what it finds).
    """
    results: list[list[Face]] = [[] for _ in images]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, rgb in enumerate(images):
        _check(rgb)
        groups.setdefault(rgb.shape, []).append(index)
    for indices in groups.values():
        for start in range(0, len(indices), BATCH):
            chunk = indices[start:start + BATCH]
            prepared = [_for_detection(images[i], cfg.detect_max_side) for i in chunk]
            small, fx, fy = prepared[0]
            if min(small.shape[:2]) < MIN_IMAGE_SIDE:
                break  # the whole group is too small
            rows = _get_detector().detect_faces([p[0] for p in prepared], **_mtcnn_options(cfg))
            rows = np.asarray(rows, dtype=np.float64).reshape(-1, 16)
            for k, i in enumerate(chunk):
                results[i] = _faces(rows[rows[:, 0] == k], fx, fy, cfg)
    return results


# --------------------------------------------------------------------------- cropping


def crop_box(face: Face, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """The square crop ``(x0, y0, x1, y1)`` (exclusive ends) around ``face`` in a ``width`` x ``height`` image.

    Centred on the face box; its side is the box's longer side times ``1 + 2 * margin``, rounded to whole
    pixels. It may reach beyond the image (:func:`crop_face` repeats the edge there), but always overlaps it.
    """
    side = max(1, round(face.side() * (1 + 2 * margin)))
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    x0, y0 = int(np.floor(cx - side / 2 + 0.5)), int(np.floor(cy - side / 2 + 0.5))
    if x0 >= width or y0 >= height or x0 + side <= 0 or y0 + side <= 0:
        raise ValueError(f"the face box {face.box} lies outside the {width}x{height} image")
    return x0, y0, x0 + side, y0 + side


def crop_face(rgb: np.ndarray, face: Face, margin: float) -> np.ndarray:
    """The square uint8 crop of :func:`crop_box`; where it reaches beyond the image, the edge is repeated."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = crop_box(face, width, height, margin)
    inside = rgb[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
    pad = ((max(-y0, 0), max(y1 - height, 0)), (max(-x0, 0), max(x1 - width, 0)), (0, 0))
    return np.ascontiguousarray(np.pad(inside, pad, mode="edge"), dtype=np.uint8)


def face_crops(rgb: np.ndarray, cfg: FaceConfig) -> list[tuple[Face, np.ndarray]]:
    """The faces and their crops: the largest face only (``cfg.mode`` ``largest``) or every face, largest first
    (``all``); ``[]`` when there is no face."""
    faces = detect_faces(rgb, cfg)
    if cfg.mode == "largest":
        faces = faces[:1]
    return [(face, crop_face(rgb, face, cfg.margin)) for face in faces]


def settings(cfg: FaceConfig) -> dict[str, Any]:
    """Every setting that changes a crop, the detector's package version included: for cache keys and the
    metadata stored with a model."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        detector_version = version(cfg.detector)
    except PackageNotFoundError:
        raise DeepfakeError(MTCNN_MISSING) from None
    return {"detector": cfg.detector, "detector_version": detector_version, "crop_version": CROP_VERSION,
            "mode": cfg.mode, "margin": cfg.margin, "min_confidence": cfg.min_confidence,
            "min_size": cfg.min_size, "detect_max_side": cfg.detect_max_side}
