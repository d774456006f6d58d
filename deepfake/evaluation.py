"""Evaluating a detector: the metrics and files of one split, per-source tables, and robustness to
everyday image damage. Numbers come from :mod:`deepfake.metrics`, figures from :mod:`deepfake.plots`.

Perturbations are applied to the decoded image and re-encoded, so they mirror what images
suffer in the wild (re-compression, blur, resizing) before the model's own decoder sees them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from deepfake import atomic, plots
from deepfake import metrics as MET
from deepfake.errors import DeepfakeError

if TYPE_CHECKING:
    from deepfake.data import DatasetInfo, Split


class Detector(Protocol):
    """What evaluating needs of a detector (a :class:`deepfake.inference.Predictor`, one layer up)."""

    meta: Any  # its ``threshold``
    video: Any  # its :class:`deepfake.config.VideoConfig` (how frame probabilities make a video's)

    def predict_split(self, split: Split, batch_size: int = 32) -> np.ndarray: ...

    def predict_values(self, values: Sequence[Any], batch_size: int = 32) -> list[dict[str, Any]]: ...


# --------------------------------------------------------------------------- one split


def evaluate_predictions(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    out_dir: str | Path,
    class_names: Sequence[str] = ("real", "fake"),
    threshold: float = 0.5,
    prefix: str = "test",
    loss: float | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Metrics at ``threshold`` and at 0.5, plus the JSON, text and PNG files of an evaluation (the PNGs,
    :func:`draw_figures`, only with ``figures``: a tuning trial keeps its metrics and reports and skips them)."""
    y = np.asarray(y_true, dtype=int).reshape(-1)
    p = np.asarray(y_prob, dtype="float64").reshape(-1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    at_t = MET.compute_metrics(y, p, threshold, loss)
    at_half = MET.compute_metrics(y, p, 0.5, loss)
    files: list[Path] = []

    def dump(name: str, data: Any) -> None:
        files.append(atomic.write_text(out / f"{prefix}_{name}", json.dumps(data, indent=2, default=_json_default)))

    dump("metrics.json", {"threshold": threshold, "at_threshold": at_t, "at_0.5": at_half})
    cm = MET.confusion(y, p, threshold)
    dump("confusion_matrix.json", {"labels": list(class_names), "threshold": threshold, "matrix": cm.tolist(),
                                    "rows": "true", "columns": "predicted"})
    text, report = MET.classification_report(y, p, threshold, class_names)
    files.append(atomic.write_text(out / f"{prefix}_classification_report.txt", text))
    dump("classification_report.json", report)
    if figures:
        files += draw_figures(y, p, out, class_names=class_names, threshold=threshold, prefix=prefix)
    return {"metrics": at_t, "metrics_at_0.5": at_half, "files": [str(f) for f in files]}


def draw_figures(y_true: ArrayLike, y_prob: ArrayLike, out_dir: str | Path,
                 class_names: Sequence[str] = ("real", "fake"), threshold: float = 0.5,
                 prefix: str = "test") -> list[Path]:
    """The PNGs of an evaluation: confusion matrix at ``threshold``, ROC and precision-recall curves (both classes
    present) and reliability diagram."""
    y = np.asarray(y_true, dtype=int).reshape(-1)
    p = np.asarray(y_prob, dtype="float64").reshape(-1)
    out = Path(out_dir)
    files = [plots.plot_confusion_matrix(MET.confusion(y, p, threshold), class_names,
                                         out / f"{prefix}_confusion_matrix.png",
                                         title=f"{prefix} confusion matrix (threshold {threshold:.3f})")]
    if len(np.unique(y)) == 2:
        files.append(plots.plot_roc(y, p, out / f"{prefix}_roc_curve.png", threshold=threshold))
        files.append(plots.plot_pr(y, p, out / f"{prefix}_pr_curve.png", threshold=threshold))
    files.append(plots.plot_reliability(y, p, out / f"{prefix}_reliability.png"))
    return files


def evaluate_predictor(predictor: Detector, info: DatasetInfo, out_dir: str | Path, *, split: str = "test",
                       prefix: str | None = None, model_ref: str = "model",
                       echo: Callable[[str], None] = print) -> dict[str, Any]:
    """A loaded detector (:class:`deepfake.inference.Predictor`) on one split of any dataset, at the threshold
    stored with it: metrics, files and the fake probabilities (``probs``); the table is printed."""
    target = info.splits[split]
    probs = predictor.predict_split(target)
    result = evaluate_predictions(target.labels, probs, out_dir, class_names=info.class_names,
                                  threshold=predictor.meta.threshold, prefix=prefix or split)
    grouped = len(set(target.group_ids())) < len(target)
    title = f"{model_ref} on {info.root} [{split}]"
    echo(MET.format_metrics_table(result["metrics"], title=title + (" per frame" if grouped else "")))
    videos = evaluate_per_source(target, probs, out_dir, predictor.video, class_names=info.class_names,
                                 threshold=predictor.meta.threshold, prefix=prefix or split)
    if videos is not None:
        echo(MET.format_metrics_table(videos["metrics"], title=f"{title} per video ({videos['n']} videos, "
                                                               f"{predictor.video.aggregate} of frames)"))
    return result | {"probs": probs, "per_video": videos}


def source_probabilities(split: Split, probs: ArrayLike, video: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One probability per source file (a video from its frames, an image from its faces; ``video.aggregate``):
    the sources in order, their labels and probabilities."""
    from deepfake.media import aggregate

    groups = split.group_ids()
    p = np.asarray(probs, dtype="float64").reshape(-1)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    labels = np.array([split.labels[idx[0]] for idx in members.values()], dtype=int)
    return list(members), labels, np.array([aggregate(p[idx], video) for idx in members.values()])


def evaluate_per_source(split: Split, probs: ArrayLike, out_dir: str | Path, video: Any,
                        class_names: Sequence[str] = ("real", "fake"), threshold: float = 0.5,
                        prefix: str = "test", figures: bool = True) -> dict[str, Any] | None:
    """The metrics and files of a split per source file (per video), under ``{prefix}_video_*``; ``None`` when every
    picture is its own source (nothing to aggregate)."""
    sources, labels, video_probs = source_probabilities(split, probs, video)
    if len(sources) == len(split):
        return None
    result = evaluate_predictions(labels, video_probs, out_dir, class_names=class_names, threshold=threshold,
                                  prefix=f"{prefix}_video", figures=figures)
    return result | {"n": len(sources), "sources": sources, "probs": video_probs}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if math.isnan(value) else float(value)
    return str(value)


# --------------------------------------------------------------------------- perturbations


def _jpeg(quality: int) -> Callable:
    def apply(img):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    return apply


def _blur(sigma: float) -> Callable:
    def apply(img):
        from PIL import ImageFilter

        return _png(img.filter(ImageFilter.GaussianBlur(radius=sigma)))
    return apply


def _downscale(factor: float) -> Callable:
    def apply(img):
        from PIL import Image

        w, h = img.size
        small = img.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.Resampling.BICUBIC)
        return _png(small.resize((w, h), Image.Resampling.BICUBIC))
    return apply


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# name -> (family, strength, function of a PIL RGB image -> encoded bytes)
PERTURBATIONS: dict[str, tuple[str, float, Callable | None]] = {
    "none": ("none", 0, None),
    "jpeg_q95": ("jpeg", 95, _jpeg(95)),
    "jpeg_q75": ("jpeg", 75, _jpeg(75)),
    "jpeg_q50": ("jpeg", 50, _jpeg(50)),
    "jpeg_q30": ("jpeg", 30, _jpeg(30)),
    "blur_sigma1": ("blur", 1, _blur(1.0)),
    "blur_sigma2": ("blur", 2, _blur(2.0)),
    "downscale_50": ("resize", 0.5, _downscale(0.5)),
}


def perturb(raw: bytes, name: str) -> bytes:
    """Apply the named perturbation to encoded image bytes; returns encoded bytes."""
    from PIL import Image

    fn = PERTURBATIONS[name][2]
    if fn is None:
        return raw
    with Image.open(io.BytesIO(raw)) as img:
        return fn(img.convert("RGB"))


def predict_perturbed(predictor: Detector, paths: Sequence[str], name: str, batch_size: int = 32) -> np.ndarray:
    """Fake probabilities of ``paths`` after perturbation ``name`` (streamed in batches)."""
    probs = np.full(len(paths), np.nan)
    for start in range(0, len(paths), batch_size):
        chunk = [perturb(Path(p).read_bytes(), name) for p in paths[start : start + batch_size]]
        rows = predictor.predict_values(chunk, batch_size=batch_size)
        probs[start : start + len(chunk)] = [r["fake_probability"] for r in rows]
    return probs


def robustness_sweep(predictor: Detector, split: Split, out_dir: str | Path,
                     names: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics under each perturbation (at the model's threshold): table rows, CSV and a plot."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    y = np.asarray(split.labels)
    for name in names or PERTURBATIONS:
        probs = predict_perturbed(predictor, split.paths, name)
        ok = ~np.isnan(probs)
        m = MET.compute_metrics(y[ok], probs[ok], predictor.meta.threshold)
        family, strength, _ = PERTURBATIONS[name]
        rows.append({"perturbation": name, "family": family, "strength": strength, "roc_auc": m["roc_auc"],
                     "average_precision": m["average_precision"], "accuracy": m["accuracy"], "eer": m["eer"],
                     "recall": m["recall"], "specificity": m["specificity"], "n": int(ok.sum())})
    atomic.write_csv(out / "robustness.csv", rows)
    plot = plots.plot_metric_curves(rows, "perturbation", ["roc_auc", "accuracy", "average_precision"],
                                    out / "robustness.png", title="Robustness: metric versus image damage",
                                    xlabel="perturbation")
    return {"rows": rows, "files": [str(out / "robustness.csv"), str(plot)]}


# --------------------------------------------------------------------------- per source


METADATA_FILE = "metadata.csv"  # a dataset's own path,source table (cross-dataset runs, crossval)


def read_metadata(csv_path: str | Path, root: str | Path, column: str = "source") -> dict[str, str]:
    """``{absolute image path: source}`` from a CSV with ``path`` and ``source`` (or ``column``) columns."""
    csv_path, root = Path(csv_path), Path(root)
    if not csv_path.is_file():
        raise DeepfakeError(f"--metadata {csv_path}: no such file; give a CSV with columns path, {column}")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", column} <= set(reader.fieldnames):
            raise DeepfakeError(f"--metadata {csv_path}: needs columns 'path' and '{column}' "
                                f"(has {reader.fieldnames})")
        out = {}
        for row in reader:
            p = Path(row["path"])
            for candidate in (p, root / p, csv_path.parent / p):
                if candidate.exists():
                    out[str(candidate.resolve())] = row[column] or "unknown"
                    break
    return out


def sources_for(paths: Iterable[str], table: dict[str, str]) -> list[str]:
    """The source :func:`read_metadata`'s ``table`` gives each of ``paths`` (``unknown`` when it has none)."""
    return [table.get(str(Path(p).resolve()), "unknown") for p in paths]


def per_source_table(paths: Sequence[str], labels: Sequence[int], probs: np.ndarray, threshold: float,
                     sources: dict[str, str], out_dir: str | Path) -> dict[str, Any]:
    """Accuracy, ROC-AUC and share flagged fake, per source.

    A source holding one class only (a generator's fakes, say) is scored against every real image
    of the evaluated data, as in the CNNDetection / UniversalFakeDetect tables: how well the model
    tells that generator's images from real ones.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = sources_for(paths, sources)
    y, p = np.asarray(labels), np.asarray(probs)
    reals = y == 0
    rows = []
    for source in sorted(set(keys)):
        mask = np.array([k == source for k in keys])
        ys, ps = y[mask], p[mask]
        pred = ps >= threshold
        if len(set(ys.tolist())) == 2:
            auc = float(MET.compute_metrics(ys, ps, threshold)["roc_auc"])
        elif ys.all() and reals.any():  # fakes only: against all reals
            both = mask | reals
            auc = float(MET.compute_metrics(y[both], p[both], threshold)["roc_auc"])
        else:
            auc = float("nan")
        rows.append({
            "source": source, "n": int(mask.sum()), "n_fake": int(ys.sum()),
            "accuracy": float((pred == ys.astype(bool)).mean()),
            "roc_auc": auc,
            "flagged_fake": float(pred.mean()),
        })
    atomic.write_csv(out / "per_source.csv", rows)
    plot = plots.plot_bar([r["source"] for r in rows], [r["accuracy"] for r in rows], out / "per_source.png",
                          title="Accuracy per source", ylabel="accuracy")
    return {"rows": rows, "files": [str(out / "per_source.csv"), str(plot)]}


CROSS_COLUMNS = ["dataset", "source", "n", "n_fake", "roc_auc", "average_precision", "accuracy"]
ALL_SOURCES = "(all)"


def _score_row(dataset: str, source: str, y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    both = len(set(y.tolist())) == 2
    m = MET.compute_metrics(y, p, threshold) if both else {}
    return {"dataset": dataset, "source": source, "n": int(len(y)), "n_fake": int(y.sum()),
            "roc_auc": m.get("roc_auc", float("nan")), "average_precision": m.get("average_precision", float("nan")),
            "accuracy": float(((p >= threshold) == y.astype(bool)).mean()) if len(y) else float("nan")}


def cross_dataset_rows(dataset: str, labels: Sequence[int], probs: ArrayLike, threshold: float,
                       sources: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row for the dataset (n, ROC-AUC, AP, accuracy at the model's ``threshold``) and, when ``sources``
    names the source of every picture, one per source. A source of fakes only (a generator) is scored against
    every real picture of the dataset, as in the CNNDetection / UniversalFakeDetect tables; its accuracy is on
    its own pictures."""
    y, p = np.asarray(labels, dtype=int), np.asarray(probs, dtype="float64").reshape(-1)
    rows = [_score_row(dataset, ALL_SOURCES, y, p, threshold)]
    if sources is None:
        return rows
    keys = np.asarray(list(sources), dtype=object)
    reals = y == 0
    for source in sorted(set(keys.tolist())):
        mask = keys == source
        row = _score_row(dataset, source, y[mask], p[mask], threshold)
        if y[mask].all() and reals.any():  # fakes only: ranked against all reals
            both = mask | reals
            m = MET.compute_metrics(y[both], p[both], threshold)
            row.update(roc_auc=m["roc_auc"], average_precision=m["average_precision"])
        rows.append(row)
    return rows


def cross_dataset_table(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    """``cross_dataset.csv`` and a bar chart of ROC-AUC per dataset (and source)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(out / "cross_dataset.csv", rows)
    labels = [r["dataset"] if r["source"] == ALL_SOURCES else f"{r['dataset']}: {r['source']}" for r in rows]
    plot = plots.plot_bar(labels, [0.0 if math.isnan(r["roc_auc"]) else r["roc_auc"] for r in rows],
                          out / "cross_dataset.png", title="ROC-AUC per dataset and source", ylabel="ROC-AUC",
                          reference=0.5)
    return {"rows": rows, "files": [str(out / "cross_dataset.csv"), str(plot)]}


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(f"{c:<{widths[c]}}" for c in columns)]
    lines += ["  ".join(f"{_fmt(r.get(c)):<{widths[c]}}" for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)
