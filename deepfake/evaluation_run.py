"""One tracked evaluation run (``deepfake evaluate``): any detector on any dataset, logged to MLflow.

A held-out dataset is evaluated whole, a training dataset gives its test split
(:func:`deepfake.data.scan_evaluation_dataset`). The metrics table, and on request a per-source table
and a robustness sweep (:mod:`deepfake.evaluation`), are printed; they, the figures and an HTML report
are written to the output folder and logged with the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deepfake import data as D
from deepfake import evaluation as E
from deepfake import metrics as MET
from deepfake import tracking
from deepfake.config import Config
from deepfake.errors import DeepfakeError
from deepfake.inference import load_predictor
from deepfake.report import build_report

SOURCE_COLUMNS = ["source", "n", "accuracy", "roc_auc", "flagged_fake"]
ROBUSTNESS_COLUMNS = ["perturbation", "roc_auc", "accuracy", "average_precision", "eer"]


def run(cfg: Config, model_ref: str, *, split: str = "auto", metadata: str | Path | None = None,
        robustness: bool = False, report: bool = True, out_dir: str | Path = "outputs/evaluate",
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate ``model_ref`` (a folder, ``.keras`` file or MLflow model URI) on the dataset ``cfg.data.path``
    as one MLflow run of the experiment ``cfg.tracking`` names (set up by the caller)."""
    data, out = cfg.data.path, Path(out_dir)
    tags = _tags(model_ref, "evaluation")
    predictor = load_predictor(tracking.local_model(model_ref))
    cfg.data.class_names = predictor.meta.class_names
    cfg.data.faces, cfg.data.video = predictor.faces, predictor.video  # pictures made as the model's training made them
    info, split = D.scan_evaluation_dataset(cfg.data, split=split, seed=cfg.train.seed)
    target = info.splits[split]
    counts = ", ".join(f"{n} {name}" for name, n in target.counts(info.class_names).items())
    echo(info.report())
    what = ("every image" if split == "all" else f"every image of {split}/" if len(info.splits) == 1
            else f"its {split} split (seed {cfg.train.seed})")
    n_sources = len(target.sources()[0])
    pictures = (f"{len(target)} pictures from {n_sources} files" if n_sources < len(target) else
                f"{len(target)} images")
    echo(f"Evaluating {pictures} ({counts}) of {data}: {what}")
    with tracking.start_run(f"evaluate-{Path(data).name}-{split}", tags=tags) as mlrun:
        tracking.log_dataset(info, evaluated=split)
        tracking.log_params({"evaluated_split": split, "n_images": len(target)})
        result = E.evaluate_predictor(predictor, info, out, split=split, model_ref=model_ref, echo=echo)
        tracking.log_metrics(result["metrics"], prefix=f"{split}_")
        if result["per_video"] is not None:
            tracking.log_metrics(result["per_video"]["metrics"], prefix=f"{split}_video_")
        if metadata:
            sources = E.read_metadata(metadata, data)
            table = E.per_source_table(target.group_ids(), target.labels, result["probs"], predictor.meta.threshold,
                                       sources, out)
            echo("\nPer source:\n" + E.format_table(table["rows"], SOURCE_COLUMNS))
            for row in table["rows"]:
                tracking.log_metrics({f"source.{MET.safe_name(row['source'])}.accuracy": row["accuracy"]})
        if robustness:
            sweep = E.robustness_sweep(predictor, target, out)
            echo("\nRobustness:\n" + E.format_table(sweep["rows"], ROBUSTNESS_COLUMNS))
            for row in sweep["rows"]:
                tracking.log_metrics({f"robustness.{row['perturbation']}.roc_auc": row["roc_auc"],
                                      f"robustness.{row['perturbation']}.accuracy": row["accuracy"]})
        if report:
            path = build_report(out, out / "report.html", f"{model_ref} on {data} [{split}]", result["metrics"],
                                tags=tags)
            echo(f"\nReport: {path}")
        tracking.log_artifacts([out], "evaluation")
        echo(f"MLflow run {mlrun.info.run_id}")
    return result | {"run_id": mlrun.info.run_id, "split": split}


