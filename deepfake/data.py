"""Datasets: find the images, check them before training, and stream them with ``tf.data``.

Two layouts are accepted (class folder names from ``DataConfig.class_names``, index = label)::

    ROOT/train/{real,fake}/  ROOT/val/{real,fake}/  ROOT/test/{real,fake}/   (split)
    ROOT/{real,fake}/                                                       (unsplit)

An unsplit dataset is split stratified and seeded. A split dataset without ``val/`` gets a
stratified validation split carved from ``train/``; ``test/`` is required.

Every file with an image extension is checked with Pillow before training (header size
limits first, then a full decode); unreadable ones are skipped and reported, never fatal.
:func:`decode_image` is the one decoder used by training *and* inference.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from deepfake.config import AugmentConfig, DataConfig
from deepfake.errors import DeepfakeError

log = logging.getLogger(__name__)

# The one list of image file extensions: dataset scans, ``deepfake predict`` folders and messages use it.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Pillow formats accepted (JPEG includes the multi-picture JPEGs, MPO, written by many cameras). Pillow
# may only try these, so untrusted bytes never reach any other of its format parsers.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, BMP, GIF, WebP, TIFF"
SPLITS = ("train", "val", "test")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
MIN_SIDE = 2
AUTO_CACHE_BYTES = 1 << 30  # "auto" caches decoded images in memory below 1 GiB


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class Split:
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self, class_names: Sequence[str]) -> dict[str, int]:
        labels = np.asarray(self.labels, dtype=int)
        return {name: int((labels == i).sum()) for i, name in enumerate(class_names)}


@dataclass
class DatasetInfo:
    root: str
    layout: str  # "split" or "unsplit"
    class_names: list[str]
    splits: dict[str, Split]
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    leaks: list = field(default_factory=list)  # deepfake.leakage.Leak, filled by the leakage check
    audit: object | None = None  # deepfake.audit.AuditResult, filled by the dataset audit

    def summary(self) -> dict:
        counts = {name: split.counts(self.class_names) for name, split in self.splits.items()}
        imbalance = {}
        for name, c in counts.items():
            values = list(c.values())
            imbalance[name] = round(max(values) / min(values), 3) if min(values) > 0 else None
        return {
            "root": self.root,
            "layout": self.layout,
            "class_names": list(self.class_names),
            "counts": counts,
            "totals": {name: len(split) for name, split in self.splits.items()},
            "imbalance_ratio": imbalance,
            "class_weights": {self.class_names[k]: round(v, 4) for k, v in self.class_weights().items()},
            "n_skipped": len(self.skipped),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "n_duplicates_across_splits": len(self.leaks),
            "notes": list(self.notes),
        }

    def class_weights(self) -> dict[int, float]:
        """'Balanced' weights from the training split: n / (2 * n_class); none without one (evaluation)."""
        from sklearn.utils.class_weight import compute_class_weight

        if "train" not in self.splits:
            return {}
        labels = np.asarray(self.splits["train"].labels, dtype=int)
        classes = np.arange(len(self.class_names))
        weights = compute_class_weight("balanced", classes=classes, y=labels)
        return {int(c): float(w) for c, w in zip(classes, weights)}

    def report(self) -> str:
        width = max(len(n) for n in self.class_names)
        lines = [f"Dataset {self.root} ({self.layout} layout)"]
        header = f"  {'split':<6} " + " ".join(f"{n:>{max(width, 6)}}" for n in self.class_names) + "   total"
        lines.append(header)
        for name, split in self.splits.items():
            c = split.counts(self.class_names)
            lines.append(f"  {name:<6} " + " ".join(f"{c[n]:>{max(width, 6)}}" for n in self.class_names)
                         + f"   {len(split):>5}")
        ratio = self.summary()["imbalance_ratio"].get("train")
        if ratio and ratio > 1.5:
            weights = ", ".join(f"{self.class_names[k]}={v:.2f}" for k, v in self.class_weights().items())
            lines.append(f"  class imbalance in train: {ratio:.2f}:1, handled with class weights ({weights})")
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable file(s):")
            lines.extend(f"    {s.path}: {s.reason}" for s in self.skipped[:50])
            if len(self.skipped) > 50:
                lines.append(f"    ... and {len(self.skipped) - 50} more (see dataset/summary.json)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- checking


def check_bytes(raw: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why these encoded bytes cannot be used as an image, or ``None`` if they can.

    Dimensions are read from the header *before* decoding, so a decompression bomb is refused
    without allocating its pixels. Then the image is fully decoded to catch truncation.
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
                    return f"too large: {width}x{height} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
                if min(width, height) < MIN_SIDE:
                    return f"too small: {width}x{height} (need at least {MIN_SIDE} px per side)"
                img.load()  # CMYK and YCbCr JPEGs, palette, grayscale and alpha images are converted to RGB
    except UnidentifiedImageError:
        return f"not an image in a supported format ({FORMAT_NAMES})"
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return "truncated image" if "truncated" in text.lower() else f"cannot decode: {text}"
    return None


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


# --------------------------------------------------------------------------- scanning


def list_images(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (recursive, sorted) with an image extension, hidden files aside.

    Symlinks are kept as given (not replaced by their targets); broken symlinks and symlink loops
    are kept too, so that reading them fails and they are listed as skipped instead of vanishing.
    """
    return sorted(
        p for p in Path(folder).rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        and (p.is_file() or (p.is_symlink() and not p.is_dir()))
    )


