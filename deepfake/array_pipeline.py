"""The input pipeline of the JAX and PyTorch backends: a ``keras.utils.PyDataset`` of NumPy batches, decoded,
cut and augmented with NumPy and Pillow (:mod:`deepfake.pixels`) by worker threads (Pillow, libjpeg and NumPy
release the GIL), so training needs no TensorFlow.

It gives what the ``tf.data`` pipeline (:mod:`deepfake.input_pipeline`) gives: the same decoded pixels, the
decoded-image cache (training images as uint8), every epoch's composition (a seeded shuffle; several datasets in
their shares, :func:`deepfake.data.epoch_counts`; a synthetic fake after each chosen real,
:func:`synthetic_count` of them), one random crop per image and epoch (``data.fit: crop``) or every crop of the
grid with the image each came from (evaluation), and the augmentations in the same order with the same parameters'
distributions. Random draws come from NumPy generators seeded by ``(seed, epoch, element)``, so a seeded run
repeats exactly whatever the number of workers; they are not TensorFlow's draws, so the two pipelines augment
differently for the same seed (each augmentation given the same parameters gives the same picture: tested).

This module also holds what both pipelines share about an epoch: the cache choice (:func:`cache_mode`) and the
number of synthetic fakes (:func:`synthetic_count`).
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

from deepfake import pixels
from deepfake.config import DataConfig
from deepfake.data import Split

AUTO_CACHE_BYTES = 1 << 30  # "auto" caches decoded images in memory below 1 GiB


def cache_mode(split: Split, cfg: DataConfig, bytes_per_value: int = 4) -> str:
    """``data.cache`` resolved for ``split``: ``auto`` is ``memory`` when the decoded pictures take under
    :data:`AUTO_CACHE_BYTES`, else ``none``."""
    if cfg.cache != "auto":
        return cfg.cache
    nbytes = len(split) * mean_pixels(split, cfg) * 3 * bytes_per_value
    return "memory" if nbytes < AUTO_CACHE_BYTES else "none"


def mean_pixels(split: Split, cfg: DataConfig, sample: int = 32) -> int:
    """The mean number of pixels a decoded image of ``split`` has: ``S * S`` (``data.fit: resize``), else estimated on
    up to ``sample`` files spread over the split, read from their headers (at least ``S * S`` each)."""
    floor = cfg.image_size * cfg.image_size
    if cfg.fit != "crop" or not len(split):
        return floor
    step = max(1, len(split) // sample)
    sizes = []
    for path in split.paths[::step][:sample]:
        height, width = _size(path, cfg.image_size)
        sizes.append(max(floor, height * width))
    return int(np.mean(sizes))


def _size(path: str, image_size: int) -> tuple[int, int]:
    """The decoded ``(H, W)`` of an image with ``data.fit: crop`` (``S x S`` when its header cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - an unreadable file is the decoder's to report; count it as S x S
        return image_size, image_size
    return pixels.decoded_shape(height, width, image_size)


def synthetic_count(labels: Sequence[int], fraction: float) -> int:
    """The synthetic fakes one epoch holds: ``floor(reals * fraction)`` (a real gets one when
    ``floor((j + 1) * fraction) > floor(j * fraction)`` for the j-th real of the epoch)."""
    reals = np.arange(int(np.sum(np.asarray(labels) == 0)), dtype=np.float64)
    return int(np.sum(np.floor((reals + 1) * fraction) - np.floor(reals * fraction)))


def workers_for(cfg: DataConfig) -> int:
    """Decoding threads: ``data.num_parallel_calls``, or one per core when it is -1 (auto)."""
    return (os.cpu_count() or 1) if cfg.num_parallel_calls < 0 else max(1, cfg.num_parallel_calls)


class ArrayDataset(keras.utils.PyDataset):
    """Batches ``(images, labels)`` (float32 ``(B, S, S, 3)`` in 0..255, float32 ``(B,)``) of a split; with
    ``owners`` (evaluation with ``data.fit: crop``) ``(crops, labels, image index)``. See the module's text and
    :func:`deepfake.input_pipeline.make_dataset`, which makes it on the JAX and PyTorch backends."""

    def __init__(self, split: Split, cfg: DataConfig, training: bool, seed: int = 42,
                 cache_dir: str | Path | None = None, owners: bool = False,
                 mix: Mapping[str, float] | None = None, keypoints: np.ndarray | None = None):
        workers = workers_for(cfg)
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
        self.split, self.cfg, self.training, self.seed, self.owners = split, cfg, training, seed, owners
        self.paths = list(split.paths)
        self.labels = np.asarray(split.labels, dtype=np.float32)
        self.synthetic = training and cfg.synthetic_fakes.kind != "none"
        self.keypoints = keypoints if self.synthetic else None
        self.crop = cfg.fit == "crop"
        self.mode = cache_mode(split, cfg, 1 if training else 4)
        self.small = training and self.mode != "none"  # training images cached as uint8
        if self.mode == "disk":
            key = hashlib.sha1("\n".join(self.paths).encode()
                               + (b"" if keypoints is None else np.asarray(keypoints).tobytes())).hexdigest()[:16]
            kind = ("_full" if self.crop else "") + ("_u8" if self.small else "")
            self.cache_folder: Path | None = Path(cache_dir or ".cache/images") / f"arrays_{cfg.image_size}{kind}_{key}"
            self.cache_folder.mkdir(parents=True, exist_ok=True)
        else:
            self.cache_folder = None
        self._cache: dict[int, np.ndarray] = {}
        self.mix = dict(mix) if training and mix and len(split.dataset_names()) > 1 else None
        self.epoch = 0
        self._plans: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ what an epoch holds

    def _groups(self) -> list[tuple[np.ndarray, int, int]]:
        """Several datasets: each (dataset, class) group's members, label and pictures per epoch."""
        from deepfake.data import epoch_counts

        counts = epoch_counts(self.split, self.mix)
        by_name = self.split.by_dataset()
        groups = []
        for (name, label), n in sorted(counts.items()):
            members = np.asarray([i for i in by_name[name] if int(self.split.labels[i]) == label], dtype=np.int64)
            if n > 0 and len(members):
                groups.append((members, int(label), int(n)))
        return groups

    def _order(self, epoch: int, rng: np.random.Generator) -> np.ndarray:
        """The source pictures of one epoch, in order: a permutation of the split (seeded, new every epoch), or with
        several datasets each group's next pictures of its endless seeded reshuffles, interleaved at random."""
        if not self.training:
            return np.arange(len(self.paths), dtype=np.int64)
        if self.mix is None:
            return rng.permutation(len(self.paths)).astype(np.int64)
        picks, choices = [], []
        for k, (members, _label, n) in enumerate(self._groups()):
            positions = np.arange(epoch * n, (epoch + 1) * n)
            cycles = positions // len(members)
            sequence = {c: np.random.default_rng([self.seed, 31 * (k + 1), int(c)]).permutation(members)
                        for c in np.unique(cycles)}
            picks.append(deque(sequence[c][p % len(members)] for c, p in zip(cycles, positions, strict=True)))
            choices += [k] * n
        return np.asarray([picks[k].popleft() for k in rng.permutation(np.asarray(choices, dtype=np.int64))],
                          dtype=np.int64)

    def plan(self, epoch: int | None = None) -> np.ndarray:
        """One epoch's elements, int64 rows ``(source index, synthetic fake 0/1, crop y, crop x, seed)``: crop
        ``-1`` outside evaluation with ``data.fit: crop``; the seed draws the element's crop, fake and
        augmentations."""
        epoch = self.epoch if epoch is None else epoch
        if epoch in self._plans:
            return self._plans[epoch]
        rng = np.random.default_rng([self.seed, epoch])
        rows = []
        reals = 0
        fraction = self.cfg.synthetic_fakes.fraction
        for idx in self._order(epoch, rng):
            if self.crop and not self.training:
                height, width = _size(self.paths[idx], self.cfg.image_size)
                for y, x in pixels.crop_grid_offsets(height, width, self.cfg.image_size, self.cfg.test_crops):
                    rows.append((idx, 0, y, x))
                continue
            rows.append((idx, 0, -1, -1))
            if self.synthetic and self.labels[idx] == 0:
                if np.floor((reals + 1) * fraction) > np.floor(reals * fraction):
                    rows.append((idx, 1, -1, -1))
                reals += 1
        seeds = rng.integers(0, np.iinfo(np.int64).max, size=len(rows), dtype=np.int64)
        plan = np.column_stack([np.asarray(rows, dtype=np.int64).reshape(-1, 4), seeds]) if rows else \
            np.zeros((0, 5), dtype=np.int64)
        self._plans = {epoch: plan}  # one epoch at a time
        return plan

    @property
    def num_batches(self) -> int:
        return -(-len(self.plan()) // self.cfg.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def on_epoch_end(self) -> None:
        if self.training:
            self.epoch += 1

    # ------------------------------------------------------------------ pictures

    def _decoded(self, idx: int) -> np.ndarray:
        """Source picture ``idx`` decoded (cached as the mode says; uint8 for training when cached)."""
        image = self._cache.get(idx)
        if image is not None:
            return image
        path = self.cache_folder / f"{idx}.npy" if self.cache_folder is not None else None
        if path is not None and path.exists():
            image = np.load(path)
        else:
            image = pixels.decode(Path(self.paths[idx]).read_bytes(), self.cfg.image_size, self.cfg.fit)
            if self.small:
                image = np.clip(np.round(image), 0, 255).astype(np.uint8)
            if path is not None:
                _save(path, image)
        if self.mode == "memory":
            self._cache[idx] = image
        return image

    def element(self, row: np.ndarray) -> np.ndarray:
        """One element of the plan -> its float32 ``(S, S, 3)`` picture."""
        idx, fake, y, x, seed = (int(v) for v in row)
        size = self.cfg.image_size
        image = self._decoded(idx)
        if not self.training:
            if y >= 0:
                image = image[y:y + size, x:x + size]
            return np.asarray(image, dtype=np.float32)
        rng = np.random.default_rng(seed & 0xFFFFFFFFFFFFFFFF)
        if self.crop:
            y, x = (int(rng.integers(0, side - size + 1)) for side in image.shape[:2])
            image = image[y:y + size, x:x + size]
        image = np.asarray(image, dtype=np.float32)
        if fake:
            from deepfake import synthetic

            points = (self.keypoints[idx] if self.keypoints is not None
                      else np.full((len(synthetic.KEYPOINT_NAMES), 2), -1.0, dtype=np.float32))
            image = synthetic.fake_from_seed(image, points, rng.integers(0, 2**62, size=2),
                                             self.cfg.synthetic_fakes.kind)
        return augment(image, rng, self.cfg)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        if index < 0 or index >= self.num_batches:
            raise IndexError(index)
        batch = self.cfg.batch_size
        rows = self.plan()[index * batch:(index + 1) * batch]
        images = np.stack([self.element(row) for row in rows])
        labels = np.where(rows[:, 1] == 1, 1.0, self.labels[rows[:, 0]]).astype(np.float32)
        return (images, labels, rows[:, 0].copy()) if self.owners else (images, labels)

    def iterate(self) -> Iterator[tuple[np.ndarray, ...]]:
        """Every batch of the current epoch in order, made ahead by the workers (a few at a time)."""
        ahead = max(2, 2 * self.workers)
        with ThreadPoolExecutor(self.workers) as pool:
            pending: deque = deque()
            for index in range(self.num_batches):
                pending.append(pool.submit(self.__getitem__, index))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def augment(image: np.ndarray, rng: np.random.Generator, cfg: DataConfig) -> np.ndarray:
    """The training augmentations in the ``tf.data`` pipeline's order (blur, JPEG re-compression, flip), each with
    its probability; the five draws are made whatever is switched on, so one element's stream never shifts."""
    aug = cfg.augment
    u_blur, u_sigma, u_jpeg, u_flip = rng.random(4)
    quality = int(rng.integers(aug.jpeg_quality_min, 101))
    if aug.blur_prob > 0 and u_blur < aug.blur_prob:
        radius = max(1, int(np.ceil(3 * aug.blur_sigma_max)))
        image = pixels.blur(image, max(u_sigma * aug.blur_sigma_max, 1e-3), radius)
    if aug.jpeg_prob > 0 and u_jpeg < aug.jpeg_prob:
        image = pixels.jpeg_recompress(image, quality)
    if aug.flip and u_flip < 0.5:
        image = pixels.flip(image)
    return np.ascontiguousarray(image, dtype=np.float32)


def _save(path: Path, array: np.ndarray) -> None:
    """Write a cached picture atomically (a temporary file of this thread, then a rename): a reader never sees half of
    one, and two workers writing the same picture do not collide."""
    import threading

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)
