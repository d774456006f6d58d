"""Blending masks of self-blended images (SBI, Shiohara & Yamasaki, CVPR 2022): where a fake's jittered copy of the
face shows through.

:func:`blend_mask` makes one soft mask, float32 ``(h, w)`` in [0, 1], from the best face points known
(:func:`points_kind` tells which an array holds):

* ``mesh``: the 468-point face mesh (:mod:`deepfake.face_mesh`): the convex hull of the face's outline
  (:data:`~deepfake.face_mesh.FACE_OVAL`), its upper part pushed up by a random fraction of the face's height
  (the forehead, which the mesh stops short of), as SBI extends dlib's 68 points by the forehead;
* ``keypoints``: MTCNN's five (the eyes, the nose, the mouth's corners): their convex hull, extended down to the
  chin and enlarged;
* ``ellipse``: no points: an ellipse about where a face crop holds the face.

Then, as SBI does, the outline is deformed elastically (a smooth random displacement field moves its vertices),
the filled mask is eroded or dilated a little (blurred and thresholded), its edge is blurred with a random
width, and the whole is scaled by a random blend ratio. The random changes are sized by the face, and the
displacement field is laid over the face, so a mask follows its face wherever it is in the image. Every random
choice comes from the ``numpy`` generator given; a mask costs about a millisecond at 224 px.

The input pipeline hands each image's points over in one fixed-shape float32 ``(468, 2)`` array
(:func:`pack`): the mesh; or the five keypoints in the first rows and NaN below; or NaN (no points). Any
``(5, 2)`` array, NaN or negative keypoints, and -1 everywhere also read as they did before the mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepfake.config import SYNTHETIC_MASKS
from deepfake.face_mesh import CHIN, EYE_CORNERS, FACE_OVAL, FOREHEAD, POINTS
from deepfake.faces import KEYPOINTS as KEYPOINT_NAMES

MASK_KINDS = SYNTHETIC_MASKS  # data.synthetic_fakes.mask, best first: mesh, keypoints, ellipse
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
FOREHEAD_LIFT = (0.05, 0.3)  # mesh: the forehead pushed up by this fraction of the face's height
ELASTIC = (0.0, 0.03)  # displacement field's standard deviation, a fraction of the face's size
ELASTIC_GRID = 5  # control points per side of the displacement field over the face
MORPH = (0.01, 0.04)  # erosion/dilation: the blur before thresholding, a fraction of the face's size
EDGE_BLUR = (0.01, 0.06)  # the soft edge's Gaussian blur, a fraction of the face's size


# --------------------------------------------------------------------------- the points of a face


def _keypoints(points: Any) -> np.ndarray | None:
    """Five keypoints as a float ``(5, 2)`` array of (x, y), or ``None`` when absent (``None``, NaN or negative)."""
    if points is None:
        return None
    if isinstance(points, Mapping):
        points = [points[name] for name in KEYPOINT_NAMES]
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)[:len(KEYPOINT_NAMES)]
    if points.shape[0] != len(KEYPOINT_NAMES) or not np.isfinite(points).all() or (points < 0).any():
        return None
    return points


def points_kind(points: Mapping[str, Sequence[float]] | np.ndarray | None) -> str:
    """Which mask ``points`` make: ``mesh`` (468 finite points, not all -1), ``keypoints`` (MTCNN's five, a dict
    by name or the first five rows, finite and not negative) or ``ellipse`` (none)."""
    if points is not None and not isinstance(points, Mapping):
        array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if array.shape[0] == POINTS and np.isfinite(array).all() and not (array == -1).all():
            return "mesh"
    return "keypoints" if _keypoints(points) is not None else "ellipse"


def pack(mesh: np.ndarray | None = None, keypoints: np.ndarray | None = None) -> np.ndarray:
    """One image's points for the input pipeline, float32 ``(468, 2)``: the mesh if given, else the keypoints
    in the first five rows (NaN below), else NaN."""
    out = np.full((POINTS, 2), np.nan, dtype=np.float32)
    if mesh is not None:
        out[:] = mesh
    elif keypoints is not None:
        out[:len(KEYPOINT_NAMES)] = keypoints
    return out


def kind_counts(points: np.ndarray) -> dict[str, int]:
    """How many of the ``(n, k, 2)`` per-image point arrays make each mask kind: ``{"mesh": .., "keypoints": ..,
    "ellipse": ..}``."""
    counts = dict.fromkeys(MASK_KINDS, 0)
    for one in np.asarray(points):
        counts[points_kind(one)] += 1
    return counts


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull of 2-D points, counter-clockwise (Andrew's monotone chain)."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    if len(pts) <= 2:
        return np.asarray(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1])


# --------------------------------------------------------------------------- outlines


def mesh_outline(mesh: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask's polygon from a ``(468, 2)`` face mesh: the convex hull of the face's outline, whose points above
    the eyes are pushed up (along the chin-to-forehead axis, more the higher they are) by a random fraction
    (:data:`FOREHEAD_LIFT`) of the face's height."""
    mesh = np.asarray(mesh, dtype=np.float64)
    oval = mesh[list(FACE_OVAL)]
    axis = mesh[FOREHEAD] - mesh[CHIN]
    height = float(np.hypot(*axis))
    if height < 1e-6:
        return _convex_hull(oval)
    up = axis / height
    eyes = mesh[list(EYE_CORNERS)].mean(axis=0)
    rise = (oval - eyes) @ up / max(float((mesh[FOREHEAD] - eyes) @ up), 1e-6)  # 0 at the eyes, 1 at the top
    lift = rng.uniform(*FOREHEAD_LIFT) * height
    return _convex_hull(oval + np.clip(rise, 0.0, 1.0)[:, None] * lift * up)


