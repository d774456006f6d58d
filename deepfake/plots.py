"""Figures (matplotlib, no display needed). Every function saves a PNG and returns its path.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state), so
nothing leaks across thousands of calls and no GUI backend is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def _figure(width: float = 5.5, height: float = 4.5, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    fig.clear()
    return path


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix") -> Path:
    cm = np.asarray(cm)
    fig, axes = _figure(4.8, 4.2)
    ax = axes[0][0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.1%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=11)
    ax.set_xticks(range(len(class_names)), labels=class_names)
    ax.set_yticks(range(len(class_names)), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_roc(y_true: ArrayLike, y_prob: ArrayLike, path: str | Path, threshold: float | None = None) -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    from deepfake.metrics import equal_error_rate

    fpr, tpr, _ = roc_curve(y_true, y_prob)
    auc = roc_auc_score(y_true, y_prob)
    eer, _ = equal_error_rate(y_true, y_prob)
    fig, axes = _figure()
    ax = axes[0][0]
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.plot([eer], [1 - eer], "o", color="tab:red", label=f"EER = {eer:.3f}")
    if threshold is not None:
        y = np.asarray(y_true)
        pred = np.asarray(y_prob) >= threshold
        op_fpr = pred[y == 0].mean() if (y == 0).any() else 0
        op_tpr = pred[y == 1].mean() if (y == 1).any() else 0
        ax.plot([op_fpr], [op_tpr], "s", color="tab:green", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("false positive rate (real flagged fake)")
    ax.set_ylabel("true positive rate (fakes caught)")
    ax.set_title("ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(y_true: ArrayLike, y_prob: ArrayLike, path: str | Path, threshold: float | None = None) -> Path:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y_true, y_prob)
    ap = average_precision_score(y_true, y_prob)
    prevalence = float(np.mean(y_true))
    fig, axes = _figure()
    ax = axes[0][0]
    ax.step(recall, precision, where="post", lw=2, label=f"PR (AP = {ap:.3f})")
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.2f}")
    if threshold is not None:
        y = np.asarray(y_true)
        pred = np.asarray(y_prob) >= threshold
        tp = (pred & (y == 1)).sum()
        r = tp / max((y == 1).sum(), 1)
        p = tp / max(pred.sum(), 1)
        ax.plot([r], [p], "s", color="tab:green", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall curve")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_reliability(y_true: ArrayLike, y_prob: ArrayLike, path: str | Path, n_bins: int = 15) -> Path:
    from deepfake.metrics import expected_calibration_error

    y = np.asarray(y_true, dtype=float)
    p = np.asarray(y_prob, dtype=float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    centers, freq, conf = [], [], []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            centers.append((b + 0.5) / n_bins)
            freq.append(y[mask].mean())
            conf.append(p[mask].mean())
    fig, axes = _figure(5.5, 6, nrows=2)
    ax, hist = axes[0][0], axes[1][0]
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.bar(centers, freq, width=1 / n_bins, edgecolor="black", alpha=0.7, label="fraction fake")
    ax.plot(conf, freq, "o-", color="tab:red", ms=3, label="mean probability")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of fakes")
    ax.set_title(f"Reliability diagram (ECE = {expected_calibration_error(y, p, n_bins):.3f})")
    ax.legend(fontsize=8, loc="upper left")
    hist.hist(p, bins=n_bins, range=(0, 1), color="tab:blue", edgecolor="black")
    hist.set_xlabel("predicted fake probability")
    hist.set_ylabel("images")
    return _save(fig, path)


def plot_history(history: dict[str, list[float]], path: str | Path, phase_boundary: int | None = None) -> Path:
    """Training curves: one panel per metric, train vs validation, fine-tuning start marked."""
    names = [k for k in history if not k.startswith("val_") and k not in ("learning_rate",)]
    names = names or [k[4:] for k in history if k.startswith("val_")]
    fig, axes = _figure(4.2 * max(len(names), 1), 3.6, ncols=max(len(names), 1))
    for ax, name in zip(axes[0], names, strict=False):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history and history[key]:
                ax.plot(range(1, len(history[key]) + 1), history[key], "o-", ms=3, label=label)
        if phase_boundary and 0 < phase_boundary < max(len(v) for v in history.values()):
            ax.axvline(phase_boundary + 0.5, ls="--", color="grey")
            ax.text(phase_boundary + 0.6, ax.get_ylim()[1], "fine-tuning", va="top", fontsize=8, color="grey")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    return _save(fig, path)


def _caption(true_label, predicted_label, prob) -> tuple[str, str]:
    correct = true_label is None or true_label == predicted_label
    text = f"true: {true_label}   predicted: {predicted_label}\nfake probability: {prob:.3f}"
    if true_label is None:
        text = f"predicted: {predicted_label}\nfake probability: {prob:.3f}"
    return text, ("tab:green" if correct else "tab:red")


def plot_sample(image: np.ndarray, true_label: str | None, predicted_label: str, fake_probability: float,
                path: str | Path, title: str | None = None) -> Path:
    img = np.clip(np.asarray(image, dtype=float), 0, 255).astype(np.uint8)
    fig, axes = _figure(4.5, 5.0)
    ax = axes[0][0]
    ax.imshow(img, interpolation="nearest")
    ax.axis("off")
    text, color = _caption(true_label, predicted_label, fake_probability)
    ax.set_title((title + "\n" if title else "") + text, color=color, fontsize=10)
    return _save(fig, path)


def plot_sample_grid(items: Sequence[dict[str, Any]], path: str | Path, cols: int = 4) -> Path:
    cols = max(1, min(cols, len(items)))
    rows = int(np.ceil(len(items) / cols))
    fig, axes = _figure(3.2 * cols, 3.6 * rows, ncols=cols, nrows=rows)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items, strict=False):
        ax.imshow(np.clip(np.asarray(item["image"], dtype=float), 0, 255).astype(np.uint8), interpolation="nearest")
        text, color = _caption(item.get("true_label"), item["predicted_label"], item["fake_probability"])
        ax.set_title(f"{item.get('name', '')}\n{text}", color=color, fontsize=8)
    return _save(fig, path)


def plot_metric_curves(table: Sequence[dict[str, Any]], x: str, ys: Sequence[str], path: str | Path, title: str = "",
                       xlabel: str | None = None) -> Path:
    fig, axes = _figure(6.5, 4.2)
    ax = axes[0][0]
    labels = [str(row[x]) for row in table]
    for y in ys:
        ax.plot(range(len(table)), [row.get(y, np.nan) for row in table], "o-", label=y)
    ax.set_xticks(range(len(table)), labels=labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(xlabel or x)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bar(labels: Sequence[str], values: Sequence[float], path: str | Path, title: str = "",
             ylabel: str = "", reference: float | None = None) -> Path:
    """Bars with their values; ``reference`` draws a dashed line (0.5: chance for ROC-AUC)."""
    fig, axes = _figure(max(4.5, 0.8 * len(labels) + 2), 4.2)
    ax = axes[0][0]
    bars = ax.bar(range(len(labels)), values, color="tab:blue", edgecolor="black")
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value:.2f}", ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    return _save(fig, path)
