"""One tracked training run: data -> model -> two-phase training -> evaluation -> MLflow.

Used by ``deepfake train`` and by every Optuna trial (which adds a pruning callback and
runs nested under its study's run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepfake import data as D
from deepfake import evaluation, plots, tracking, training
from deepfake import metrics as MET
from deepfake import model as M
from deepfake.calibration import apply_temperature, fit_temperature
from deepfake.config import Config
from deepfake.features import FeatureCache
from deepfake.inference import ModelMeta, example_frames, pip_requirements, pyfunc_artifacts, save_detector
from deepfake.input_pipeline import make_dataset

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    model_dir: Path
    model_uri: str | None
    threshold: float
    test_metrics: dict[str, float]
    val_metrics: dict[str, float]
    history: dict[str, list[float]]
    out_dir: Path
    dataset: Any = None
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def prepare_dataset(cfg: Config, echo: Callable[[str], None] = print, progress: bool = True) -> D.DatasetInfo:
    """Scan and check the dataset, look for duplicates across splits (and drop them with dedupe), then
    audit the classes for shortcuts (format, size, JPEG quality, EXIF)."""
    from deepfake import leakage

    info = D.scan_dataset(cfg.data, seed=cfg.train.seed, progress=progress)
    if cfg.data.leakage_check:
        leaks = leakage.find_leaks(info, cfg.data.near_duplicate_distance)
        if cfg.data.dedupe and leaks:
            info = leakage.dedupe(info, leaks)
        info.leaks = leaks
        echo(leakage.report(leaks) + ("  (removed from the later split: data.dedupe)" if cfg.data.dedupe and leaks else
                                      "  (use --set data.dedupe=true to remove them)" if leaks else ""))
    echo(info.report())
    if cfg.data.audit:
        from deepfake import audit

        info.audit = audit.audit_dataset(info, cfg.data.audit_threshold, progress=progress)
        echo(audit.report(info.audit))
        for line in info.audit.warnings():
            log.warning(line.removeprefix("WARNING: "))
    return info


def evaluate_split(model: keras.Model, split: D.Split, cfg: Config, out_dir: Path, threshold: float, prefix: str,
                   temperature: float = 1.0) -> dict[str, Any]:
    """Predict one split (calibrated, in file order) and write its metrics, confusion matrix, report and curves."""
    ds = make_dataset(split, cfg.data, training=False, seed=cfg.train.seed)
    probs = apply_temperature(training.predict_probabilities(model, ds), temperature)
    return evaluation.evaluate_predictions(
        split.labels, probs, out_dir, class_names=cfg.data.class_names, threshold=threshold, prefix=prefix
    ) | {"probs": probs}


def run(
    cfg: Config,
    *,
    dataset: D.DatasetInfo | None = None,
    resume: bool = False,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    verbose: int = 2,
    echo: Callable[[str], None] = print,
    on_run_start: Callable[[str], None] | None = None,
) -> RunResult:
    """Train and evaluate one model as one MLflow run (resumed when ``resume`` finds a checkpoint).

    ``on_run_start`` is called with the run id as soon as the run exists (a tuning trial records it, so
    that the run of a killed trial can be found and ended).
    """
    started = time.time()
    info = dataset or prepare_dataset(cfg, echo, progress=verbose > 0)
    out_dir = Path(cfg.train.output_dir)
    ckpt_dir = out_dir / "checkpoints"
    eval_dir = out_dir / "evaluation"
    previous = training.read_state(ckpt_dir) if resume else None
    run_id = (previous or {}).get("mlflow_run_id")

    with tracking.start_run(run_name or cfg.tracking.run_name, run_id=run_id, parent_run_id=parent_run_id,
                            tags=tags) as mlrun:
        run_id = mlrun.info.run_id
        if on_run_start is not None:
            on_run_start(run_id)
        if previous is None:
            tracking.log_config(cfg)
            tracking.log_dataset(info)
            if info.audit is not None:
                tracking.log_audit(info.audit)
            cfg.save(out_dir / "config.yaml")
        else:
            tracking.set_tags({"resumed": "true"})
        train_ds = make_dataset(info.splits["train"], cfg.data, training=True, seed=cfg.train.seed)
        val_ds = make_dataset(info.splits["val"], cfg.data, training=False, seed=cfg.train.seed)
        class_weight = info.class_weights() if cfg.data.class_weights else None

        result = training.train(
            cfg,
            train_ds,
            val_ds,
            ckpt_dir,
            class_weight=class_weight,
            callbacks=[tracking.EpochLogger(), *callbacks],
            resume=resume,
            state_extra={"mlflow_run_id": run_id},
            features=FeatureCache(cfg).provider(info) if cfg.train.feature_cache else None,
            on_model_built=tracking.log_weights_info,
            verbose=verbose,
        )
        tracking.set_tags({f"runtime.{k}": v for k, v in result.runtime.items()})
        model = M.as_float32(result.model, cfg)  # evaluate, save and serve in float32

        # Temperature and threshold on validation; then the test split at that threshold and at 0.5.
        raw_val = training.predict_probabilities(model, val_ds)
        temperature = fit_temperature(info.splits["val"].labels, raw_val) if cfg.train.calibrate else 1.0
        val_ds_probs = apply_temperature(raw_val, temperature)
        threshold = MET.choose_threshold(info.splits["val"].labels, val_ds_probs, method="youden")
        val_eval = evaluation.evaluate_predictions(
            info.splits["val"].labels, val_ds_probs, eval_dir, class_names=cfg.data.class_names,
            threshold=threshold, prefix="val",
        )
        test_eval = evaluate_split(model, info.splits["test"], cfg, eval_dir, threshold, "test", temperature)
        history_png = plots.plot_history(result.history, eval_dir / "training_curves.png", result.phase_boundary)

        weights_source = (result.weights_info.source if result.weights_info
                          else (previous or {}).get("weights_source", "unknown"))
        meta = ModelMeta(threshold=threshold, class_names=list(cfg.data.class_names),
                         image_size=cfg.data.image_size, weights_source=weights_source, temperature=temperature,
                         backbone=cfg.model.backbone)
        model_dir = save_detector(model, meta, out_dir / "model")

        tracking.log_metrics({"threshold": threshold, "temperature": temperature})
        tracking.log_metrics(val_eval["metrics"], prefix="val_final_")
        tracking.log_metrics(test_eval["metrics"], prefix="test_")
        tracking.log_metrics(test_eval["metrics_at_0.5"], prefix="test_at_0.5_")
        tracking.log_artifacts([eval_dir], "evaluation")
        tracking.log_artifacts([history_png], "evaluation")
        model_uri = (tracking.log_model(pyfunc_artifacts(model_dir), *example_frames(meta), pip_requirements())
                     if cfg.tracking.log_model else None)

        echo(MET.format_metrics_table(test_eval["metrics"],
                                      title=f"Test metrics (threshold {threshold:.3f}, chosen on val)"))
        echo(f"MLflow run {run_id}  ({tracking.active_tracking_uri()})")
        return RunResult(
            run_id=run_id,
            model_dir=model_dir,
            model_uri=model_uri,
            threshold=threshold,
            test_metrics=test_eval["metrics"],
            val_metrics=val_eval["metrics"],
            history=result.history,
            out_dir=out_dir,
            dataset=info,
            files=test_eval["files"],
            seconds=time.time() - started,
        )