def _layout_error(root: Path, class_names: Sequence[str]) -> DeepfakeError:
    a, b = class_names
    return DeepfakeError(
        f"{root} has neither train/ val/ test/ folders nor {a}/ and {b}/ folders; expected "
        f"DATA/{{train,val,test}}/{{{a},{b}}}/ or DATA/{{{a},{b}}}/ (class names via data.class_names)"
    )


def _collect(folder: Path, class_names: Sequence[str], where: str) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            raise DeepfakeError(
                f"{class_dir} is missing: every {where} needs one folder per class ({', '.join(class_names)})"
            )
        files = list_images(class_dir)
        if not files:
            raise DeepfakeError(
                f"{class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or fix data.class_names"
            )
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels


def _stratified_split(paths: list[str], labels: list[int], fraction: float, seed: int, what: str, root: Path):
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels, minlength=2)
    if fraction <= 0:
        return (paths, labels), ([], [])
    if counts.min() < 2 or round(len(paths) * fraction) < 2:
        raise DeepfakeError(
            f"{root}: too few images to split off a stratified {what} set ({dict(enumerate(counts.tolist()))} "
            "per class); add images or provide the split folders yourself"
        )
    a, b, la, lb = train_test_split(paths, labels, test_size=fraction, random_state=seed, stratify=labels)
    return (list(a), list(la)), (list(b), list(lb))


def _check_all(paths: list[Path], progress: bool) -> dict[str, str]:
    """Check every file (threads: Pillow releases the GIL while decoding)."""
    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(check_image, paths, chunksize=16)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc="checking images", unit="img", leave=False)
        for path, reason in zip(paths, results):
            if reason:
                bad[str(path)] = reason
    return bad


