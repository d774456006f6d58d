"""Dataset audit: properties that should not tell real from fake, checked before training.

If one class is all JPEG and the other all PNG (or one is 1024x1024 and the other any size, or
one carries EXIF and the other never does), a detector can score well by learning that instead
of manipulation traces, and fail on any data where the property is balanced. For each property
a one-feature ROC-AUC says how well it alone separates the classes (``max(auc, 1 - auc)``, so
direction does not matter; 0.5 = no signal); at ``threshold`` or above it is a *shortcut* and a
warning names it.

Only image headers are read (``PIL.Image.open`` without ``load()``): format, size, JPEG
quantisation tables and EXIF are all in the header. Unreadable files are left out (the dataset
scanner reports them). The JPEG quality is the libjpeg quality whose scaled standard luminance
table is nearest to the file's own table (exact for files written by libjpeg/Pillow).

The *content check* (:func:`content_separation`) asks the same question of the pictures' content: a sample
of each class is blurred and reduced to 32x32 pixels (which destroys manipulation traces and keeps layout,
colour and subject), pooled features of a pretrained EfficientNet-Lite0 are computed from them, and a
cross-validated logistic regression gives an out-of-fold ROC-AUC. When it reaches ``threshold``, the classes
show different things (web photos against generated art, say) and a detector can score by telling them apart.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from deepfake import backbones as B
from deepfake.data import DatasetInfo

DEFAULT_THRESHOLD = 0.8

CONTENT_SIDE = 32  # the content check's pictures are blurred and reduced to this side: traces gone, content kept
CONTENT_INPUT = 128  # ... then enlarged again for the feature extractor (as informative as 224 px here, 5x faster)
CONTENT_MIN_PER_CLASS = 20  # fewer pictures (or groups) per class: the check is skipped, its AUC would be noise
CONTENT_FOLDS = 5

# libjpeg's standard luminance quantisation table (ITU-T T.81 Annex K), natural (row-major) order,
# which is the order Pillow exposes in ``img.quantization``.
STD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
])


def _libjpeg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg writes at ``quality`` (jpeg_quality_scaling, baseline)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((STD_LUMINANCE * scale + 50) // 100, 1, 255)


_QUALITY_TABLES = np.log(np.stack([_libjpeg_table(q) for q in range(1, 101)]).astype(float))  # (100, 64)


def estimate_jpeg_quality(quantization: dict[int, Sequence[int]] | None) -> float:
    """Quality 1-100 from Pillow's ``img.quantization`` (NaN when there is no usable luminance table).

    The nearest libjpeg-scaled standard table by mean absolute log ratio: exact for libjpeg and
    Pillow files, an approximate equivalent quality for custom tables (cameras, editors).
    """
    table = (quantization or {}).get(0)
    if table is None or len(table) != 64:
        return math.nan
    err = np.abs(_QUALITY_TABLES - np.log(np.maximum(np.asarray(table, dtype=float), 1))).mean(axis=1)
    return float(np.argmin(err) + 1)


def read_properties(path: str) -> dict | None:
    """Header properties of one file, or ``None`` if it cannot be opened."""
    from PIL import Image

    try:
        nbytes = os.path.getsize(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                fmt = img.format or "unknown"
                width, height = img.size
                quality = estimate_jpeg_quality(getattr(img, "quantization", None)) if fmt == "JPEG" else math.nan
                exif = bool(img.info.get("exif"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return {"format": fmt, "width": width, "height": height, "pixels": width * height,
            "aspect_ratio": width / height if height else math.nan, "file_size": nbytes,
            "jpeg_quality": quality, "exif": exif}


def separation_auc(values: Sequence[Any], labels: Sequence[int], categorical: bool = False) -> float:
    """How well one property alone separates label 0 from 1: ``max(auc, 1 - auc)``.

    A categorical property is encoded by each category's share of label 1 (the best ordering of
    the categories); NaN values of a numeric property are left out. A constant gives 0.5, a
    property that is not defined for both classes NaN.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    if categorical:
        s = pd.Series(list(values), dtype=object).astype(str)
        x = s.map(pd.Series(y, index=s.index).groupby(s).mean()).to_numpy(dtype=float)
    else:
        x = np.asarray(values, dtype=float)
        keep = ~np.isnan(x)
        x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        return math.nan
    auc = float(roc_auc_score(y, x))
    return max(auc, 1.0 - auc)


