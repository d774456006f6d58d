"""The ``tf.data`` input pipeline: files of a split are read and decoded in parallel
(:func:`deepfake.images.decode_image`), cached, shuffled and augmented (training only, seeded),
batched and prefetched.

Augmentations are the CNNDetection recipe's (Gaussian blur, JPEG re-compression) plus horizontal
flips, each with its own stateless seed, so a seeded training run repeats exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfake.array_pipeline import ArrayDataset, cache_mode, synthetic_count
from deepfake.config import AugmentConfig, DataConfig
from deepfake.data import Split
from deepfake.images import JPEG_IDCT, crop_grid, decode_image, random_crop, tensorflow_backend

if TYPE_CHECKING:
    import tensorflow as tf

CROP_SEED_OFFSET = 7919  # data.fit: crop: the random crops' seeds, apart from the augmentations'
SYNTHETIC_SEED_OFFSET = 104729  # data.synthetic_fakes: the fakes' seeds, apart from the others'


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
    # tf.image.adjust_jpeg_quality, decoded with the accurate IDCT (deepfake.images.JPEG_IDCT) like deepfake.pixels
    pixels = tf.image.convert_image_dtype(image / 255.0, tf.uint8, saturate=True)
    encoded = tf.raw_ops.EncodeJpegVariableQuality(images=pixels, quality=quality)
    compressed = tf.cast(tf.io.decode_jpeg(encoded, channels=3, dct_method=JPEG_IDCT), tf.float32)
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


def make_dataset(split: Split, cfg: DataConfig, training: bool, seed: int = 42,
                 cache_dir: str | Path | None = None, owners: bool = False,
                 mix: Mapping[str, float] | None = None, keypoints: np.ndarray | None = None) -> tf.data.Dataset:
    """A streaming ``tf.data`` pipeline of ``(images, labels)`` batches.

    Files are read and decoded in parallel, resized, optionally cached (decoded, before augmentation; for training
    as uint8, a quarter of the memory, rounded to the 0..255 integers the pixels were before resizing), shuffled and
    augmented (training only; seeded), batched and prefetched.
    With ``data.synthetic_fakes`` (training only) real images are followed by synthetic fakes of them after the
    shuffle and before augmentation (:func:`_with_synthetic_fakes`).

    A training split of several datasets (:attr:`deepfake.data.Split.datasets`) with their shares ``mix`` gives
    every epoch each dataset's share of pictures (:func:`_mixed`). ``keypoints``: the face points of the training
    images for self-blended fakes (:func:`synthetic_keypoints`), found here when not given.

    With ``data.fit: crop`` images are decoded (and cached) at their own resolution, then cut: in training one
    random ``S x S`` crop per image and epoch (stateless, seeded: a seeded run repeats), before the shuffle; else
    every crop of each image's grid (:func:`deepfake.images.crop_grid`) becomes an element, and ``owners`` adds
    the index of the image each came from as a third element (:func:`predict_images` averages by it).

    On the JAX and PyTorch backends the same batches come from NumPy and Pillow workers
    (:class:`deepfake.array_pipeline.ArrayDataset`, a ``keras.utils.PyDataset``), without TensorFlow.
    """
    synthetic = training and cfg.synthetic_fakes.kind != "none"
    # Face keypoints for self-blended fakes ride along with each image (data.fit: crop cuts anywhere: ellipses).
    if not synthetic or getattr(cfg, "fit", "resize") == "crop":
        keypoints = None
    elif keypoints is None:  # the caller may have found them already (to log the mask kinds)
        keypoints = synthetic_keypoints(split.paths, split.labels, cfg)
    if not tensorflow_backend():
        return ArrayDataset(split, cfg, training, seed=seed, cache_dir=cache_dir, owners=owners, mix=mix,
                            keypoints=keypoints)
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    parallel = autotune if cfg.num_parallel_calls < 0 else cfg.num_parallel_calls
    epoch_labels: Sequence[int] = split.labels
    if training and mix and len(split.dataset_names()) > 1:
        ds, epoch_labels = _mixed(split, cfg, seed, mix, keypoints, parallel, cache_dir)
    else:
        ds = _decoded(split, keypoints, cfg, training, seed, parallel, cache_dir, owners)
        if training:
            ds = ds.shuffle(max(len(split), 1), seed=seed, reshuffle_each_iteration=True)
    if training:
        ds = ds.map(lambda image, *rest: (tf.cast(image, tf.float32), *rest), num_parallel_calls=parallel)
        if synthetic:
            ds = _with_synthetic_fakes(ds, epoch_labels, cfg, seed, parallel)
        aug = cfg.augment
        if aug.flip or aug.blur_prob > 0 or aug.jpeg_prob > 0:
            ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)))
            ds = ds.map(
                lambda xy, s: (augment_image(xy[0], s, aug), xy[1]),
                num_parallel_calls=parallel,
            )
    return ds.batch(cfg.batch_size).prefetch(autotune)


def _decoded(split: Split, keypoints: np.ndarray | None, cfg: DataConfig, training: bool, seed: int, parallel: int,
             cache_dir: str | Path | None, owners: bool) -> tf.data.Dataset:
    """``split``'s pictures decoded (``(image, label)`` or ``(image, label, keypoints)``), cached and, with
    ``data.fit: crop``, cut into crops; in file order. Training images are cached as uint8 (see
    :func:`make_dataset`)."""
    import tensorflow as tf

    size = cfg.image_size
    labels = np.asarray(split.labels, dtype="float32")
    slices = (list(split.paths), labels) if keypoints is None else (list(split.paths), labels, keypoints)
    ds = tf.data.Dataset.from_tensor_slices(slices)
    mode = cache_mode(split, cfg, 1 if training else 4)
    small = training and mode != "none"

    def load(path, label, *extra):
        image = decode_image(tf.io.read_file(path), size, cfg.fit)
        return (tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8) if small else image, label, *extra)

    # Deterministic: evaluation matches labels by position, and seeded training must repeat exactly.
    ds = ds.map(load, num_parallel_calls=parallel, deterministic=True)
    if mode == "memory":
        ds = ds.cache()
    elif mode == "disk":
        folder = Path(cache_dir or ".cache/images")
        folder.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha1("\n".join(split.paths).encode()
                           + (b"" if keypoints is None else keypoints.tobytes())).hexdigest()[:16]
        kind = ("_full" if cfg.fit == "crop" else "") + ("_u8" if small else "")
        ds = ds.cache(str(folder / f"images_{size}{kind}_{key}"))
    if cfg.fit == "crop":
        ds = _crops(ds, cfg, training, seed, parallel, owners)
    return ds


def _mixed(split: Split, cfg: DataConfig, seed: int, mix: Mapping[str, float], keypoints: np.ndarray | None,
           parallel: int, cache_dir: str | Path | None) -> tuple[tf.data.Dataset, list[int]]:
    """Several datasets' training pictures, each dataset its share of every epoch (:func:`deepfake.data.epoch_counts`,
    ``len(split)`` pictures an epoch): ``(dataset, labels of one epoch)``. Each (dataset, class) group is decoded and
    cached alone and reshuffled without end; which group gives the next picture follows a list holding each group
    its count of times, reshuffled every epoch (seeded). So every epoch has the same, known composition, and a
    group smaller than its count repeats some pictures while a larger one leaves some out (others next epoch)."""
    import tensorflow as tf

    from deepfake.data import epoch_counts

    counts = epoch_counts(split, dict(mix))
    by_name = split.by_dataset()
    groups, choices, epoch_labels = [], [], []
    for k, ((name, label), n) in enumerate(sorted(counts.items())):
        if n == 0:
            continue
        idx = [i for i in by_name[name] if int(split.labels[i]) == label]
        sub = split.subset(idx)
        group = _decoded(sub, None if keypoints is None else keypoints[idx], cfg, True, seed + k, parallel, cache_dir,
                         False)
        groups.append(group.shuffle(len(sub), seed=seed + 31 * (k + 1), reshuffle_each_iteration=True).repeat())
        choices += [len(groups) - 1] * n
        epoch_labels += [label] * n
    order = tf.data.Dataset.from_tensor_slices(np.asarray(choices, dtype="int64")).shuffle(
        len(choices), seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.choose_from_datasets(groups, order)
    return ds.apply(tf.data.experimental.assert_cardinality(len(choices))), epoch_labels


def synthetic_keypoints(paths: Sequence[str], labels: Sequence[int], cfg: DataConfig) -> np.ndarray:
    """Float32 ``(n, 468, 2)`` face points for the self-blended fakes, in pixels of the decoded square: the mesh, or
    MTCNN's five keypoints in the first rows (NaN below), or all NaN (an ellipse); see
    :func:`deepfake.synthetic.training_keypoints`."""
    from deepfake import synthetic

    return synthetic.training_keypoints(paths, labels, cfg)


def _with_synthetic_fakes(ds: tf.data.Dataset, labels, cfg: DataConfig, seed: int,
                          parallel: int) -> tf.data.Dataset:
    """``data.synthetic_fakes``: real (label 0) elements are followed by a synthetic fake of them (label 1,
    :func:`deepfake.synthetic.fake_from_seed`), made on the fly with the element's own stateless seed (new every
    epoch; a seeded run repeats exactly). Which reals get one: the j-th real of the (shuffled) epoch when
    ``floor((j + 1) * fraction) > floor(j * fraction)``: each real with probability ``fraction``, and exactly
    :func:`synthetic_count` fakes per epoch, so every epoch has the same, known number of batches (Keras counts
    its steps from it). Elements are ``(image, label)`` or ``(image, label, keypoints)``; ``(image, label)`` come
    out."""
    import tensorflow as tf

    from deepfake import synthetic

    s = cfg.synthetic_fakes
    size = cfg.image_size
    fraction = tf.constant(s.fraction, tf.float64)
    seeds = tf.data.Dataset.random(seed=seed + SYNTHETIC_SEED_OFFSET, rerandomize_each_iteration=True).batch(2)

    def choose(reals_seen, element):
        real = tf.equal(element[1], 0.0)
        j = tf.cast(reals_seen, tf.float64)
        wanted = tf.logical_and(real, tf.floor((j + 1) * fraction) > tf.floor(j * fraction))
        return reals_seen + tf.cast(real, tf.int64), (element, wanted)

    def pair(chosen, seed_pair):
        element, wanted = chosen
        image, label = element[0], element[1]
        kp = element[2] if len(element) > 2 else tf.fill([len(synthetic.KEYPOINT_NAMES), 2], -1.0)

        def fake():
            out = tf.numpy_function(synthetic.fake_from_seed, [image, kp, seed_pair, s.kind], tf.float32,
                                    stateful=False)
            return tf.ensure_shape(out, [size, size, 3])

        made = tf.cond(wanted, fake, lambda: image)
        return tf.stack([image, made]), tf.stack([label, 1.0]), 1 + tf.cast(wanted, tf.int64)

    ds = ds.scan(tf.constant(0, tf.int64), choose)  # the state starts again every epoch
    ds = tf.data.Dataset.zip((ds, seeds)).map(pair, num_parallel_calls=parallel, deterministic=True)
    ds = ds.flat_map(lambda images, labels, n: tf.data.Dataset.from_tensor_slices((images[:n], labels[:n])))
    return ds.apply(tf.data.experimental.assert_cardinality(len(labels) + synthetic_count(labels, s.fraction)))


def _crops(ds: tf.data.Dataset, cfg: DataConfig, training: bool, seed: int, parallel: int,
           owners: bool) -> tf.data.Dataset:
    """Full-resolution ``(image, label)`` elements -> ``S x S`` crops (``data.fit: crop``; see :func:`make_dataset`)."""
    import tensorflow as tf

    size = cfg.image_size
    if training:
        seeds = tf.data.Dataset.random(seed=seed + CROP_SEED_OFFSET, rerandomize_each_iteration=True).batch(2)
        return tf.data.Dataset.zip((ds, seeds)).map(lambda xy, s: (random_crop(xy[0], size, s), xy[1]),
                                                    num_parallel_calls=parallel, deterministic=True)

    def grid(index, xy):
        crops = crop_grid(xy[0], size, cfg.test_crops)
        k = tf.shape(crops)[0]
        out = (crops, tf.fill([k], xy[1]))
        return (*out, tf.fill([k], index)) if owners else out

    return ds.enumerate().map(grid, num_parallel_calls=parallel, deterministic=True).unbatch()


def predict_images(predict: Callable[[np.ndarray], np.ndarray], split: Split, cfg: DataConfig, seed: int = 42,
                   cache_dir: str | Path | None = None) -> np.ndarray:
    """The raw fake probability of every image of ``split``, in file order: ``predict`` (a batch of ``S x S``
    images -> the model's raw outputs) on each image, or with ``data.fit: crop`` on each crop of its grid, averaged
    per image (the mean of the raw probabilities; calibration comes after). The one place that scores a split:
    the pipeline's validation and evaluation and :meth:`deepfake.inference.Predictor.predict_split` use it."""
    crop = cfg.fit == "crop"
    probs, owner = [], []
    for batch in batches(make_dataset(split, cfg, training=False, seed=seed, cache_dir=cache_dir, owners=crop)):
        probs.append(np.asarray(predict(batch[0]), dtype="float64").reshape(-1))
        if crop:
            owner.append(batch[2])
    if not probs:
        return np.zeros((0,))
    probs = np.concatenate(probs)
    return mean_by_owner(probs, np.concatenate(owner), len(split)) if crop else probs


def batches(dataset: ArrayDataset | tf.data.Dataset) -> Iterator[tuple[np.ndarray, ...]]:
    """The batches of a dataset :func:`make_dataset` made (either pipeline), as tuples of NumPy arrays."""
    if isinstance(dataset, ArrayDataset):
        yield from dataset.iterate()
        return
    for batch in dataset:
        yield tuple(np.asarray(part) for part in batch)


def mean_by_owner(values: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """The mean of ``values`` per owner index ``0..n-1`` (the crops of each image)."""
    counts = np.bincount(owners, minlength=n)
    if np.any(counts == 0):
        raise ValueError("an image gave no crop")
    return np.bincount(owners, weights=values, minlength=n) / counts