def scan_dataset(cfg: DataConfig, seed: int = 42, check_images: bool = True, progress: bool = False) -> DatasetInfo:
    """Find and check every image; split if needed. Raises :class:`DeepfakeError` on bad layouts."""
    root = _dataset_root(cfg)
    names = list(cfg.class_names)
    notes: list[str] = []
    if (root / "train").is_dir():
        layout = "split"
        raw: dict[str, tuple[list, list]] = {}
        for split in SPLITS:
            if (root / split).is_dir():
                raw[split] = _collect(root / split, names, f"split folder {root / split}")
        if "test" not in raw:
            raise DeepfakeError(f"{root / 'test'} is missing: a split dataset needs train/, test/ (and optionally val/)")
    elif all((root / n).is_dir() for n in names):
        layout = "unsplit"
        raw = {"all": _collect(root, names, f"dataset {root}")}
    elif any((root / s).is_dir() for s in SPLITS):
        raise DeepfakeError(
            f"{root / 'train'} is missing: a dataset for training needs train/ and test/ (and optionally val/); "
            "a dataset with only some of them can be evaluated (deepfake evaluate)"
        )
    else:
        raise _layout_error(root, names)

    raw, skipped = _check_collected(raw, check_images, progress)

    if layout == "unsplit":
        paths, labels = raw["all"]
        rest, test = _stratified_split(paths, labels, cfg.test_fraction, seed, "test", root)
        val_share = cfg.val_fraction / (1 - cfg.test_fraction)
        train, val = _stratified_split(*rest, val_share, seed, "validation", root)
        parts = {"train": train, "val": val, "test": test}
        notes.append(f"split stratified with seed {seed}: val {cfg.val_fraction:.0%}, test {cfg.test_fraction:.0%}")
    else:
        parts = dict(raw)
        if "val" not in parts:
            train, val = _stratified_split(*parts["train"], cfg.val_fraction, seed, "validation", root / "train")
            parts["train"], parts["val"] = train, val
            notes.append(f"no val/ folder: {cfg.val_fraction:.0%} of train/ held out for validation (seed {seed})")

    splits = {name: Split(list(parts[name][0]), [int(l) for l in parts[name][1]]) for name in SPLITS}
    _require_both_classes(splits, names, root, layout == "split")
    info = DatasetInfo(str(root), layout, names, splits, skipped, notes)
    if skipped:
        log.warning("skipped %d unreadable image(s); see the dataset report", len(skipped))
    return info


def scan_evaluation_dataset(cfg: DataConfig, split: str = "auto", seed: int = 42,
                            progress: bool = False) -> tuple[DatasetInfo, str]:
    """The images ``deepfake evaluate`` uses, and the name of the split they form.

    ``split="auto"`` evaluates a dataset that is only for evaluation whole: every image of an
    unsplit folder (``DATA/{real,fake}/``), every image of the split folders present when there is
    no ``train/`` (say only ``DATA/test/{real,fake}/``; named after the folder when there is one).
    A training dataset (``DATA/train/`` present) gives its ``test`` split. ``train``, ``val`` or
    ``test`` take that split exactly as training made it (an unsplit folder is split with ``seed``);
    ``all`` takes every image found.
    """
    if split not in ("auto", "all", *SPLITS):
        raise DeepfakeError(f"--split {split}: choose auto, all, train, val or test")
    root = _dataset_root(cfg)
    names = list(cfg.class_names)
    present = [s for s in SPLITS if (root / s).is_dir()]
    unsplit = all((root / n).is_dir() for n in names) and "train" not in present
    if unsplit:
        present = []
    elif not present:
        raise _layout_error(root, names)
    training_set = unsplit or "train" in present
    if split == "auto":
        split = "test" if "train" in present else (present[0] if len(present) == 1 else "all")
    if split != "all" and training_set:
        return scan_dataset(cfg, seed=seed, progress=progress), split
    if split == "all":
        folders = {s: root / s for s in present} if present else {"all": root}
    elif split in present:
        folders = {split: root / split}
    else:
        raise DeepfakeError(
            f"{root / split} is missing: {root} holds {', '.join(s + '/' for s in present)}; "
            f"pass --split {' or '.join(present)}, or --split all for every image"
        )
    raw = {key: _collect(folder, names, f"{'split folder' if key in SPLITS else 'dataset'} {folder}")
           for key, folder in folders.items()}
    raw, skipped = _check_collected(raw, True, progress)
    paths = [p for ps, _ in raw.values() for p in ps]
    labels = [int(l) for _, ls in raw.values() for l in ls]
    chosen = {split: Split(paths, labels)}
    layout = "unsplit" if unsplit else "split"
    _require_both_classes(chosen, names, root, split in present)
    where = ", ".join(f"{f}/" for f in folders) if present else " and ".join(f"{n}/" for n in names)
    notes = [f"evaluation only: every image of {where}"]
    info = DatasetInfo(str(root), layout, names, chosen, skipped, notes)
    if skipped:
        log.warning("skipped %d unreadable image(s); see the dataset report", len(skipped))
    return info, split