# --------------------------------------------------------------------------- summaries


def _shares(values: pd.Series, top: int = 3) -> str:
    shares = values.astype(str).value_counts(normalize=True)
    text = ", ".join(f"{share:.0%} {name}" for name, share in shares.head(top).items())
    return text + (", ..." if len(shares) > top else "")


def _median_iqr(values: pd.Series, fmt) -> str:
    v = values.dropna()
    if v.empty:
        return "n/a"
    lo, med, hi = v.quantile([0.25, 0.5, 0.75])
    return f"median {fmt(med)}" if lo == hi else f"median {fmt(med)}, IQR {fmt(lo)}-{fmt(hi)}"


def _bytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB" if n >= 1e3 else f"{n:.0f} B"


def _pixels(frame: pd.DataFrame) -> str:
    sizes = frame["width"].astype(str) + "x" + frame["height"].astype(str)
    common = sizes.value_counts(normalize=True)
    count = _median_iqr(frame["pixels"], lambda p: f"{p / 1e6:.2f} MP" if p >= 1e5 else f"{p:,.0f} px")
    return f"{count}; {common.iloc[0]:.0%} {common.index[0]}"


def _quality(frame: pd.DataFrame) -> str:
    q = frame["jpeg_quality"].dropna()
    return "no JPEG" if q.empty else f"{_median_iqr(q, lambda v: f'{v:.0f}')} ({len(q)} JPEG)"


# (column, phrase used in warnings, categorical, summary of one class's rows)
PROPERTIES = [
    ("format", "file format", True, lambda f: _shares(f["format"])),
    ("pixels", "image size (pixel count)", False, _pixels),
    ("aspect_ratio", "aspect ratio (width / height)", False,
     lambda f: _median_iqr(f["aspect_ratio"], lambda v: f"{v:.2f}")),
    ("file_size", "file size", False, lambda f: _median_iqr(f["file_size"], _bytes)),
    ("jpeg_quality", "JPEG quality", False, _quality),
    ("exif", "EXIF presence", False, lambda f: f"{f['exif'].mean():.0%} with EXIF"),
]
PHRASES = {name: phrase for name, phrase, _, _ in PROPERTIES}


@dataclass
class AuditResult:
    table: pd.DataFrame  # one row per property: property, roc_auc, shortcut, real, fake
    files: pd.DataFrame  # one row per readable file: path, split, label and every property
    threshold: float = DEFAULT_THRESHOLD
    class_names: list[str] = field(default_factory=lambda: ["real", "fake"])
    unreadable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. why the content check was skipped

    @property
    def shortcuts(self) -> list[str]:
        return list(self.table.loc[self.table["shortcut"], "property"])

    def warnings(self) -> list[str]:
        real, fake = self.class_names
        return [
            content_warning(row.roc_auc) if row.property == "content" else
            f"WARNING: shortcut: {PHRASES.get(row.property, row.property)} alone separates {real} from {fake} "
            f"(ROC-AUC {row.roc_auc:.2f}: {real} {row.real}, {fake} {row.fake}); "
            "the detector may learn it instead of manipulation traces"
            for row in self.table.itertuples() if row.shortcut
        ]


def content_warning(auc: float) -> str:
    return (f"WARNING: shortcut: content alone separates the classes (ROC-AUC {auc:.2f} on blurred, downscaled "
            "images): the detector may learn content rather than manipulation traces; give both classes the "
            "same kind of subjects and scenes (e.g. fakes made from the reals), and judge the detector on data "
            "whose content is balanced")