def _tags(model_ref: str, role: str) -> dict[str, str]:
    """An evaluation run's tags: the model's URI (and registered name) and the run's role."""
    tags = {"model_uri": model_ref, "deepfake.role": role}
    if model_ref.startswith("models:/"):
        tags["registered_model"] = model_ref[len("models:/"):]
    return tags


def dataset_names(paths: Sequence[str]) -> list[str]:
    """Short unique names for datasets: their folder names, numbered when two are alike."""
    names = [Path(p).resolve().name or "dataset" for p in paths]
    return [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def run_many(cfg: Config, model_ref: str, datasets: Sequence[str], *, split: str = "auto",
             metadata: Sequence[str | Path] = (), out_dir: str | Path = "outputs/evaluate",
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Cross-dataset evaluation: ``model_ref`` on each dataset (whole when it is evaluation-only, else its test
    split), one MLflow run, one table: a row per dataset and, where its metadata names sources, per source
    (n, ROC-AUC, AP, accuracy at the model's threshold), with a bar chart of ROC-AUC.

    ``metadata`` gives one ``path,source`` CSV per dataset, in order; without it a dataset's own
    ``metadata.csv`` is used when it has those columns."""
    out = Path(out_dir)
    tags = _tags(model_ref, "cross-evaluation")
    if metadata and len(metadata) != len(datasets):
        raise DeepfakeError(f"--metadata: give one CSV per --data ({len(datasets)}), or none to use each "
                              f"dataset's own {E.METADATA_FILE}")
    predictor = load_predictor(tracking.local_model(model_ref))
    threshold = predictor.meta.threshold
    names = dataset_names(datasets)
    rows: list[dict[str, Any]] = []
    with tracking.start_run(f"evaluate-{len(datasets)}-datasets", tags=tags) as mlrun:
        tracking.log_params({"evaluated_split": split, "datasets": ", ".join(names)})
        for i, (name, data) in enumerate(zip(names, datasets, strict=True)):
            dcfg = dataclasses.replace(cfg.data, path=data, class_names=predictor.meta.class_names,
                                       faces=predictor.faces, video=predictor.video)
            info, used = D.scan_evaluation_dataset(dcfg, split=split, seed=cfg.train.seed)
            target = info.splits[used]
            echo(f"[{name}] {len(target)} pictures of {data} ({used})")
            tracking.log_dataset(info, evaluated=used, name=name)
            result = E.evaluate_predictor(predictor, info, out / name, split=used, model_ref=model_ref, echo=echo)
            sources = None
            csv_path = Path(metadata[i]) if metadata else Path(data) / E.METADATA_FILE
            if csv_path.is_file():
                try:
                    by_path = E.read_metadata(csv_path, data)
                except DeepfakeError as exc:
                    if metadata:
                        raise
                    echo(f"[{name}] {csv_path} not used: {exc}")
                else:
                    sources = E.sources_for(target.group_ids(), by_path)
            rows += E.cross_dataset_rows(name, target.labels, result["probs"], threshold, sources)
        table = E.cross_dataset_table(rows, out)
        for row in rows:
            key = row["dataset"] if row["source"] == E.ALL_SOURCES else f"{row['dataset']}.{row['source']}"
            tracking.log_metrics({f"cross.{MET.safe_name(key)}.{m}": row[m]
                                  for m in ("roc_auc", "average_precision", "accuracy")})
        echo(f"\nCross-dataset (threshold {threshold:.3f}, stored with the model):\n"
             + E.format_table(rows, E.CROSS_COLUMNS))
        tracking.log_artifacts([out], "evaluation")
        echo(f"MLflow run {mlrun.info.run_id}")
    return {"rows": rows, "files": table["files"], "run_id": mlrun.info.run_id}
