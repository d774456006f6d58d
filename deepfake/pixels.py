"""Decoding, resizing and augmenting pictures with NumPy and Pillow: the input pipeline of the JAX and PyTorch
backends (:mod:`deepfake.array_pipeline`), which need no TensorFlow.

Each function is the NumPy twin of the ``tf.image`` operation the TensorFlow pipeline uses
(:mod:`deepfake.images`, :mod:`deepfake.input_pipeline`), so that both give the same pictures:

* :func:`decode`: large JPEGs are downscaled while decoding by libjpeg's DCT scaling (Pillow's ``draft``, the same
  1/2, 1/4 or 1/8 that ``tf.io.decode_jpeg(ratio=...)`` picks from the short side), then :func:`resize_bilinear`
  is ``tf.image.resize``'s bilinear (half-pixel centres); pictures whose long side is still over twice the size
  are downscaled with an antialiasing triangle filter (Pillow's, ``tf.image.resize(antialias=True)``'s). Both
  decode JPEGs with libjpeg's accurate integer IDCT (:data:`deepfake.images.JPEG_IDCT`), so the pixels are equal
  to float rounding (tests/test_backends.py).
* :func:`blur`, :func:`jpeg_recompress`, :func:`flip`, :func:`crop_offsets`: the augmentations and crops, given
  their drawn parameters; which parameters are drawn comes from each pipeline's own seeded generator.
"""

from __future__ import annotations

import io

import numpy as np

# Pillow formats accepted (JPEG includes the multi-picture JPEGs, MPO, written by many cameras). Pillow
# may only try these, so untrusted bytes never reach any other of its format parsers (deepfake.images checks them).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")


def decode(contents: bytes, image_size: int, fit: str = "resize") -> np.ndarray:
    """Encoded bytes -> float32 ``(S, S, 3)`` RGB in 0..255 (``fit="crop"``: ``(H, W, 3)`` at the image's own
    resolution, resized up when its short side is below ``S``); see :func:`deepfake.images.decode_image`."""
    from PIL import Image

    with Image.open(io.BytesIO(contents), formats=IMAGE_FORMATS) as img:
        jpeg = img.format in ("JPEG", "MPO")
        if jpeg and fit != "crop":
            img.draft("RGB", (image_size, image_size))  # DCT scaling: never below the size asked for
        if img.mode.startswith("I;16"):  # 16-bit grayscale: keep the high byte
            rgb = np.repeat((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)[..., None], 3, axis=-1)
        else:
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if fit == "crop":
        return at_least(rgb, image_size)
    height, width = rgb.shape[:2]
    if (height, width) == (image_size, image_size):
        return rgb.astype(np.float32)
    if max(height, width) > 2 * image_size:  # a long side DCT scaling left over twice the size, or a non-JPEG
        out = resize_antialias(rgb, image_size, image_size)
    else:
        out = resize_bilinear(rgb, image_size, image_size)
    return np.clip(out, 0.0, 255.0)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tf.image.resize`` bilinear's source rows for each output row (half-pixel centres): lower, upper, weight."""
    scale = np.float32(n_in) / np.float32(n_out)
    x = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(x)
    lower = np.clip(floor, 0, n_in - 1).astype(np.intp)
    upper = np.clip(np.ceil(x), 0, n_in - 1).astype(np.intp)
    return lower, upper, (x - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, C)`` -> float32 ``(height, width, C)``: ``tf.image.resize(method="bilinear", antialias=False)``."""
    image = np.asarray(image, dtype=np.float32)
    y0, y1, wy = _axis_weights(image.shape[0], height)
    x0, x1, wx = _axis_weights(image.shape[1], width)
    wx = wx[None, :, None]
    top = image[y0][:, x0] + (image[y0][:, x1] - image[y0][:, x0]) * wx
    bottom = image[y1][:, x0] + (image[y1][:, x1] - image[y1][:, x0]) * wx
    return top + (bottom - top) * wy[:, None, None]


def resize_antialias(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` -> float32 ``(height, width, 3)`` with a triangle filter as wide as the scale (an antialiased
    downscale: ``tf.image.resize(antialias=True)``), by Pillow on float channels."""
    from PIL import Image

    image = np.asarray(image, dtype=np.float32)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                           .resize((width, height), Image.Resampling.BILINEAR)) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1).astype(np.float32)


def at_least(image: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> float32, resized up (bilinear, aspect kept) when its short side is below ``image_size``
    (``fit="crop"``)."""
    height, width = image.shape[:2]
    short = min(height, width)
    if short >= image_size:
        return image.astype(np.float32)
    scaled = [max(int(np.ceil(np.float32(side * image_size) / np.float32(short))), image_size)
              for side in (height, width)]
    return np.clip(resize_bilinear(image, *scaled), 0.0, 255.0)


def decoded_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """The ``(H, W)`` :func:`decode` gives with ``fit="crop"`` to an image of ``height x width``."""
    short = min(height, width)
    if short >= image_size:
        return height, width
    return tuple(max(int(np.ceil(np.float32(side * image_size) / np.float32(short))), image_size)
                 for side in (height, width))


def crop_offsets(side: int, image_size: int, n: int) -> np.ndarray:
    """:func:`deepfake.images.crop_offsets` in NumPy: ``min(n, ceil(side / S))`` offsets spread edge to edge, or
    the centre one."""
    count = min(n, -(-side // image_size))
    if count <= 1:
        return np.asarray([(side - image_size) // 2])
    span = np.float32(side - image_size)
    return np.round(span * np.arange(count, dtype=np.float32) / np.float32(count - 1)).astype(int)


def crop_grid_offsets(height: int, width: int, image_size: int, n: int) -> list[tuple[int, int]]:
    """The ``(y, x)`` of every crop of :func:`deepfake.images.crop_grid`, row by row."""
    return [(int(y), int(x)) for y in crop_offsets(height, image_size, n) for x in crop_offsets(width, image_size, n)]


def flip(image: np.ndarray) -> np.ndarray:
    """Left-right mirror."""
    return image[:, ::-1]


def gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """The normalised 1-D Gaussian of :func:`deepfake.input_pipeline._blur` (float32, ``2 * radius + 1`` taps)."""
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(np.float32(-0.5) * np.square(x / np.float32(sigma)))
    return (k / k.sum()).astype(np.float32)


def blur(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian blur with reflected edges (``tf.nn.depthwise_conv2d`` on a ``REFLECT`` pad): across, then
    down."""
    k = gaussian_kernel(sigma, radius)
    padded = np.pad(np.asarray(image, dtype=np.float32), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[:2]
    across = sum(k[i] * padded[:, i:i + width] for i in range(len(k)))
    return sum(k[i] * across[i:i + height] for i in range(len(k))).astype(np.float32)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-encode at ``quality`` and decode (``tf.image.adjust_jpeg_quality``: pixels to uint8 as TensorFlow
    converts them, 4:2:0 chroma), float32 out."""
    from PIL import Image

    u8 = np.floor(np.clip(np.asarray(image, dtype=np.float32) / np.float32(255.0), 0, 1) * np.float32(255.5))
    buffer = io.BytesIO()
    Image.fromarray(np.minimum(u8, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=int(quality),
                                                                subsampling="4:2:0")
    with Image.open(io.BytesIO(buffer.getvalue()), formats=["JPEG"]) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32)