def audit_files(paths: Sequence[str], labels: Sequence[int], splits: Sequence[str] | None = None,
                threshold: float = DEFAULT_THRESHOLD, class_names: Sequence[str] = ("real", "fake"),
                progress: bool = False) -> AuditResult:
    """Audit files with labels 0 (real) and 1 (fake); see the module docstring."""
    paths, labels = [str(p) for p in paths], [int(y) for y in labels]
    splits = list(splits) if splits is not None else [""] * len(paths)
    with ThreadPoolExecutor(max_workers=8) as pool:  # header reads are I/O-bound
        props = pool.map(read_properties, paths, chunksize=32)
        if progress:
            from tqdm import tqdm

            props = tqdm(props, total=len(paths), desc="auditing images", unit="img", leave=False)
        props = list(props)
    rows = [{"path": p, "split": s, "label": y, **d}
            for p, s, y, d in zip(paths, splits, labels, props, strict=True) if d]
    columns = ["path", "split", "label", "format", "width", "height", *[n for n, *_ in PROPERTIES[1:]]]
    files = pd.DataFrame(rows, columns=columns)
    table = []
    for name, _, categorical, summary in PROPERTIES:
        auc = separation_auc(files[name], files["label"], categorical) if len(files) else math.nan
        by_class = [files[files["label"] == k] for k in (0, 1)]
        table.append({"property": name, "roc_auc": auc, "shortcut": bool(auc >= threshold),
                      "real": summary(by_class[0]) if len(by_class[0]) else "n/a",
                      "fake": summary(by_class[1]) if len(by_class[1]) else "n/a"})
    unreadable = [p for p, d in zip(paths, props, strict=True) if d is None]
    return AuditResult(pd.DataFrame(table), files, threshold, list(class_names), unreadable)


def audit_dataset(info: DatasetInfo, threshold: float = DEFAULT_THRESHOLD, progress: bool = False,
                  content_check: bool = False, content_images: int = 300, seed: int = 0) -> AuditResult:
    """Audit every split of a scanned dataset together: its image files as found (not the face crops or frames made
    of them; videos are not audited). With ``content_check`` also the content check (a ``content`` row, or a note
    saying why it was skipped) on up to ``content_images`` pictures per class - the pictures the detector is trained
    on (face crops, video frames), in folds that keep a video's frames together."""
    from deepfake.media import is_video_path

    items = [(name, p, y) for name, split in info.splits.items()
             for p, y in zip(*split.sources(), strict=True) if not is_video_path(p)]
    result = audit_files([p for _, p, _ in items], [y for *_, y in items], [s for s, *_ in items],
                         threshold=threshold, class_names=info.class_names, progress=progress)
    if content_check:
        grouped = any(split.groups for split in info.splits.values())
        pics = [(p, y, g) for split in info.splits.values()
                for p, y, g in zip(split.paths, split.labels, split.group_ids(), strict=True) if not is_video_path(p)]
        auc, counts, note = content_separation([p for p, *_ in pics], [y for _, y, _ in pics],
                                               [g for *_, g in pics] if grouped else None, content_images, seed)
        summary = [f"{n} images, blurred to {CONTENT_SIDE} px" if not math.isnan(auc) else "skipped" for n in counts]
        row = {"property": "content", "roc_auc": auc, "shortcut": bool(auc >= threshold),
               "real": summary[0], "fake": summary[1]}
        result.table = pd.concat([result.table, pd.DataFrame([row])], ignore_index=True)
        if note:
            result.notes.append(note)
    return result


def _content_pixels(path: str) -> np.ndarray | None:
    """``(CONTENT_SIDE, CONTENT_SIDE, 3)`` uint8: the picture blurred (Gaussian, radius 1/64 of its longer side) and
    reduced by area averaging, so only content is left (the whole picture, squeezed to a square); None if
    unreadable."""
    from PIL import Image, ImageFilter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img = img.convert("RGB")
                img = img.filter(ImageFilter.GaussianBlur(max(img.size) / 64))
                return np.asarray(img.resize((CONTENT_SIDE, CONTENT_SIDE), Image.Resampling.BOX))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


_CONTENT_EXTRACTOR: list = []  # the built feature extractor, reused by later audits in the process


def _content_extractor():
    """32 px pixels (0..255) -> pooled features of ImageNet-pretrained EfficientNet-Lite0, in float32; raises
    :class:`deepfake.backbones.WeightsUnavailable` when the weights cannot be had."""
    if not _CONTENT_EXTRACTOR:
        import keras


        spec = B.get(B.PROBE)
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            backbone, _ = spec.impl().load_imagenet(spec, (CONTENT_INPUT, CONTENT_INPUT, 3), "avg")
            inputs = keras.Input((CONTENT_SIDE, CONTENT_SIDE, 3))
            x = keras.layers.Resizing(CONTENT_INPUT, CONTENT_INPUT, interpolation="bilinear")(inputs)
            x = (x - np.asarray(spec.mean, "float32")) / np.asarray(spec.std, "float32")
            _CONTENT_EXTRACTOR.append(keras.Model(inputs, backbone(x, training=False)))
        finally:
            keras.mixed_precision.set_global_policy(previous)
    return _CONTENT_EXTRACTOR[0]


