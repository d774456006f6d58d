"""Datasets: find the images and check them before training.

Two layouts are accepted (class folder names from ``DataConfig.class_names``, index = label)::

    ROOT/train/{real,fake}/  ROOT/val/{real,fake}/  ROOT/test/{real,fake}/   (split)
    ROOT/{real,fake}/                                                       (unsplit)

An unsplit dataset is split stratified and seeded. A split dataset without ``val/`` gets a
stratified validation split carved from ``train/``; ``test/`` is required.

Every file with an image extension is checked with Pillow before training
(:func:`deepfake.images.check_image`: header size limits first, then a full decode); unreadable
ones are skipped and reported, never fatal. :mod:`deepfake.input_pipeline` streams the splits.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepfake.config import DataConfig
from deepfake.errors import DeepfakeError
from deepfake.images import IMAGE_EXTENSIONS
from deepfake.media import check_file, expand_files, is_video_path
from deepfake.video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS  # what dataset scans and ``deepfake predict`` folders list


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class Split:
    """The pictures of a split, in order: files the input pipeline reads, their labels and, for pictures made from
    a video or by face crops (:mod:`deepfake.media`), the source file each came from (its group)."""

    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # empty: every picture is its own source
    datasets: list[str] = field(default_factory=list)  # the dataset of every picture (--data A --data B); empty: one

    def __len__(self) -> int:
        return len(self.paths)

    def group_ids(self) -> list[str]:
        """The source file of every picture (a video's frames share one)."""
        return list(self.groups) if self.groups else list(self.paths)

    def dataset_names(self) -> list[str]:
        """The datasets this split's pictures come from, in order of first appearance (none for one dataset)."""
        return list(dict.fromkeys(self.datasets))

    def by_dataset(self) -> dict[str, list[int]]:
        """The positions of each dataset's pictures (``{}`` for a split of one dataset)."""
        out: dict[str, list[int]] = {}
        for i, name in enumerate(self.datasets):
            out.setdefault(name, []).append(i)
        return out

    def subset(self, keep: Sequence[int]) -> Split:
        groups = self.group_ids()
        return Split([self.paths[i] for i in keep], [self.labels[i] for i in keep],
                     [groups[i] for i in keep] if self.groups else [],
                     [self.datasets[i] for i in keep] if self.datasets else [])

    def sources(self) -> tuple[list[str], list[int]]:
        """The distinct source files, in order, and their labels."""
        seen: dict[str, int] = {}
        for group, label in zip(self.group_ids(), self.labels, strict=True):
            seen.setdefault(group, label)
        return list(seen), list(seen.values())

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
    synthetic_fraction: float = 0.0  # data.synthetic_fakes: each real training image also gives a fake this often
    # Several datasets trained on at once (deepfake/mixing.py): each one's own scan (with its audit and duplicates),
    # by name, and its share of every training epoch (data.mix); both empty for one dataset.
    parts: dict[str, DatasetInfo] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)

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

    def class_weights(self, synthetic_fraction: float | None = None) -> dict[int, float]:
        """'Balanced' weights from the training split: n / (2 * n_class), the synthetic fakes an epoch is
        expected to add counted (:func:`balanced_class_weights`; ``synthetic_fraction`` overrides the scan's, 0
        without synthetic fakes); none without a training split (evaluation)."""
        if "train" not in self.splits:
            return {}
        fraction = self.synthetic_fraction if synthetic_fraction is None else synthetic_fraction
        return balanced_class_weights(self.epoch_labels(), len(self.class_names), fraction)

    def epoch_labels(self) -> list[int]:
        """The labels of one training epoch: the training split's, or with several datasets those of the epoch
        their shares make (:func:`epoch_counts`)."""
        train = self.splits["train"]
        if not self.shares or len(train.dataset_names()) < 2:
            return list(train.labels)
        counts = epoch_counts(train, self.shares)
        return [label for (_, label), n in sorted(counts.items()) for _ in range(n)]

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
            lines.append(f"  skipped {len(self.skipped)} unreadable file(s) (or with no face or frame in them):")
            lines.extend(f"    {s.path}: {s.reason}" for s in self.skipped[:50])
            if len(self.skipped) > 50:
                lines.append(f"    ... and {len(self.skipped) - 50} more (see dataset/summary.json)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- scanning


def list_images(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (recursive, sorted) with an image or video extension, hidden files aside.

    Symlinks are kept as given (not replaced by their targets); broken symlinks and symlink loops
    are kept too, so that reading them fails and they are listed as skipped instead of vanishing.
    """
    return sorted(
        p for p in Path(folder).rglob("*")
        if p.suffix.lower() in MEDIA_EXTENSIONS and not p.name.startswith(".")
        and (p.is_file() or (p.is_symlink() and not p.is_dir()))
    )


def find_image_files(paths: Iterable[str]) -> list[Path]:
    """Files, folders (recursive, image and video extensions only) and globs -> image and video files, sorted.

    A file reached twice (the same path given twice, or a symlink and its target) is listed once,
    under the name of the real file when that was given, otherwise as first given; symlinks are
    never replaced by their targets. Broken symlinks and symlink loops are listed, so that the
    caller reports them as unreadable instead of leaving them out.
    """
    def listable(f: Path) -> bool:
        return f.is_file() or (f.is_symlink() and not f.is_dir())

    found: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found.extend(list_images(p))
        elif listable(p):
            found.append(p)
        else:
            matches = sorted(glob.glob(str(p), recursive=True))
            if not matches:
                raise DeepfakeError(f"{raw}: no such file, folder or matching glob")
            found.extend(Path(m) for m in matches if listable(Path(m)))
    groups: dict[str, list[Path]] = {}
    for f in found:
        groups.setdefault(os.path.realpath(f), []).append(f)  # realpath never raises, even for loops
    chosen = {key: next((f for f in group if not f.is_symlink()), group[0]) for key, group in groups.items()}
    unique, seen = [], set()
    for f in found:
        key = os.path.realpath(f)
        if f == chosen[key] and key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _layout_error(root: Path, class_names: Sequence[str]) -> DeepfakeError:
    a, b = class_names
    return DeepfakeError(
        f"{root} has neither train/ val/ test/ folders nor {a}/ and {b}/ folders; expected "
        f"DATA/{{train,val,test}}/{{{a},{b}}}/ or DATA/{{{a},{b}}}/ (class names via data.class_names)"
    )


def balanced_class_weights(labels: Sequence[int], n_classes: int = 2, synthetic_fraction: float = 0.0
                           ) -> dict[int, float]:
    """'Balanced' class weights n / (n_classes * n_class) (scikit-learn's), where each real (label 0) image also
    gives ``synthetic_fraction`` of a synthetic fake (label 1) per epoch (``data.synthetic_fakes``). With a class
    that has no samples there is nothing to balance: every weight is 1."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    if n_classes >= 2:
        counts[1] += counts[0] * synthetic_fraction
    if (counts == 0).any():
        return dict.fromkeys(range(n_classes), 1.0)
    total = counts.sum()
    return {int(c): float(total / (n_classes * n)) for c, n in enumerate(counts)}


def epoch_counts(split: Split, shares: dict[str, float]) -> dict[tuple[str, int], int]:
    """How many pictures of each (dataset, class) one training epoch holds when several datasets are mixed: the
    epoch has ``len(split)`` pictures, each dataset ``share`` of them (shares normalised), split between its classes
    as in the dataset. Rounded so that the total is exact (largest remainders)."""
    groups = split.by_dataset()
    total_share = sum(shares.get(name, 0.0) for name in groups)
    if total_share <= 0:
        raise DeepfakeError("data.mix: every dataset has a share of 0; give at least one a positive share")
    exact: dict[tuple[str, int], float] = {}
    for name, positions in groups.items():
        labels = np.asarray([split.labels[i] for i in positions])
        for label in sorted(set(labels.tolist())):
            exact[(name, int(label))] = (len(split) * shares.get(name, 0.0) / total_share
                                         * float(np.mean(labels == label)))
    counts = {key: int(np.floor(v)) for key, v in exact.items()}
    short = len(split) - sum(counts.values())
    for key in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[:short]:
        counts[key] += 1
    return counts


def _collect(folder: Path, class_names: Sequence[str], where: str,
             optional: Sequence[int] = ()) -> tuple[list[Path], list[int]]:
    """The files of each class folder and their labels; the classes in ``optional`` may be missing or empty."""
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if label in optional and not (class_dir.is_dir() and list_images(class_dir)):
            continue
        if not class_dir.is_dir():
            raise DeepfakeError(
                f"{class_dir} is missing: every {where} needs one folder per class ({', '.join(class_names)})"
            )
        files = list_images(class_dir)
        if not files:
            raise DeepfakeError(
                f"{class_dir} has no images or videos ({', '.join(MEDIA_EXTENSIONS)}); add some or fix "
                "data.class_names"
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
        results = pool.map(check_file, paths, chunksize=16)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc="checking files", unit="file", leave=False)
        for path, reason in zip(paths, results, strict=True):
            if reason:
                bad[str(path)] = reason
    return bad


def scan_dataset(cfg: DataConfig, seed: int = 42, check_images: bool = True, progress: bool = False) -> DatasetInfo:
    """Find and check every image; split if needed. Raises :class:`DeepfakeError` on bad layouts."""
    root = _dataset_root(cfg)
    names = list(cfg.class_names)
    notes: list[str] = []
    synthetic = cfg.synthetic_fakes.kind != "none"  # train/ may hold real images only
    if (root / "train").is_dir():
        layout = "split"
        raw: dict[str, tuple[list, list]] = {}
        for split in SPLITS:
            if (root / split).is_dir():
                raw[split] = _collect(root / split, names, f"split folder {root / split}",
                                      optional=(1,) if synthetic and split == "train" else ())
        if "test" not in raw:
            raise DeepfakeError(f"{root / 'test'} is missing: a split dataset needs train/, test/ "
                                "(and optionally val/)")
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
            if 1 not in parts["train"][1]:
                raise DeepfakeError(f"{root / 'val'} is missing: a train/ of real images only (data.synthetic_fakes) "
                                    f"needs a val/ folder with both {names[0]}/ and {names[1]}/ images")
            train, val = _stratified_split(*parts["train"], cfg.val_fraction, seed, "validation", root / "train")
            parts["train"], parts["val"] = train, val
            notes.append(f"no val/ folder: {cfg.val_fraction:.0%} of train/ held out for validation (seed {seed})")

    splits = {name: Split(list(parts[name][0]), [int(y) for y in parts[name][1]]) for name in SPLITS}
    splits = _pictures(splits, cfg, skipped, notes, progress)  # after the split: a video's frames stay together
    _require_both_classes(splits, names, root, layout == "split", real_only_train=synthetic)
    info = DatasetInfo(str(root), layout, names, splits, skipped, notes,
                       synthetic_fraction=cfg.synthetic_fakes.fraction if synthetic else 0.0)
    if skipped:
        log.warning("skipped %d file(s) that gave no picture; see the dataset report", len(skipped))
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
    labels = [int(y) for _, ls in raw.values() for y in ls]
    notes: list[str] = []
    chosen = _pictures({split: Split(paths, labels)}, cfg, skipped, notes, progress)
    layout = "unsplit" if unsplit else "split"
    _require_both_classes(chosen, names, root, split in present)
    where = ", ".join(f"{f}/" for f in folders) if present else " and ".join(f"{n}/" for n in names)
    notes.insert(0, f"evaluation only: every image of {where}")
    info = DatasetInfo(str(root), layout, names, chosen, skipped, notes)
    if skipped:
        log.warning("skipped %d file(s) that gave no picture; see the dataset report", len(skipped))
    return info, split


def _pictures(splits: dict[str, Split], cfg: DataConfig, skipped: list[SkippedFile], notes: list[str],
              progress: bool) -> dict[str, Split]:
    """Videos -> their sampled frames and, with face crops on, every image and frame -> its faces
    (:func:`deepfake.media.expand_files`); sources that give no picture join ``skipped``."""
    if not cfg.faces.enabled and not any(is_video_path(p) for split in splits.values() for p in split.paths):
        return splits
    out: dict[str, Split] = {}
    for name, split in splits.items():
        expanded = expand_files(split.paths, split.labels, cfg, progress)
        out[name] = Split(expanded.paths, expanded.labels, expanded.groups)
        skipped.extend(SkippedFile(p, why) for p, why in expanded.skipped)
        notes.extend(f"{name}: {n}" for n in expanded.notes)
    return out


def _dataset_root(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise DeepfakeError("--data is required: the dataset folder (DATA/{train,val,test}/{real,fake}/ or "
                            "DATA/{real,fake}/)")
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
            kept = [(str(p), y) for p, y in zip(paths, labels, strict=True) if str(p) not in bad]
            raw[key] = ([p for p, _ in kept], [y for _, y in kept])
    return {k: ([str(p) for p in v[0]], list(v[1])) for k, v in raw.items()}, skipped


def _require_both_classes(splits: dict[str, Split], names: Sequence[str], root: Path, in_folders: bool,
                          real_only_train: bool = False) -> None:
    """Every split needs both classes; ``in_folders``: each split is the folder ``root/<split>``.
    ``real_only_train`` (``data.synthetic_fakes`` on): the train split may lack fakes, but needs real images."""
    for name, split in splits.items():
        counts = split.counts(names)
        missing = [n for n, c in counts.items() if c == 0]
        if real_only_train and name == "train" and missing == [names[1]]:
            continue
        if missing:
            where = root / name if in_folders else root
            raise DeepfakeError(
                f"{where}: the {name} split has no readable '{missing[0]}' images (only one class); "
                f"every split needs both {names[0]}/ and {names[1]}/ images"
            )
