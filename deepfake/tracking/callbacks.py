"""The Keras side of tracking: a callback that logs every epoch to the active MLflow run.

Kept apart from the rest of :mod:`deepfake.tracking` so that commands that only read runs and models
(``deepfake register``, ``promote``, ``report``) do not load Keras.
"""

from __future__ import annotations

import keras

from deepfake.tracking.runs import log_metrics


class EpochLogger(keras.callbacks.Callback):
    """Keras callback: every epoch's logs as MLflow metrics, step = global epoch index."""

    def __init__(self, phase: str | None = None):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs:  # one call per epoch: a head-only epoch on cached features takes less than a store round trip
            lr = getattr(self.model.optimizer, "learning_rate", None)
            extra = {} if lr is None else {"learning_rate": float(keras.ops.convert_to_numpy(lr))}
            log_metrics({**logs, **extra}, step=epoch)