def _dataset_root(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise DeepfakeError("--data is required: the dataset folder (DATA/{train,val,test}/{real,fake}/ or DATA/{real,fake}/)")
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise DeepfakeError(f"data folder {root} does not exist; pass --data with an existing folder")
    if not root.is_dir():
        raise DeepfakeError(f"data path {root} is not a folder; pass --data with the dataset folder")
    return root


def _check_collected(raw: dict[str, tuple[list, list]], check_images: bool, progress: bool):
    """Drop unreadable files from every collected group: ``(raw with str paths, skipped files)``."""
    skipped: list[SkippedFile] = []
    if check_images:
        all_paths = [p for paths, _ in raw.values() for p in paths]
        bad = _check_all(all_paths, progress)
        skipped = [SkippedFile(p, r) for p, r in sorted(bad.items())]
        for key, (paths, labels) in raw.items():
            kept = [(str(p), l) for p, l in zip(paths, labels) if str(p) not in bad]
            raw[key] = ([p for p, _ in kept], [l for _, l in kept])
    return {k: ([str(p) for p in v[0]], list(v[1])) for k, v in raw.items()}, skipped


def _require_both_classes(splits: dict[str, Split], names: Sequence[str], root: Path, in_folders: bool) -> None:
    """Every split needs both classes; ``in_folders``: each split is the folder ``root/<split>``."""
    for name, split in splits.items():
        counts = split.counts(names)
        missing = [n for n, c in counts.items() if c == 0]
        if missing:
            where = root / name if in_folders else root
            raise DeepfakeError(
                f"{where}: the {name} split has no readable '{missing[0]}' images (only one class); "
                f"every split needs both {names[0]}/ and {names[1]}/ images"
            )


# --------------------------------------------------------------------------- decoding


def decode_image(contents, image_size: int):
    """Encoded bytes (JPEG/PNG/BMP/GIF by TensorFlow, WebP/TIFF by Pillow) -> float32 ``(S, S, 3)`` RGB in 0..255.

    Grayscale, palette and CMYK images become RGB, alpha is dropped, a GIF, WebP or TIFF gives
    its first frame.
    Large JPEGs are downscaled while decoding (libjpeg's DCT scaling by 1/2, 1/4 or 1/8, never
    below the target size), which is both faster and an antialiased downscale; what remains
    (less than 2x) is a bilinear resize. Used by training and inference alike, so both see
    identical pixels.
    """
    import tensorflow as tf

    contents = tf.convert_to_tensor(contents, dtype=tf.string)
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 2), b"\xff\xd8")

    def jpeg():
        shape = tf.image.extract_jpeg_shape(contents)
        short = tf.minimum(shape[0], shape[1])
        branch = tf.reduce_sum(tf.cast(short >= image_size * tf.constant([2, 4, 8]), tf.int32))
        decoders = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in (1, 2, 4, 8)]
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
    size = tf.shape(img)[:2]
    big = tf.reduce_max(size) > 2 * image_size  # only non-JPEGs get here: antialias their large downscales
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


def decode_with_pillow(contents: bytes) -> np.ndarray:
    """Encoded bytes of a format TensorFlow cannot read (WebP, TIFF) -> uint8 ``(H, W, 3)`` RGB, first frame."""
    from PIL import Image

    raw = contents.item() if isinstance(contents, np.ndarray) else bytes(contents)  # tf.numpy_function passes a numpy scalar
    with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as img:
        if img.mode.startswith("I;16"):  # 16-bit grayscale: keep the high byte
            return np.repeat((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)[..., None], 3, axis=-1)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path, image_size: int) -> np.ndarray:
    return np.asarray(decode_image(Path(path).read_bytes(), image_size))


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


def augment_image(image, seed, cfg: AugmentConfig):
    """Apply every augmentation in :data:`AUGMENTATIONS` with its own stateless seed."""
    import tensorflow as tf

    for i, fn in enumerate(AUGMENTATIONS):
        image = fn(image, tf.stack([seed[0], seed[1] + 1000 * (i + 1)]), cfg)
    return image


# --------------------------------------------------------------------------- pipelines


def _cache_mode(split: Split, cfg: DataConfig) -> str:
    if cfg.cache != "auto":
        return cfg.cache
    nbytes = len(split) * cfg.image_size * cfg.image_size * 3 * 4
    return "memory" if nbytes < AUTO_CACHE_BYTES else "none"


def make_dataset(split: Split, cfg: DataConfig, training: bool, seed: int = 42, cache_dir: str | Path | None = None):
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
