"""Evaluation metrics (scikit-learn): numbers only; :mod:`deepfake.evaluation` writes the files and
:mod:`deepfake.plots` draws the figures.

Labels: 0 = real (negative), 1 = fake (positive). Probabilities are the fake probability.
:func:`safe_name` makes a dataset's or a source's name fit for a metric's name (and a folder's).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as skm


def _arrays(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true, dtype=int).reshape(-1), np.asarray(y_prob, dtype="float64").reshape(-1)


def _both_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def equal_error_rate(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[float, float]:
    """(EER, threshold): where the false positive rate equals the false negative rate.

    Linear interpolation between the two ROC points that bracket FPR == FNR.
    """
    y, p = _arrays(y_true, y_prob)
    if not _both_classes(y):
        return float("nan"), 0.5
    fpr, tpr, thr = skm.roc_curve(y, p)
    fnr = 1 - tpr
    diff = fpr - fnr  # increases from -1 to +1 along the curve
    i = int(np.argmax(diff >= 0))
    if i == 0 or diff[i] == 0:
        t = thr[i] if np.isfinite(thr[i]) else 1.0
        return float((fpr[i] + fnr[i]) / 2), float(np.clip(t, 0, 1))
    w = -diff[i - 1] / (diff[i] - diff[i - 1])  # fraction of the way from point i-1 to i
    eer = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    t0 = thr[i - 1] if np.isfinite(thr[i - 1]) else 1.0
    t = t0 + w * (thr[i] - t0)
    return float(eer), float(np.clip(t, 0, 1))


def choose_threshold(y_true: ArrayLike, y_prob: ArrayLike, method: str = "youden") -> float:
    """Decision threshold chosen on validation data: ``youden`` (max TPR-FPR), ``eer`` or ``f1``."""
    y, p = _arrays(y_true, y_prob)
    if not _both_classes(y):
        return 0.5
    if method == "youden":
        fpr, tpr, thr = skm.roc_curve(y, p)
        best = int(np.argmax(tpr - fpr))
        t = thr[best] if np.isfinite(thr[best]) else 1.0
    elif method == "eer":
        t = equal_error_rate(y, p)[1]
    elif method == "f1":
        precision, recall, thr = skm.precision_recall_curve(y, p)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        t = thr[int(np.argmax(f1))]
    else:
        raise ValueError(f"unknown threshold method {method!r}; use youden, eer or f1")
    return float(np.clip(t, 0.0, 1.0))


def confusion(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> np.ndarray:
    """2x2 confusion matrix ``[[tn, fp], [fn, tp]]`` (rows true, columns predicted)."""
    y, p = _arrays(y_true, y_prob)
    return skm.confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])


def compute_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = 0.5,
                    loss: float | None = None) -> dict[str, float]:
    """Threshold metrics at ``threshold`` plus ranking metrics (ROC-AUC, AP, EER)."""
    y, p = _arrays(y_true, y_prob)
    pred = (p >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion(y, p, threshold)
    both = _both_classes(y)
    out = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred) if both else float("nan"),
        "roc_auc": skm.roc_auc_score(y, p) if both else float("nan"),
        "average_precision": skm.average_precision_score(y, p) if both else float("nan"),
        "eer": equal_error_rate(y, p)[0],
        "log_loss": loss if loss is not None else skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]),
        "ece": expected_calibration_error(y, p),
        "threshold": threshold,
        "n": len(y),
        "n_positive": int(y.sum()),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }
    return {k: float(v) for k, v in out.items()}


def classification_report(y_true: ArrayLike, y_prob: ArrayLike, threshold: float,
                          class_names: Sequence[str]) -> tuple[str, dict]:
    y, p = _arrays(y_true, y_prob)
    pred = (p >= threshold).astype(int)
    kwargs = dict(labels=[0, 1], target_names=list(class_names), zero_division=0, digits=4)
    return skm.classification_report(y, pred, **kwargs), skm.classification_report(y, pred, output_dict=True, **kwargs)


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 15) -> float:
    """ECE = sum over equal-width bins of (n_b / N) * |fraction positive - mean probability|."""
    y, p = _arrays(y_true, y_prob)
    if len(y) == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(ece)


COUNT_KEYS = ("n", "n_positive", "tp", "fp", "tn", "fn")
TABLE_KEYS = ("roc_auc", "average_precision", "eer", "accuracy", "precision", "recall", "f1",
              "specificity", "log_loss", "ece", "threshold", "n")


def format_metrics_table(metrics: dict[str, Any], title: str = "", keys: Sequence[str] = TABLE_KEYS) -> str:
    """An aligned two-column table for the terminal."""
    rows = [(k, metrics[k]) for k in keys if k in metrics] or list(metrics.items())
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * max(len(title), width + 12)] if title else []
    for key, value in rows:
        if key in COUNT_KEYS:
            text = f"{int(value)}"
        elif isinstance(value, float):
            text = f"{value:.4f}"
        else:
            text = str(value)
        lines.append(f"{key:<{width}}  {text:>10}")
    return "\n".join(lines)


def safe_name(text: str) -> str:
    """``text`` made fit to stand in an MLflow metric name (``held_out.<name>.roc_auc``) and as a file or folder
    name: every character but letters, digits, ``_``, ``-`` and ``.`` becomes ``_`` (so never a path: no ``/``),
    as do the dots of a name of dots only (``.``, ``..``); an empty ``text`` gives ``_``."""
    name = re.sub(r"[^\w.-]", "_", text)
    return name if name.strip(".") else name.replace(".", "_") or "_"
