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
    out = Path(out_dir)
    n_train = int(round(per_class * splits[0]))
    n_val = int(round(per_class * splits[1]))
    sizes = {"train": n_train, "val": n_val, "test": per_class - n_train - n_val}
    counts: dict[str, dict[str, int]] = {}
    for label, cls in enumerate(CLASSES):
        index = 0
        for split, n in sizes.items():
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                rng = np.random.default_rng([seed, label, index])
                (folder / f"{cls}_{index:05d}.jpg").write_bytes(make_image(rng, size, fake=bool(label)))
                index += 1
            counts.setdefault(split, {})[cls] = n
    return counts
