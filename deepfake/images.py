"""Image files and bytes: the accepted formats, the checks before decoding, and the one decoder.

:func:`check_bytes` reads the dimensions from the header before any pixel is decoded, so a decompression
bomb is refused without being allocated. :func:`decode_image` decodes and resizes for training
(:mod:`deepfake.input_pipeline`) and inference (:mod:`deepfake.inference`) alike, so both see identical pixels.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfake import pixels
from deepfake.errors import TooLarge, first_line
from deepfake.pixels import IMAGE_FORMATS

if TYPE_CHECKING:
    import tensorflow as tf

# The one list of image file extensions: dataset scans, ``deepfake predict`` folders and messages use it.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FORMAT_NAMES = "JPEG, PNG, BMP, GIF, WebP, TIFF"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
MIN_SIDE = 2
TOO_LARGE = "too large"  # how check_bytes's problems over the pixel limit begin (input_error)
# libjpeg's accurate integer IDCT (TensorFlow's default is the fast one): the one Pillow uses, so the TensorFlow and
# the NumPy pipelines (deepfake.pixels) decode JPEGs to the same pixels.
JPEG_IDCT = "INTEGER_ACCURATE"


# The first bytes of each accepted format (WebP: RIFF....WEBP, checked apart).
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF87a": "GIF", b"GIF89a": "GIF",
              b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def signature_format(raw: bytes) -> str | None:
    """The accepted image format the bytes' signature names (nothing decoded; a broken file still has one), or
    ``None``."""
    head = bytes(raw[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in SIGNATURES.items() if head.startswith(magic)), None)


# --------------------------------------------------------------------------- checking


def check_bytes(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, load: bool = True) -> str | None:
    """Why these encoded bytes cannot be used as an image, or ``None`` if they can.

    Dimensions are read from the header *before* decoding, so a decompression bomb is refused
    without allocating its pixels. Then the image is fully decoded to catch truncation (``load=False``: not,
    for a caller that decodes it next and reports what that decoding finds).
    """
    from PIL import Image, UnidentifiedImageError

    if not raw:
        return "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return (f"{TOO_LARGE}: {width}x{height} pixels exceeds the limit of {max_pixels} "
                            "(decompression bomb?)")
                if min(width, height) < MIN_SIDE:
                    return f"too small: {width}x{height} (need at least {MIN_SIDE} px per side)"
                if load:
                    img.load()  # CMYK and YCbCr JPEGs, palette, grayscale and alpha images are converted to RGB
    except UnidentifiedImageError:
        return f"not an image in a supported format ({FORMAT_NAMES})"
    except Image.DecompressionBombError as exc:
        return f"{TOO_LARGE}: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        text = first_line(exc, 120)
        return "truncated image" if "truncated" in text.lower() else f"cannot decode: {text}"
    return None


def input_error(problem: str) -> ValueError:
    """The error for a :func:`check_bytes` problem: :class:`deepfake.errors.TooLarge` for one over the pixel limit."""
    return (TooLarge if problem.startswith(TOO_LARGE) else ValueError)(problem)


def check_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the image file cannot be used, or ``None`` if it can."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read: {read_error(path, exc)}"
    return check_bytes(raw, max_pixels)


def read_error(path: str | Path, exc: OSError) -> str:
    """Why ``path`` could not be read, without repeating the path."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return "broken symlink (its target does not exist)"
    return exc.strerror or type(exc).__name__


# --------------------------------------------------------------------------- decoding


def tensorflow_backend() -> bool:
    """Whether Keras runs on TensorFlow here (the ``tf.image`` decoder), else NumPy and Pillow decode."""
    from deepfake.backend import current

    return current() == "tensorflow"


