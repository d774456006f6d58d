"""Probability calibration by temperature scaling (Guo et al., 2017).

After training, one temperature is fitted on the validation split (:func:`fit_temperature`); it is
stored with the model and applied by every inference path (:func:`apply_temperature`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def fit_temperature(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Temperature T minimising the validation log loss of sigmoid(logit / T)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(y_prob, dtype=float), 1e-7, 1 - 1e-7)
    if len(set(y.tolist())) < 2:
        return 1.0
    logits = np.log(p / (1 - p))

    def nll(t: float) -> float:
        q = np.clip(1 / (1 + np.exp(-logits / t)), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    result = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded")
    return float(result.x) if math.isfinite(result.x) else 1.0


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities' logits by 1/temperature (temperature scaling)."""
    if temperature == 1.0:
        return probs
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    logits = np.log(p / (1 - p)) / temperature
    return 1.0 / (1.0 + np.exp(-logits))
