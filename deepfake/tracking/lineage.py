"""Data lineage: a dataset's splits as MLflow dataset inputs of a run, its summary and its audit."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from deepfake.tracking.runs import log_metrics, log_table_csv

if TYPE_CHECKING:
    from mlflow.data.pandas_dataset import PandasDataset

    from deepfake.audit import AuditResult
    from deepfake.data import DatasetInfo

SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow dataset input contexts


@contextlib.contextmanager
def _dataset_warnings_silenced() -> Iterator[None]:
    """MLflow registers its local dataset source type twice and warns that a path is ambiguous; it hints that
    an integer column cannot hold missing values (labels are never missing)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", message="Failed to determine whether .* can resolve source")  # MLflow 3.0
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        yield


def split_dataset(info: DatasetInfo, split: str) -> PandasDataset:
    """One split as an MLflow dataset: its files and labels (the digest changes when they do), named
    ``<dataset folder>-<split>``, with the folder the files come from (``ROOT/train``, or ``ROOT`` for an
    unsplit dataset) as its source; face crops and video frames name their source file."""
    import pandas as pd

    files = info.splits[split]
    frame = pd.DataFrame({"path": [str(p) for p in files.paths], "label": [int(y) for y in files.labels]})
    if files.groups:  # pictures made of videos or face crops: which file each came from
        frame.insert(1, "source", [str(g) for g in files.groups])
    sources = frame["source" if files.groups else "path"].tolist()
    folder = Path(os.path.commonpath(sources)) if len(frame) else Path(info.root)
    if not folder.is_dir():  # a split of one file
        folder = folder.parent
    with _dataset_warnings_silenced():
        return mlflow.data.from_pandas(frame, source=folder.absolute().as_uri(), targets="label",
                                       name=f"{Path(info.root).name}-{split}")


def log_dataset(info: DatasetInfo, evaluated: str | None = None, name: str | None = None) -> None:
    """Dataset summary (counts per split and class, skipped files) as JSON, text and params, and each split
    as an MLflow dataset input (:func:`split_dataset`) with the context training, validation or testing, so
    that the run shows its data lineage. An evaluation run names the split it ``evaluated``: that one is its
    only input, with the context ``evaluation``. A run evaluating several datasets gives each a ``name``: its
    files go below ``dataset/NAME/``, its metrics are ``dataset.NAME.*`` and its root the param
    ``dataset.NAME.root``."""
    for split_name in info.splits if evaluated is None else [evaluated]:
        _log_input(split_dataset(info, split_name),
                   context="evaluation" if evaluated else SPLIT_CONTEXTS.get(split_name, split_name))
    folder = f"dataset/{name}" if name else "dataset"
    key = f"dataset.{name}" if name else "dataset"
    summary = info.summary()
    mlflow.log_dict(summary, f"{folder}/summary.json")
    mlflow.log_text(info.report(), f"{folder}/report.txt")
    if info.leaks:
        mlflow.log_dict({"duplicates_across_splits": [vars(leak) for leak in info.leaks]}, f"{folder}/leakage.json")
    mlflow.log_params({f"{key}.root": str(info.root), f"{key}.layout": info.layout})
    metrics = {f"{key}.n_skipped": len(info.skipped)}
    for split_name, split in info.splits.items():
        for class_name, n in split.counts(info.class_names).items():
            metrics[f"{key}.{split_name}.{class_name}"] = n
    mlflow.log_metrics(metrics)


def _log_input(dataset: PandasDataset, context: str, attempts: int = 3) -> None:
    """``mlflow.log_input``, again when another worker stored the same dataset (same experiment, name and digest)
    between MLflow's lookup and its insert: a duplicate-key error that a second try, which finds the stored
    dataset and links it to this run, does not meet (tuning workers of one study start runs on one dataset at once)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            with _dataset_warnings_silenced():
                mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            text = str(exc).lower()
            if attempt == attempts - 1 or not ("unique" in text or "duplicate" in text):
                raise
            time.sleep(0.2 * (attempt + 1))


def log_audit(result: AuditResult, name: str | None = None) -> None:
    """A dataset audit (:mod:`deepfake.audit`): ``dataset/audit.csv``, ``audit.<property>_auc`` metrics and,
    when a property alone separates the classes, the tag ``warning.shortcut``. One of several datasets gives its
    ``name``: ``dataset/NAME/audit.csv``, ``audit.NAME.<property>_auc``, and its shortcuts join the tag as
    ``NAME: property``."""
    log_table_csv(result.table, f"dataset/{name}/audit.csv" if name else "dataset/audit.csv")
    key = f"audit.{name}." if name else "audit."
    log_metrics({f"{key}{row.property}_auc": row.roc_auc for row in result.table.itertuples()
                 if not math.isnan(row.roc_auc)})  # NaN: the property is not defined for both classes
    if result.shortcuts:
        found = [f"{name}: {s}" if name else s for s in result.shortcuts]
        before = mlflow.get_run(mlflow.active_run().info.run_id).data.tags.get("warning.shortcut") if name else None
        mlflow.set_tag("warning.shortcut", ", ".join([before, *found] if before else found))