def decode_image(contents: bytes | tf.Tensor, image_size: int, fit: str = "resize") -> tf.Tensor:
    """Encoded bytes (JPEG/PNG/BMP/GIF by TensorFlow, WebP/TIFF by Pillow) -> float32 ``(S, S, 3)`` RGB in 0..255.

    ``fit="crop"`` (``data.fit``) keeps the image's own resolution instead: float32 ``(H, W, 3)``, the pixels as
    decoded (no DCT scaling, no resampling), except that an image whose short side is below ``S`` is resized up
    (bilinear, aspect kept) until it equals ``S``; :func:`random_crop` and :func:`crop_grid` cut ``S x S`` crops.

    Grayscale, palette and CMYK images become RGB, alpha is dropped, a GIF, WebP or TIFF gives
    its first frame.
    Large JPEGs are downscaled while decoding (libjpeg's DCT scaling by 1/2, 1/4 or 1/8, never
    below the target size), which is both faster and an antialiased downscale; what remains
    (less than 2x) is a bilinear resize. Used by training and inference alike, so both see
    identical pixels. On the JAX and PyTorch backends :func:`deepfake.pixels.decode` decodes (NumPy out, the same
    pixels).
    """
    if not tensorflow_backend():
        return pixels.decode(bytes(contents), image_size, fit)
    import tensorflow as tf

    contents = tf.convert_to_tensor(contents, dtype=tf.string)
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8")

    def jpeg():
        if fit == "crop":
            return tf.io.decode_jpeg(contents, channels=3, dct_method=JPEG_IDCT)
        shape = tf.image.extract_jpeg_shape(contents)
        short = tf.minimum(shape[0], shape[1])
        branch = tf.reduce_sum(tf.cast(short >= image_size * tf.constant([2, 4, 8]), tf.int32))
        decoders = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r, dct_method=JPEG_IDCT)
                    for r in (1, 2, 4, 8)]
        return tf.switch_case(branch, decoders)

    def other():
        img = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
        img.set_shape([None, None, 3])
        return img

    def pillow():
        img = tf.numpy_function(decode_with_pillow, [contents], tf.uint8, stateful=False)
        img.set_shape([None, None, 3])
        return img

    head = tf.strings.substr(contents, 0, 4)
    tf_reads = tf.reduce_any([tf.equal(head, b"\x89PNG"), tf.equal(head, b"GIF8"),
                              tf.equal(tf.strings.substr(contents, 0, 2), b"BM")])
    img = tf.cond(is_jpeg, jpeg, lambda: tf.cond(tf_reads, other, pillow))
    img.set_shape([None, None, 3])
    if fit == "crop":
        return _at_least(img, image_size)
    size = tf.shape(img)[:2]
    big = tf.reduce_max(size) > 2 * image_size  # what DCT scaling left large: antialias the downscale
    img = tf.cond(
        tf.reduce_all(tf.equal(size, image_size)),
        lambda: tf.cast(img, tf.float32),
        lambda: tf.cond(
            big,
            lambda: tf.image.resize(img, [image_size, image_size], antialias=True),
            lambda: tf.image.resize(img, [image_size, image_size]),
        ),
    )
    img = tf.ensure_shape(img, [image_size, image_size, 3])
    return tf.clip_by_value(img, 0.0, 255.0)


def _at_least(img: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 ``(H, W, 3)`` -> float32, resized up (bilinear, aspect kept) when its short side is below
    ``image_size``."""
    import tensorflow as tf

    size = tf.shape(img)[:2]
    short = tf.reduce_min(size)

    def upscale():
        scaled = tf.cast(tf.math.ceil(tf.cast(size * image_size, tf.float32) / tf.cast(short, tf.float32)), tf.int32)
        return tf.clip_by_value(tf.image.resize(img, tf.maximum(scaled, image_size)), 0.0, 255.0)

    return tf.cond(short < image_size, upscale, lambda: tf.cast(img, tf.float32))


def crop_offsets(side: tf.Tensor, image_size: int, n: int) -> tf.Tensor:
    """Offsets along one side of ``n`` or fewer crops: ``min(n, ceil(side / S))`` crops spread evenly from edge to
    edge (they cover the side when ``n`` allows), or the centre one when that is one."""
    import tensorflow as tf

    count = tf.minimum(n, (side + image_size - 1) // image_size)
    span = tf.cast(side - image_size, tf.float32)
    spread = tf.round(span * tf.cast(tf.range(count), tf.float32) / tf.cast(tf.maximum(count - 1, 1), tf.float32))
    return tf.where(count > 1, tf.cast(spread, tf.int32), (side - image_size) // 2)


def crop_grid(image: tf.Tensor, image_size: int, n: int) -> tf.Tensor:
    """A decoded ``(H, W, 3)`` image (``fit="crop"``) -> its grid of ``S x S`` crops ``(K, S, S, 3)``, row by row:
    :func:`crop_offsets` down and across (``K`` = 1 for an image of exactly ``S``; at most ``n * n``). NumPy in and
    out on the JAX and PyTorch backends."""
    if not tensorflow_backend():
        image = np.asarray(image)
        return np.stack([image[y:y + image_size, x:x + image_size]
                         for y, x in pixels.crop_grid_offsets(*image.shape[:2], image_size, n)])
    import tensorflow as tf

    shape = tf.shape(image)
    ys, xs = crop_offsets(shape[0], image_size, n), crop_offsets(shape[1], image_size, n)
    grid = tf.reshape(tf.stack(tf.meshgrid(ys, xs, indexing="ij"), axis=-1), [-1, 2])
    return tf.map_fn(lambda yx: tf.slice(image, [yx[0], yx[1], 0], [image_size, image_size, 3]), grid,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 3], image.dtype))


def random_crop(image: tf.Tensor, image_size: int, seed: tf.Tensor) -> tf.Tensor:
    """A decoded ``(H, W, 3)`` image (``fit="crop"``) -> one ``S x S`` crop at a position drawn from ``seed``
    (stateless)."""
    import tensorflow as tf

    return tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed)


def decode_with_pillow(contents: bytes) -> np.ndarray:
    """Encoded bytes of a format TensorFlow cannot read (WebP, TIFF) -> uint8 ``(H, W, 3)`` RGB, first frame."""
    from PIL import Image

    # tf.numpy_function passes a numpy scalar
    raw = contents.item() if isinstance(contents, np.ndarray) else bytes(contents)
    with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
        if img.mode.startswith("I;16"):  # 16-bit grayscale: keep the high byte
            return np.repeat((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)[..., None], 3, axis=-1)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path, image_size: int) -> np.ndarray:
    return np.asarray(decode_image(Path(path).read_bytes(), image_size))