def keypoint_outline(keypoints: np.ndarray, rng: np.random.Generator, h: int) -> np.ndarray:
    """The mask's polygon from MTCNN's five keypoints: their convex hull with points below the mouth's corners (the
    chin), enlarged 1.3-1.8 times about its centre."""
    eyes, mouth = keypoints[:2], keypoints[3:]
    drop = max(float(mouth[:, 1].mean() - eyes[:, 1].mean()), 0.05 * h) * rng.uniform(0.6, 1.0)
    points = np.concatenate([keypoints, mouth + np.array([0.0, drop])])
    centre = points.mean(axis=0)
    return _convex_hull(centre + (points - centre) * rng.uniform(1.3, 1.8))


def ellipse_outline(h: int, w: int, rng: np.random.Generator, vertices: int = 48) -> np.ndarray:
    """An ellipse about where a face crop holds the face, as a polygon."""
    cx, cy = w * (0.5 + rng.uniform(-0.03, 0.03)), h * (0.55 + rng.uniform(-0.03, 0.03))
    ax, ay = w * rng.uniform(0.3, 0.4), h * rng.uniform(0.3, 0.4)
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return np.stack([cx + ax * np.cos(angle), cy + ay * np.sin(angle)], axis=1)


def _extent(polygon: np.ndarray) -> float:
    """The face's size: the polygon's longer side."""
    return max(float((polygon.max(axis=0) - polygon.min(axis=0)).max()), 1.0)


def deform(polygon: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Elastic deformation: the polygon, its edges split into steps of at most 1/24 of the face's size, its
    vertices moved by a smooth random displacement field (normal vectors on a :data:`ELASTIC_GRID` square grid
    over the polygon's box, bilinearly interpolated; their spread a random fraction :data:`ELASTIC` of the
    face's size)."""
    size = _extent(polygon)
    nxt = np.roll(polygon, -1, axis=0)
    steps = np.maximum(1, np.ceil(np.hypot(*(nxt - polygon).T) / (size / 24)).astype(int))
    dense = np.concatenate([a + (b - a) * (np.arange(n) / n)[:, None]
                            for a, b, n in zip(polygon, nxt, steps, strict=True)])
    n = ELASTIC_GRID
    field = rng.normal(0.0, 1.0, (n, n, 2)) * rng.uniform(*ELASTIC) * size
    lo = dense.min(axis=0)
    u = (dense - lo) / np.maximum(dense.max(axis=0) - lo, 1e-6) * (n - 1)  # grid coordinates
    i = np.clip(np.floor(u).astype(int), 0, n - 2)
    f = u - i
    fx, fy = f[:, :1], f[:, 1:]
    move = (field[i[:, 1], i[:, 0]] * (1 - fx) * (1 - fy) + field[i[:, 1], i[:, 0] + 1] * fx * (1 - fy)
            + field[i[:, 1] + 1, i[:, 0]] * (1 - fx) * fy + field[i[:, 1] + 1, i[:, 0] + 1] * fx * fy)
    return dense + move


# --------------------------------------------------------------------------- the mask


def _soften(polygon: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """The filled polygon, eroded, dilated or neither (blurred, then thresholded high or low), its edge blurred:
    float32 ``(h, w)`` in [0, 1], reaching 1 inside."""
    from PIL import Image, ImageDraw, ImageFilter

    size = _extent(polygon)
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon.tolist()], fill=255)
    change = rng.integers(3)  # 0: as it is, 1: eroded, 2: dilated
    if change:
        spread = canvas.filter(ImageFilter.GaussianBlur(size * rng.uniform(*MORPH)))
        threshold = rng.uniform(0.6, 0.95) if change == 1 else rng.uniform(0.05, 0.4)
        grown = np.asarray(spread) >= max(1, round(255 * threshold))
        if grown.any():
            canvas = Image.fromarray(grown.astype(np.uint8) * 255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(0.5, size * rng.uniform(*EDGE_BLUR))))
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    top = mask.max()
    return np.clip(mask / top, 0.0, 1.0) if top > 0 else mask  # a small polygon blurred flat still reaches 1


def blend_mask(h: int, w: int, rng: np.random.Generator,
               points: Mapping[str, Sequence[float]] | np.ndarray | None = None) -> np.ndarray:
    """The soft blending mask of an ``h`` x ``w`` image, float32 ``(h, w)`` in [0, 1]: shaped by the face mesh,
    else the five keypoints, else an ellipse (:func:`points_kind`), deformed, eroded or dilated, blurred and
    scaled by a random blend ratio."""
    kind = points_kind(points)
    if kind == "mesh":
        polygon = mesh_outline(np.asarray(points, dtype=np.float64).reshape(POINTS, 2), rng)
    elif kind == "keypoints":
        polygon = keypoint_outline(_keypoints(points), rng, h)
    else:
        polygon = ellipse_outline(h, w, rng)
    mask = _soften(deform(polygon, rng), h, w, rng)
    return (mask * rng.choice(BLEND_RATIOS)).astype(np.float32)
