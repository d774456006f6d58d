"""A deterministic synthetic real-vs-fake dataset, so everything runs offline on any machine.

Both classes draw their *content* from the same distribution: a 1/f^alpha ("pink") colour
field, the spectrum natural photographs have, overlaid with dead-leaves discs (occluding
objects of random size and colour). What differs is how the pixels were *made*:

* **real**: rendered at full resolution, then camera-like sensor noise (signal-dependent
  Gaussian) and JPEG compression at quality 75-95;
* **fake**: rendered at 1/2 or 1/4 resolution and upsampled as image generators do, by
  nearest-neighbour repetition or by a transposed-convolution-like zero insertion plus a fixed
  kernel; both leave periodic peaks in the spectrum. Then the same JPEG compression.

So file format, size and compression are no shortcut; the detector has to find the
generation trace, as it must on real data.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
CLASSES = ("real", "fake")


def _pink_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) colour field with a 1/f^alpha amplitude spectrum, values in 0..1."""
    alpha = rng.uniform(0.9, 1.4)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amplitude = 1.0 / f**alpha
    amplitude[0, 0] = 0.0
    channels = []
    base = None
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, (size, size))
        field = np.real(np.fft.ifft2(amplitude * np.exp(1j * phase)))
        # Correlate the colour channels the way natural images are correlated.
        base = field if base is None else 0.7 * base + 0.3 * field
        channels.append(base)
    img = np.stack(channels, axis=-1)
    img -= img.min()
    img /= max(img.max(), 1e-8)
    tint = rng.uniform(0.6, 1.0, 3)
    return img * tint


