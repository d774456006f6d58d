"""Self-made training fakes (``data.synthetic_fakes``): a real image turned into a fake of the same content.

* :func:`self_blend`: self-blended images (SBI, Shiohara & Yamasaki, CVPR 2022). A copy of the image with its
  colours, sharpness and geometry slightly jittered (the source) is blended into the image itself (the target)
  through a soft face-shaped mask (:mod:`deepfake.blend_masks`): from the 468-point face mesh when known, else
  from the five MTCNN keypoints, else an ellipse about where a face crop holds the face. Outside the mask the
  fake is the original, pixel for pixel: only the blending boundary and the inconsistency inside it tell them
  apart.
* :func:`resynthesise`: the image downscaled and upsampled again (nearest, bilinear, or a transposed
  convolution: zero insertion and a random kernel, the checkerboard trace of generator upsampling), optionally
  JPEG re-encoded: the same content with generator-like traces.

:func:`make_fake` picks one by name. Every random choice comes from the ``numpy`` generator given, so one seed
gives one fake. :mod:`deepfake.input_pipeline` makes the fakes on the fly during training (new ones every
epoch, seeded), next to the real images they were made from; :func:`training_keypoints` finds the face points
of the real training images once (:func:`deepfake.face_mesh.meshes_for`, :func:`keypoints_for`: cached) as
``data.synthetic_fakes.mask`` says, and :func:`mask_counts` counts the mask kinds they give.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepfake import atomic, blend_masks
from deepfake.blend_masks import KEYPOINT_NAMES  # MTCNN's order (deepfake.faces); the input pipeline asks here
from deepfake.errors import DeepfakeError

if TYPE_CHECKING:
    from deepfake.config import DataConfig

log = logging.getLogger(__name__)

KINDS = ("sbi", "resynth")  # what make_fake makes; the config also takes none and both
KEYPOINTS_FILE = "synthetic_keypoints.json"
KEYPOINTS_VERSION = 1  # bump when the cached keypoints change meaning
DETECT_CHUNK = 64  # images decoded and given to the detector at a time


# --------------------------------------------------------------------------- helpers


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")


# --------------------------------------------------------------------------- self-blended images


def _source(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The blending source: ``image`` with jittered colours, sharpness and geometry (uint8, same shape), as SBI's
    source transforms: contrast and brightness, a per-channel (RGB) shift, saturation and a small hue rotation;
    sharpened, blurred, downscaled and upscaled again, or none of these; a small scale and shift."""
    from PIL import Image, ImageFilter

    h, w = image.shape[:2]
    # Colour: contrast about the mean, brightness, and a per-channel shift (never all zero); then hue and saturation:
    # a rotation about the grey axis (up to 8 degrees) and a change of the chroma's length. All linear: one
    # 3x3 matrix and an offset, applied in one pass.
    mean = image.reshape(-1, 3).mean(axis=0)
    contrast = rng.uniform(0.85, 1.15)
    offset = (1 - contrast) * mean + rng.choice([-1, 1]) * rng.uniform(4, 20)
    offset = offset + rng.choice([-1, 1], size=3) * rng.uniform(0, 12, size=3)
    angle, saturation = np.deg2rad(rng.uniform(-8, 8)), rng.uniform(0.8, 1.2)
    grey = np.full((3, 3), 1 / 3)
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)
    hue = grey + saturation * (np.cos(angle) * (np.eye(3) - grey) + np.sin(angle) * cross)  # Rodrigues, (1, 1, 1)
    x = image.astype(np.float32) @ (contrast * hue).T.astype(np.float32) + (hue @ offset).astype(np.float32)
    src = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    kind = rng.integers(4)  # sharpen, blur, downscale, or neither
    if kind == 0:
        src = src.filter(ImageFilter.UnsharpMask(radius=rng.uniform(1, 2), percent=int(rng.integers(50, 150)),
                                                 threshold=0))
    elif kind == 1:
        src = src.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    elif kind == 2:
        factor = rng.uniform(0.5, 0.8)
        small = src.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)
        src = small.resize((w, h), Image.Resampling.BILINEAR)
    # Geometry: scale about the centre and translate; edges replicated so no border shows.
    scale = rng.uniform(0.95, 1.05)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
    pad = int(np.ceil(0.1 * max(h, w))) + 2
    padded = Image.fromarray(np.pad(np.asarray(src), ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    cx, cy = w / 2, h / 2
    # output (x, y) <- input (cx + (x - cx - tx) / s, cy + (y - cy - ty) / s), shifted by the padding
    data = (1 / scale, 0.0, cx + pad - (cx + tx) / scale, 0.0, 1 / scale, cy + pad - (cy + ty) / scale)
    moved = padded.transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return np.asarray(moved, dtype=np.uint8)


def self_blend(image: np.ndarray, rng: np.random.Generator,
               points: Mapping[str, Sequence[float]] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of the uint8 ``(H, W, 3)`` ``image``: ``(fake uint8, mask float32 (H, W) in [0, 1])``.

    ``points`` (x, y in the image's pixels) shape the mask (:func:`deepfake.blend_masks.blend_mask`): the
    ``(468, 2)`` face mesh; MTCNN's five keypoints, a dict by name or a ``(5, 2)`` array (or the first rows of a
    ``(468, 2)`` one, NaN below); none (``None``, NaN or -1): an ellipse about where a face crop holds the face.
    ``fake = mask * source + (1 - mask) * image``: where the mask is 0 the fake is ``image`` exactly.
    """
    _check(image)
    h, w = image.shape[:2]
    source = _source(image, rng)
    mask = blend_masks.blend_mask(h, w, rng, points)
    m = mask[..., None]
    blended = m * source.astype(np.float32) + (1.0 - m) * image.astype(np.float32)
    fake = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    fake[mask == 0] = image[mask == 0]  # exact, whatever the float rounding
    return fake, mask


# --------------------------------------------------------------------------- re-synthesised images


def _transposed_conv(small: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-insertion upsampling by ``factor`` and a random normalised kernel per channel (a transposed conv)."""
    h, w, c = small.shape
    m = 2  # edge pixels repeated around the image, so its border is not darkened by the zeros beyond it
    small = np.pad(small, ((m, m), (m, m), (0, 0)), mode="edge")
    up = np.zeros(((h + 2 * m) * factor, (w + 2 * m) * factor, c), dtype=np.float32)
    up[::factor, ::factor] = small
    size = int(rng.choice([2 * factor - 1, 2 * factor]))  # 3x3 or 4x4 for factor 2
    tent = 1.0 - np.abs(np.arange(size) - (size - 1) / 2) / factor
    base = np.outer(np.clip(tent, 0.05, None), np.clip(tent, 0.05, None))
    out = np.zeros_like(up)
    before = (size - 1) // 2
    padded = np.pad(up, ((before, size - 1 - before), (before, size - 1 - before), (0, 0)))
    for ch in range(c):
        kernel = base * rng.uniform(0.7, 1.3, base.shape)
        kernel *= factor * factor / kernel.sum()
        for i in range(size):
            for j in range(size):
                out[..., ch] += kernel[i, j] * padded[i:i + up.shape[0], j:j + up.shape[1], ch]
    return out[m * factor:(m + h) * factor, m * factor:(m + w) * factor]


def resynthesise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 ``(H, W, 3)``) downscaled by 2-4 and upsampled again (nearest, bilinear or a transposed
    convolution), then JPEG re-encoded (quality 70-95) half the time: same size and content, generator traces."""
    from PIL import Image

    _check(image)
    h, w = image.shape[:2]
    factor = int(rng.integers(2, 5)) if rng.random() < 0.5 else 2
    small_size = (max(1, round(w / factor)), max(1, round(h / factor)))
    small = Image.fromarray(image).resize(small_size, Image.Resampling.BILINEAR)  # Pillow antialiases
    method = rng.integers(3)
    if method == 0:
        out = np.asarray(small.resize((w, h), Image.Resampling.NEAREST))
    elif method == 1:
        out = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))
    else:
        up = _transposed_conv(np.asarray(small, dtype=np.float32), factor, rng)
        out = np.clip(np.rint(up), 0, 255).astype(np.uint8)
        if out.shape[:2] != (h, w):
            out = np.asarray(Image.fromarray(out).resize((w, h), Image.Resampling.BILINEAR))
    out = np.ascontiguousarray(out, dtype=np.uint8)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
        with Image.open(io.BytesIO(buffer.getvalue())) as img:
            out = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return out


def make_fake(image: np.ndarray, kind: str, rng: np.random.Generator,
              points: Mapping[str, Sequence[float]] | np.ndarray | None = None) -> np.ndarray:
    """A fake of ``image`` (uint8 ``(H, W, 3)``): ``kind`` ``sbi`` (:func:`self_blend`) or ``resynth``
    (:func:`resynthesise`)."""
    if kind == "sbi":
        return self_blend(image, rng, points)[0]
    if kind == "resynth":
        return resynthesise(image, rng)
    raise ValueError(f"unknown synthetic fake kind {kind!r}; expected one of {', '.join(KINDS)}")


def fake_from_seed(image: np.ndarray, points: np.ndarray, seed: np.ndarray, kind: bytes | str) -> np.ndarray:
    """:func:`make_fake` for the input pipeline (``tf.numpy_function``): float32 pixels (0..255, any values) and
    the image's face points (a row of :func:`training_keypoints`) in, float32 out. The fake is made on the rounded
    pixels and its change added to the original ones, so pixels the fake leaves alone keep their exact value (no
    rounding trace for a detector to learn)."""
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    rng = np.random.default_rng([int(s) & 0xFFFFFFFFFFFFFFFF for s in np.asarray(seed).ravel()])
    if kind == "both":
        kind = KINDS[int(rng.integers(2))]
    image = np.asarray(image, dtype=np.float32)
    rounded = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    fake = make_fake(rounded, kind, rng, points)
    return np.clip(image + (fake.astype(np.float32) - rounded.astype(np.float32)), 0, 255).astype(np.float32)


# --------------------------------------------------------------------------- class weights


def expected_counts(labels: Sequence[int], fraction: float) -> tuple[float, float]:
    """(reals, fakes) per training epoch when each real also gives a synthetic fake with probability
    ``fraction``."""
    labels = np.asarray(labels, dtype=int)
    reals = float((labels == 0).sum())
    return reals, float((labels == 1).sum()) + reals * fraction


# --------------------------------------------------------------------------- keypoints


def _key(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha1(json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns]).encode()).hexdigest()


def _detector_settings(cfg: DataConfig) -> str:
    f = cfg.faces
    return json.dumps({"version": KEYPOINTS_VERSION, "detector": f.detector, "min_confidence": f.min_confidence,
                       "min_size": f.min_size, "detect_max_side": f.detect_max_side}, sort_keys=True)


def _load_rgb(path: str) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError):
        return None


def keypoints_for(paths: Sequence[str], cfg: DataConfig, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The five MTCNN keypoints of the largest face of each image, in pixels of the decoded ``cfg.image_size``
    square (the input pipeline resizes every image to it): float32 ``(len(paths), 5, 2)``, -1 where no face was
    found (the mask is then an ellipse).

    Detected once: the keypoints (as fractions of the image's width and height) are cached as JSON in
    ``cache_dir`` (default ``cfg.media_cache_dir``), keyed by the file's path, size and modification time and the
    detector's settings, and written atomically.
    """
    from deepfake import faces

    folder = Path(cache_dir if cache_dir is not None else cfg.media_cache_dir)
    cache_file = folder / KEYPOINTS_FILE
    settings = _detector_settings(cfg)
    cached: dict[str, Any] = {}
    if cache_file.is_file():
        try:
            stored = json.loads(cache_file.read_text())
            if stored.get("settings") == settings:
                cached = dict(stored.get("keypoints", {}))
        except (OSError, ValueError, AttributeError):
            cached = {}
    keys = [_key(p) for p in paths]
    missing = [i for i, k in enumerate(keys) if k not in cached]
    if missing:
        log.info("finding face keypoints of %d training image(s) for synthetic fakes (cached in %s)",
                 len(missing), folder)
        for start in range(0, len(missing), DETECT_CHUNK):
            chunk = missing[start:start + DETECT_CHUNK]
            images = {i: _load_rgb(paths[i]) for i in chunk}
            readable = [i for i in chunk if images[i] is not None]
            found = faces.detect_faces_batch([images[i] for i in readable], cfg.faces) if readable else []
            for i in chunk:
                cached[keys[i]] = None
            for i, detected in zip(readable, found, strict=True):
                if detected:
                    h, w = images[i].shape[:2]
                    cached[keys[i]] = [[x / w, y / h] for x, y in
                                       (detected[0].keypoints[name] for name in KEYPOINT_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(cache_file, json.dumps({"settings": settings, "keypoints": cached}))
    out = np.full((len(paths), len(KEYPOINT_NAMES), 2), -1.0, dtype=np.float32)
    for i, key in enumerate(keys):
        if cached.get(key):
            out[i] = np.asarray(cached[key], dtype=np.float32) * cfg.image_size
    return out


def training_keypoints(paths: Sequence[str], labels: Sequence[int], cfg: DataConfig) -> np.ndarray:
    """The face points of each image for the input pipeline's self-blended fakes: float32 ``(n, 468, 2)``, in pixels
    of the decoded ``cfg.image_size`` square, one row per image as :func:`deepfake.blend_masks.pack` lays it out
    (the mesh; or the five keypoints, NaN below; or NaN: an ellipse).

    Found for the real images only, and only when ``cfg.synthetic_fakes`` blends (sbi, both), as its ``mask``
    says: ``mesh`` (:func:`deepfake.face_mesh.meshes_for`; MTCNN's keypoints for the images without a mesh, then
    ellipses), ``keypoints`` (:func:`keypoints_for`, then ellipses) or ``ellipse``. Without the mesh model or
    MTCNN (a broken install) their points are skipped with a warning. The mask kinds the reals get are logged
    (:func:`mask_counts`).
    """
    from deepfake import face_mesh

    out = np.full((len(paths), face_mesh.POINTS, 2), np.nan, dtype=np.float32)
    s = cfg.synthetic_fakes
    reals = [i for i, y in enumerate(labels) if int(y) == 0]
    if s.kind not in ("sbi", "both") or not reals:
        return out
    todo = reals
    if s.mask == "mesh":
        try:
            out[reals] = face_mesh.meshes_for([paths[i] for i in reals], cfg.image_size, cfg.media_cache_dir)
        except DeepfakeError as exc:
            log.warning("synthetic fakes: no face mesh (%s); blending through MTCNN keypoint masks", exc)
        todo = [i for i in reals if not np.isfinite(out[i]).all()]
    if s.mask in ("mesh", "keypoints") and todo:
        try:
            found = keypoints_for([paths[i] for i in todo], cfg)
        except DeepfakeError as exc:
            log.warning("synthetic fakes: no face keypoints (%s); blending through ellipse masks", exc)
        else:
            for i, keypoints in zip(todo, found, strict=True):
                if (keypoints >= 0).all():
                    out[i] = blend_masks.pack(keypoints=keypoints)
    counts = mask_counts(out, labels)
    log.info("synthetic fakes: %s masks for the %d real training image(s) (data.synthetic_fakes.mask: %s)",
             ", ".join(f"{kind} {n}" for kind, n in counts.items()), len(reals), s.mask)
    return out


def mask_counts(points: np.ndarray, labels: Sequence[int] | None = None) -> dict[str, int]:
    """How many images get each mask kind from :func:`training_keypoints`' array: ``{"mesh": n, "keypoints": n,
    "ellipse": n}``; with ``labels``, the real images (label 0) only, the ones that give self-blended fakes."""
    points = np.asarray(points)
    if labels is not None:
        points = points[np.asarray(labels, dtype=int) == 0]
    return blend_masks.kind_counts(points)
