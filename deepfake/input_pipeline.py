"""The ``tf.data`` input pipeline: files of a split are read and decoded in parallel
(:func:`deepfake.images.decode_image`), cached, shuffled and augmented (training only, seeded),
batched and prefetched.

Augmentations are the CNNDetection recipe's (Gaussian blur, JPEG re-compression) plus horizontal
flips, each with its own stateless seed, so a seeded training run repeats exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfake.config import AugmentConfig, DataConfig
from deepfake.data import Split
from deepfake.images import decode_image

if TYPE_CHECKING:
    import tensorflow as tf

AUTO_CACHE_BYTES = 1 << 30  # "auto" caches decoded images in memory below 1 GiB


# --------------------------------------------------------------------------- augmentation

Augmentation = Callable[["object", "object", AugmentConfig], "object"]  # (image, seed, cfg) -> image


def _flip(image, seed, cfg: AugmentConfig):
    import tensorflow as tf

    if not cfg.flip:
        return image
    return tf.image.stateless_random_flip_left_right(image, seed)


def _blur(image, seed, cfg: AugmentConfig):
    """Gaussian blur with probability ``blur_prob``, sigma ~ U(0, blur_sigma_max) (CNNDetection)."""
    import tensorflow as tf

    if cfg.blur_prob <= 0:
        return image
    u = tf.random.stateless_uniform([2], seed)
    sigma = tf.maximum(u[1] * cfg.blur_sigma_max, 1e-3)
    radius = max(1, int(np.ceil(3 * cfg.blur_sigma_max)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / sigma))
    k = k / tf.reduce_sum(k)
    kh = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    kv = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, kh, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, kv, [1, 1, 1, 1], "VALID")[0]
    return tf.where(u[0] < cfg.blur_prob, blurred, image)


def _jpeg_recompress(image, seed, cfg: AugmentConfig):
    """JPEG re-compression with probability ``jpeg_prob``, quality ~ U(jpeg_quality_min, 100)."""
    import tensorflow as tf

    if cfg.jpeg_prob <= 0:
        return image
    u = tf.random.stateless_uniform([1], seed)[0]
    quality = tf.random.stateless_uniform([], seed + 1, cfg.jpeg_quality_min, 101, dtype=tf.int32)
    compressed = tf.image.adjust_jpeg_quality(image / 255.0, quality) * 255.0
    compressed.set_shape(image.shape)
    return tf.where(u < cfg.jpeg_prob, compressed, image)


AUGMENTATIONS: list[Augmentation] = [_blur, _jpeg_recompress, _flip]


def augment_image(image: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Apply every augmentation in :data:`AUGMENTATIONS` with its own stateless seed."""
    import tensorflow as tf

    for i, fn in enumerate(AUGMENTATIONS):
        image = fn(image, tf.stack([seed[0], seed[1] + 1000 * (i + 1)]), cfg)
    return image


# --------------------------------------------------------------------------- pipeline


def _cache_mode(split: Split, cfg: DataConfig) -> str:
    if cfg.cache != "auto":
        return cfg.cache
    nbytes = len(split) * cfg.image_size * cfg.image_size * 3 * 4
    return "memory" if nbytes < AUTO_CACHE_BYTES else "none"


def make_dataset(split: Split, cfg: DataConfig, training: bool, seed: int = 42,
                 cache_dir: str | Path | None = None) -> tf.data.Dataset:
    """A streaming ``tf.data`` pipeline of ``(images, labels)`` batches.

    Files are read and decoded in parallel, resized, optionally cached (decoded, before
    augmentation), shuffled and augmented (training only; seeded), batched and prefetched.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    parallel = autotune if cfg.num_parallel_calls < 0 else cfg.num_parallel_calls
    size = cfg.image_size
    labels = np.asarray(split.labels, dtype="float32")
    ds = tf.data.Dataset.from_tensor_slices((list(split.paths), labels))

    def load(path, label):
        return decode_image(tf.io.read_file(path), size), label

    # Deterministic: evaluation matches labels by position, and seeded training must repeat exactly.
    ds = ds.map(load, num_parallel_calls=parallel, deterministic=True)
    mode = _cache_mode(split, cfg)
    if mode == "memory":
        ds = ds.cache()
    elif mode == "disk":
        folder = Path(cache_dir or ".cache/images")
        folder.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha1("\n".join(split.paths).encode()).hexdigest()[:16]
        ds = ds.cache(str(folder / f"images_{size}_{key}"))
    if training:
        ds = ds.shuffle(max(len(split), 1), seed=seed, reshuffle_each_iteration=True)
        aug = cfg.augment
        if aug.flip or aug.blur_prob > 0 or aug.jpeg_prob > 0:
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)))
            ds = ds.map(
                lambda xy, s: (augment_image(xy[0], s, aug), xy[1]),
                num_parallel_calls=parallel,
            )
    return ds.batch(cfg.batch_size).prefetch(autotune)