def content_separation(paths: Sequence[str], labels: Sequence[int], groups: Sequence[str] | None = None,
                       max_per_class: int = 300, seed: int = 0) -> tuple[float, tuple[int, int], str]:
    """How well content alone separates label 0 from 1: ``(ROC-AUC, pictures used per class, note)``.

    A seeded sample of up to ``max_per_class`` pictures per class, blurred and reduced to 32 px
    (:func:`_content_pixels`), pooled features of ImageNet EfficientNet-Lite0, then out-of-fold probabilities of a
    standardised logistic regression in stratified 5-fold cross-validation - grouped by ``groups`` (a video's
    frames) when given. The AUC is not folded to ``max(auc, 1 - auc)``: out of fold, below 0.5 is noise. NaN with a
    note saying why when it is skipped: fewer than 20 pictures (or groups) in a class, or no pretrained weights.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler


    y_all = np.asarray(labels, dtype=int)
    g_all = np.asarray(groups if groups is not None else paths, dtype=object)
    rng = np.random.default_rng(seed)
    pick = [rng.permutation(np.flatnonzero(y_all == k))[:max_per_class] for k in (0, 1)]
    skipped = "content check skipped: "
    unit = "sources" if groups is not None else "images"

    def too_few(idx: np.ndarray, y: np.ndarray) -> str:
        n = [len(np.unique(g_all[idx[y == k]])) for k in (0, 1)]
        return (f"{skipped}fewer than {CONTENT_MIN_PER_CLASS} readable {unit} per class ({n[0]} / {n[1]})"
                if min(n) < CONTENT_MIN_PER_CLASS else "")

    idx = np.concatenate(pick)
    if note := too_few(idx, y_all[idx]):  # before reading any pixels: tiny datasets cost nothing
        return math.nan, (len(pick[0]), len(pick[1])), note
    with ThreadPoolExecutor(max_workers=4) as pool:
        pixels = list(pool.map(_content_pixels, [paths[i] for i in idx]))
    keep = [j for j, px in enumerate(pixels) if px is not None]
    idx = idx[keep]
    y, g = y_all[idx], g_all[idx]
    counts = (int((y == 0).sum()), int((y == 1).sum()))
    if note := too_few(idx, y):
        return math.nan, counts, note
    x = np.stack([pixels[j] for j in keep]).astype("float32")
    try:
        extractor = _content_extractor()
    except B.WeightsUnavailable as exc:
        return (math.nan, counts, f"{skipped}no pretrained {B.PROBE} weights ({exc}); random features "
                "would mean nothing")
    features = np.asarray(extractor.predict(x, batch_size=32, verbose=0), dtype="float64")
    if groups is not None:
        cv = StratifiedGroupKFold(CONTENT_FOLDS, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(CONTENT_FOLDS, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000))
    proba = cross_val_predict(clf, features, y, cv=cv, groups=g if groups is not None else None,
                              method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba)), counts, ""


def report(result: AuditResult) -> str:
    """An aligned table of the properties, then one warning line per shortcut."""
    counts = result.files["label"].value_counts()
    real, fake = result.class_names
    lines = [f"Dataset audit: {counts.get(0, 0)} {real} / {counts.get(1, 0)} {fake} images; one-feature "
             f"ROC-AUC of properties that should not matter (0.5 = no signal, shortcut at >= {result.threshold:.2f})"]
    t = result.table
    auc = ["n/a" if math.isnan(a) else f"{a:.2f}" for a in t["roc_auc"]]
    cells = [["property", "ROC-AUC", "shortcut", real, fake]] + [
        [p, a, "YES" if s else "no", r, f]
        for p, a, s, r, f in zip(t["property"], auc, t["shortcut"], t["real"], t["fake"], strict=True)
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    for row in cells:
        lines.append(f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  "
                     f"{row[3]:<{widths[3]}}  {row[4]}".rstrip())
    if result.unreadable:
        lines.append(f"  {len(result.unreadable)} file(s) could not be opened and are left out")
    lines.extend(f"  {note}" for note in result.notes)
    lines.extend(result.warnings())
    return "\n".join(lines)
