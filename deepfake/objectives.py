"""What a study can optimise: the validation metrics ``deepfake tune --metric`` offers.

Apart from :mod:`deepfake.tuning` (which loads Optuna and TensorFlow), so that the command line lists
the choices without importing either.
"""

from __future__ import annotations

METRICS = {  # --metric -> (key in pipeline's validation metrics, direction, Keras per-epoch log key)
    "val_auc": ("roc_auc", "maximize", "val_auc"),
    "val_average_precision": ("average_precision", "maximize", "val_auc"),
    "val_accuracy": ("accuracy", "maximize", "val_accuracy"),
    "val_loss": ("log_loss", "minimize", "val_loss"),
}

# --optimise: the --metric (primary), the --also-data dataset's ROC-AUC (also), or both (multi-objective)
OPTIMISE = ("primary", "also", "both")