def _dead_leaves(rng: np.random.Generator, img: np.ndarray, n: int) -> np.ndarray:
    """Overlay ``n`` occluding discs with power-law radii (the dead-leaves model)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    out = img.copy()
    for _ in range(n):
        r = size * 0.03 / rng.uniform(0.08, 1.0) ** 0.7
        cy, cx = rng.uniform(0, size, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        colour = rng.uniform(0, 1, 3)
        shade = 0.85 + 0.15 * (yy[mask] - cy) / max(r, 1)  # a little shading, like light on an object
        out[mask] = np.clip(colour[None, :] * shade[:, None], 0, 1)
    return out


def _content(rng: np.random.Generator, size: int) -> np.ndarray:
    return _dead_leaves(rng, _pink_field(rng, size), n=int(rng.integers(4, 14)))


def _upsample(rng: np.random.Generator, low: np.ndarray, factor: int) -> np.ndarray:
    if rng.random() < 0.5:  # nearest-neighbour: blocks of identical pixels
        return np.repeat(np.repeat(low, factor, axis=0), factor, axis=1)
    # Transposed convolution: zero insertion, then a fixed separable kernel. The kernel is not a
    # partition of unity, so output pixels alternate in gain: the checkerboard trace.
    h, w, c = low.shape
    up = np.zeros((h * factor, w * factor, c))
    up[::factor, ::factor] = low
    k1 = np.array([0.2, 0.6, 1.0, 0.6, 0.2] if factor == 2 else [0.1, 0.4, 0.7, 1.0, 0.7, 0.4, 0.1])
    pad = len(k1) // 2
    for axis in (0, 1):
        padded = np.pad(up, [(pad, pad) if a == axis else (0, 0) for a in range(3)], mode="reflect")
        up = sum(k1[i] * np.take(padded, range(i, i + up.shape[axis]), axis=axis) for i in range(len(k1)))
    return up / (k1.sum() / factor) ** 2  # keep the mean brightness


def _jpeg(rng: np.random.Generator, img01: np.ndarray) -> bytes:
    arr = np.clip(img01 * 255 + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue()


def make_image(rng: np.random.Generator, size: int, fake: bool) -> bytes:
    """One JPEG-encoded demo image (bytes)."""
    if fake:
        factor = int(rng.choice([2, 4])) if size >= 128 else 2
        low = _content(rng, size // factor)
        img = _upsample(rng, low, factor)[:size, :size]
        img = img + rng.normal(0, 0.002, img.shape)  # generators' output is nearly noise-free
    else:
        img = _content(rng, size)
        sigma = rng.uniform(0.015, 0.035)
        img = img + rng.normal(0, 1, img.shape) * sigma * np.sqrt(np.clip(img, 0.05, 1))  # shot-like noise
    return _jpeg(rng, np.clip(img, 0, 1))


def make_demo_dataset(
    out_dir: str | Path,
    per_class: int = 300,
    size: int = 64,
    seed: int = 0,
    splits: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> dict[str, dict[str, int]]:
    """Write ``OUT/{train,val,test}/{real,fake}/*.jpg``; return the counts per split and class.

    The same arguments always write the same bytes.
    """
    for folder, cls, label, index in _items(Path(out_dir), per_class, splits):
        rng = np.random.default_rng([seed, label, index])
        (folder / f"{cls}_{index:05d}.jpg").write_bytes(make_image(rng, size, fake=bool(label)))
    return _counts(per_class, splits)


def _sizes(per_class: int, splits: tuple[float, float, float]) -> dict[str, int]:
    n_train = int(round(per_class * splits[0]))
    n_val = int(round(per_class * splits[1]))
    return {"train": n_train, "val": n_val, "test": per_class - n_train - n_val}


def _counts(per_class: int, splits: tuple[float, float, float]) -> dict[str, dict[str, int]]:
    return {split: dict.fromkeys(CLASSES, n) for split, n in _sizes(per_class, splits).items()}


def _items(out: Path, per_class: int, splits: tuple[float, float, float]) -> Iterator[tuple[Path, str, int, int]]:
    """``(folder, class name, label, index)`` of every item a demo dataset holds, in writing order (class by class,
    then split by split; the index runs on over the splits of a class); the folders are created."""
    for label, cls in enumerate(CLASSES):
        index = 0
        for split, n in _sizes(per_class, splits).items():
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                yield folder, cls, label, index
                index += 1


# ---- synthetic faces

# Skin tones, light to dark (a draw interpolates between neighbours). Each end alone was found with confidence
# >= 0.95 in at least 98% of 100 draws at 96 and 160 px and at 80 px in a 320x180 frame; a darker end,
# (90, 54, 30), was found in only 95% of the frames.
FACE_SKIN_TONES = np.array([(233, 189, 161), (214, 153, 113), (191, 128, 86), (166, 105, 63), (138, 83, 47),
                            (100, 59, 33)], dtype=float)


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(round(v)) for v in np.clip(colour, 0, 255))
    return r, g, b


def draw_face(rng: np.random.Generator, size: int) -> np.ndarray:
    """A synthetic cartoon face, uint8 ``(size, size, 3)`` RGB, that MTCNN detects reliably.

    Hair, ears, a skin ellipse with shading (darker rim, eye sockets, lit forehead, nose and cheeks),
    eyes with sclera, iris, pupil and lid, brows, nose with nostrils, mouth, neck and shirt, on a colour
    gradient that stands out from the skin; slightly blurred. Position, scale, skin tone (any of
    :data:`FACE_SKIN_TONES` and between), hair, eye, shirt and background colours are jittered. Drawn in a
    160-unit design space, supersampled, then downscaled. The face box is about 0.4-0.55 of ``size``.
    """
    from PIL import Image, ImageDraw, ImageFilter

    ss = max(1, min(4, 640 // size))  # supersampling
    canvas = size * ss
    k = rng.uniform(0, len(FACE_SKIN_TONES) - 1)
    i = min(int(k), len(FACE_SKIN_TONES) - 2)
    skin = (FACE_SKIN_TONES[i] + (FACE_SKIN_TONES[i + 1] - FACE_SKIN_TONES[i]) * (k - i)) * rng.uniform(0.95, 1.05, 3)
    hair = rng.uniform(10, 90) * np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.4, 0.7)])
    iris = rng.uniform(20, 110) * rng.uniform([0.5, 0.5, 0.3], 1.0)
    shirt = rng.uniform(20, 235, 3)
    backdrop = []  # two colours far from the skin: a face on a skin-coloured background is found less often
    while len(backdrop) < 2:
        colour = rng.uniform(20, 235, 3)
        if np.linalg.norm(colour - skin) >= 130:
            backdrop.append(colour)
    scale = rng.uniform(0.75, 0.95)
    cx, cy = 0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.05, 0.05)
    gradient_angle = rng.uniform(0, 2 * np.pi)

    def x(u: float) -> float:  # design units (0..160) -> canvas pixels
        return canvas * (cx + (u / 160 - 0.5) * scale)

    def y(v: float) -> float:
        return canvas * (cy + (v / 160 - 0.5) * scale)

    def box(u0: float, v0: float, u1: float, v1: float) -> list[float]:
        return [x(u0), y(v0), x(u1), y(v1)]

    def width(u: float) -> int:
        return max(1, round(canvas * u / 160 * scale))

    yy, xx = np.mgrid[0:canvas, 0:canvas] / canvas
    t = np.cos(gradient_angle) * xx + np.sin(gradient_angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = Image.fromarray((backdrop[0] + (backdrop[1] - backdrop[0]) * t[..., None]).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse(box(10, 150, 150, 230), fill=_rgb(shirt))
    draw.rectangle(box(62, 110, 98, 158), fill=_rgb(skin * 0.8))  # neck
    draw.ellipse(box(30, 8, 130, 90), fill=_rgb(hair))
    draw.ellipse(box(27, 65, 39, 95), fill=_rgb(skin * 0.9))  # ears
    draw.ellipse(box(121, 65, 133, 95), fill=_rgb(skin * 0.9))
    draw.ellipse(box(34, 20, 126, 140), fill=_rgb(skin))
    draw.chord(box(36, 14, 124, 70), 180, 360, fill=_rgb(hair))  # fringe

    # Shading of the face ellipse: a darker rim, eye sockets, light on forehead, nose bridge and cheeks.
    px, py = xx * canvas, yy * canvas

    def radius2(u: float, v: float, ru: float, rv: float) -> np.ndarray:  # squared, 1 on the ellipse's edge
        return ((px - x(u)) / (x(ru) - x(0))) ** 2 + ((py - y(v)) / (y(rv) - y(0))) ** 2

    def blob(u: float, v: float, ru: float, rv: float) -> np.ndarray:
        return np.exp(-radius2(u, v, ru, rv))

    r2 = radius2(80, 80, 46, 60)
    sockets = (1 - 0.25 * blob(62, 66, 13, 9)) * (1 - 0.25 * blob(98, 66, 13, 9))
    shade = np.where(r2 <= 1, 1 - 0.3 * r2**2, 1.0) * sockets
    light = blob(80, 40, 22, 10) + blob(80, 80, 4, 14) + 0.7 * blob(58, 88, 10, 7) + 0.7 * blob(102, 88, 10, 7)
    arr = np.asarray(img, dtype=float)
    arr = arr * shade[..., None] + 0.15 * 255 * (light * (r2 <= 1))[..., None] * (1 - arr / 255)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)

    for ex in (62, 98):
        draw.ellipse(box(ex - 7, 62, ex + 7, 72), fill=(235, 235, 228))  # sclera
        draw.ellipse(box(ex - 4.5, 62.5, ex + 4.5, 71.5), fill=_rgb(iris))
        draw.ellipse(box(ex - 2, 65, ex + 2, 69), fill=(10, 10, 10))  # pupil
        draw.arc(box(ex - 9.5, 61.5, ex + 9.5, 72.5), 190, 350, fill=_rgb(hair * 0.4), width=width(2))  # lid
        draw.line([(x(ex - 12), y(54)), (x(ex), y(51)), (x(ex + 12), y(54))], fill=_rgb(hair * 0.8), width=width(3.5))
    draw.polygon([(x(80), y(74)), (x(72), y(96)), (x(88), y(96))], fill=_rgb(skin * 0.82))  # nose
    draw.ellipse(box(73, 93, 78, 97), fill=_rgb(skin * 0.45))  # nostrils
    draw.ellipse(box(82, 93, 87, 97), fill=_rgb(skin * 0.45))
    lips = skin * np.array([0.75, 0.45, 0.45]) + np.array([40, 0, 0])
    draw.ellipse(box(66, 106, 94, 118), fill=_rgb(lips))
    draw.line([(x(67), y(112)), (x(93), y(112))], fill=_rgb(lips * 0.5), width=width(1.5))

    img = img.resize((size, size), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(2.5 * size / 160))
    return np.asarray(img, dtype=np.uint8)


# ---- synthetic videos


def _soft_ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float, feather: float) -> np.ndarray:
    """A (h, w) mask: 1 inside the ellipse, falling smoothly to 0 over ``feather`` (a fraction of the radii)."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    s = np.clip((1 + feather - r) / (2 * feather), 0, 1)
    return s * s * (3 - 2 * s)


def make_video_frames(rng: np.random.Generator, n_frames: int, width: int, height: int, fake: bool) -> list[np.ndarray]:
    """The uint8 ``(height, width, 3)`` RGB frames of one demo video: a person (:func:`draw_face`, the face about a
    quarter of the frame wide) in front of a slowly panning background, drifting a few pixels over the clip.

    **Real**: sensor-like noise on every frame, as a camera records. **Fake**: the face is swapped, as face-swap
    generators do: its region re-synthesised at half resolution and upsampled (the :func:`_upsample` trace),
    its colour a little off, blended back through a soft elliptical mask; the rest of the frame keeps the
    camera's noise. So a detector given the face crop can learn the swap.
    """
    side = min(int(width * 0.6), height - 4) // 2 * 2  # the portrait; its face box is 0.4-0.55 of its side
    portrait = draw_face(rng, side).astype(np.float64) / 255.0
    centre = (side - 1) / 2
    person = _soft_ellipse(side, side, centre, centre, side * 0.48, side * 0.40, 0.1)[..., None]
    swap = _soft_ellipse(side, side, centre, centre, side * 0.27, side * 0.21, 0.3)[..., None]  # the inner face
    pan = n_frames + 2  # the background pans under a pixel per frame
    scene = max(width, height) + pan
    background = _content(rng, scene)
    direction = rng.uniform(0, 2 * np.pi)
    step_y, step_x = np.sin(direction) * 0.75, np.cos(direction) * 0.75
    y0, x0 = rng.uniform(0.35, 0.65) * (height - side), rng.uniform(0.2, 0.8) * (width - side)
    drift_y, drift_x = rng.uniform(-0.4, 0.4, 2)  # pixels per frame
    sigma = rng.uniform(0.015, 0.03)
    tint = 1 + rng.uniform(-0.06, 0.06, 3)
    upsample_seed = int(rng.integers(2**31))  # one upsampling kind for the whole video
    frames = []
    for t in range(n_frames):
        by = int(round(np.clip((scene - height) / 2 + step_y * (t - n_frames / 2), 0, scene - height)))
        bx = int(round(np.clip((scene - width) / 2 + step_x * (t - n_frames / 2), 0, scene - width)))
        img = background[by:by + height, bx:bx + width].copy()
        fy = int(round(np.clip(y0 + drift_y * t, 0, height - side)))
        fx = int(round(np.clip(x0 + drift_x * t, 0, width - side)))
        window = (slice(fy, fy + side), slice(fx, fx + side))
        img[window] = person * portrait + (1 - person) * img[window]
        noisy = img + rng.normal(0, 1, img.shape) * sigma * np.sqrt(np.clip(img, 0.05, 1))  # shot-like noise
        if fake:
            low = img[window].reshape(side // 2, 2, side // 2, 2, 3).mean(axis=(1, 3))
            blocks = np.repeat(np.repeat(low, 2, axis=0), 2, axis=1)
            # A transposed convolution's checkerboard at full strength hides the face from MTCNN (measured):
            # 30% of it, over nearest-neighbour blocks.
            swapped = (blocks + 0.3 * (_upsample(np.random.default_rng(upsample_seed), low, 2) - blocks)) * tint
            swapped = swapped + rng.normal(0, 0.002, swapped.shape)  # generators' output is nearly noise-free
            noisy[window] = swap * swapped + (1 - swap) * noisy[window]
        frames.append(np.clip(noisy * 255 + 0.5, 0, 255).astype(np.uint8))
    return frames


# FFmpeg's own MPEG-4 part 2 encoder: bit-exact from run to run. libx264 (PyAV 18.1's build) was measured to write
# different bytes for the same frames now and then (depending on where in memory they lay), which a demo that
# promises the same bytes for the same arguments cannot have.
DEMO_VIDEO_CODEC = "mpeg4"


def make_demo_video_dataset(
    out_dir: str | Path,
    per_class: int = 12,
    n_frames: int = 16,
    width: int = 192,
    height: int = 128,
    seed: int = 0,
    fps: int = 8,
    with_images: bool = False,
) -> dict[str, dict[str, int]]:
    """Write ``OUT/{train,val,test}/{real,fake}/*.mp4`` (MPEG-4) split as the image demo is; return the counts of
    videos per split and class.

    With ``with_images`` each folder also gets as many still JPEGs (``*.jpg``, one face each, made the same way),
    for datasets that mix images and videos. The same arguments write the same bytes with the same PyAV build
    (MPEG-4 part 2, FFmpeg's own encoder, in ``bitexact`` mode: see :data:`DEMO_VIDEO_CODEC`).
    """
    from deepfake.video import write_video

    if min(width, height) < 64:
        raise ValueError(f"frames of {width}x{height} are too small for a detectable face: at least 64x64")
    width, height = width // 2 * 2, height // 2 * 2  # 4:2:0 chroma takes even sides
    for folder, cls, label, index in _items(Path(out_dir), per_class, SPLIT_FRACTIONS):
        rng = np.random.default_rng([seed, label, index, 1])  # other streams than the image demo's
        frames = make_video_frames(rng, n_frames, width, height, fake=bool(label))
        write_video(folder / f"{cls}_{index:05d}.mp4", frames, fps=fps, codec=DEMO_VIDEO_CODEC)
        if with_images:
            [still] = make_video_frames(np.random.default_rng([seed, label, index, 2]), 1, width, height,
                                        fake=bool(label))
            Image.fromarray(still).save(folder / f"{cls}_{index:05d}.jpg", format="JPEG", quality=95)
    return _counts(per_class, SPLIT_FRACTIONS)
