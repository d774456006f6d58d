"""The objective: one trial of a study, trained and evaluated as one MLflow run nested under the study's run."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna_integration import KerasPruningCallback

from deepfake import config as C
from deepfake import pipeline, tracking
from deepfake.errors import DeepfakeError
from deepfake.objectives import METRICS, OPTIMISE
from deepfake.tuning.attributes import ALSO_ATTR, BASELINE_ATTR, FAILURE_ATTR, HEAD_ONLY_ATTR, RUN_ATTR
from deepfake.tuning.outages import TrackingUnreachable
from deepfake.tuning.space import SearchSpace
from deepfake.tuning.storage import StorageUnreachable


class TrialPruned(optuna.TrialPruned, tracking.RunPruned):
    """Optuna's signal that a trial was pruned, which also ends the trial's MLflow run as PRUNED."""


class PruningCallback(KerasPruningCallback):
    """Optuna's Keras pruning callback; a pruned trial's MLflow run is tagged ``state=PRUNED``."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        try:
            super().on_epoch_end(epoch, logs)
        except optuna.TrialPruned as exc:
            raise TrialPruned(*exc.args) from None


def study_directions(metric: str, optimise: str, also_data: bool) -> list[str]:
    """The study's directions for ``--metric`` and ``--optimise`` (one, or two for ``both``); a choice that is
    unknown, or that needs ``--also-data`` without it, is refused in one line."""
    if metric not in METRICS:
        raise DeepfakeError(f"--metric {metric}: unknown; use one of {', '.join(METRICS)}")
    if optimise not in OPTIMISE:
        raise DeepfakeError(f"--optimise {optimise}: use one of {', '.join(OPTIMISE)}")
    if optimise != "primary" and not also_data:
        raise DeepfakeError(f"--optimise {optimise} needs --also-data DIR: the dataset whose score it optimises")
    direction = METRICS[metric][1]
    return {"primary": [direction], "also": ["maximize"], "both": [direction, "maximize"]}[optimise]


class Objective:
    """What ``study.optimize`` calls for every trial: draw the trial's parameters from the search space, train
    and evaluate them (:func:`deepfake.pipeline.run`, a run nested under the study's parent run ``parent_run_id``,
    its files under ``<train.output_dir>/<study_name>/trial_NNNN``) and return what the study optimises:
    ``metric`` on the validation split (``optimise="primary"``), the ROC-AUC on the ``also`` pictures
    (``"also"``), or both (``"both"``).

    ``dataset`` is :func:`deepfake.pipeline.prepare_dataset`'s answer, shared by all trials. A NaN score prunes
    the trial; the tracking store unreachable past MLflow's retries fails it with :class:`TrackingUnreachable`,
    its reason kept on the trial for its MLflow run. ``current["trial"]`` is the number of the trial running
    now, for the outage reports (:func:`deepfake.tuning.outages.outages_reported`).
    """

    def __init__(self, cfg: C.Config, space: SearchSpace, *, study_name: str, parent_run_id: str, dataset: Any,
                 metric: str = "val_auc", optimise: str = "primary", also: Any = None,
                 echo: Callable[[str], None] = print, current: dict[str, Any] | None = None):
        study_directions(metric, optimise, also_data=also is not None)  # a mistake is named before any trial
        self.cfg, self.space, self.study_name, self.parent_run_id = cfg, space, study_name, parent_run_id
        self.dataset, self.metric, self.optimise, self.also, self.echo = dataset, metric, optimise, also, echo
        self.result_key, _, self.epoch_key = METRICS[metric]
        self.out_root = Path(cfg.train.output_dir) / study_name
        self.current = {} if current is None else current

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import keras

        self.current["trial"] = trial.number
        keras.backend.clear_session()  # and one garbage collection (a full one takes seconds with TF loaded)
        params = self.space.suggest(trial)
        trial_cfg = self.trial_config(trial.number, params)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if frozen.user_attrs.get(FAILURE_ATTR):  # a retry inherits the failed trial's attributes
            trial.set_user_attr(FAILURE_ATTR, "")
        baseline = bool(frozen.user_attrs.get(BASELINE_ATTR))
        self.echo(f"\n[trial {trial.number}] {params}"
                  + (" (baseline: the configuration's own values)" if baseline else "")
                  + (f" (retry of trial {retried})" if retried is not None else ""))
        tags = {"optuna.study_name": self.study_name, "optuna.trial_number": str(trial.number),
                **({"optuna.retry_of": str(retried)} if retried is not None else {}),
                **({"optuna.baseline": "true"} if baseline else {})}
        result = self._train(trial, trial_cfg, tags)
        return self._scores(trial, trial_cfg, result)

    def trial_config(self, number: int, params: dict[str, Any]) -> C.Config:
        """The study's configuration with the trial's parameters, writing into the trial's own folder."""
        values = C.merge(self.cfg.to_dict(), C.nest(params))
        values["train"]["output_dir"] = str(self.out_root / f"trial_{number:04d}")
        return C.from_dict(values)

    def _train(self, trial: optuna.Trial, trial_cfg: C.Config, tags: dict[str, str]) -> pipeline.RunResult:
        try:
            return pipeline.run(
                trial_cfg,
                dataset=self.dataset,
                callbacks=[PruningCallback(trial, self.epoch_key)] if self.optimise == "primary" else [],
                parent_run_id=self.parent_run_id,
                run_name=f"trial-{trial.number:04d}",
                tags=tags,
                verbose=0,
                echo=lambda s: None,
                on_run_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id),
                lean=True,
                also=self.also,
            )
        except Exception as exc:
            what = None if isinstance(exc, StorageUnreachable) else tracking.unreachable(exc)
            if what is None:
                raise
            with contextlib.suppress(Exception):
                trial.set_user_attr(FAILURE_ATTR, f"trial {trial.number} failed: {what}")
            raise TrackingUnreachable(what) from None

    def _scores(self, trial: optuna.Trial, trial_cfg: C.Config,
                result: pipeline.RunResult) -> float | tuple[float, float]:
        """Record the trial's run, model and scores on the trial; what the study optimises."""
        trial.set_user_attr(RUN_ATTR, result.run_id)
        trial.set_user_attr("model_uri", result.model_uri)
        if result.head_only and trial_cfg.tracking.log_model:  # its detector is assembled if it is the best
            trial.set_user_attr(HEAD_ONLY_ATTR, True)
        trial.set_user_attr("test_roc_auc", result.test_metrics["roc_auc"])
        value = float(result.val_metrics[self.result_key])
        if math.isnan(value):
            raise optuna.TrialPruned("validation metric is NaN")
        second = ""
        if result.also_metrics is not None:
            also_value = float(result.also_metrics["roc_auc"])
            trial.set_user_attr(ALSO_ATTR, also_value)
            second = f", --also-data ROC-AUC {also_value:.4f}"
        tracking.set_run_tags(result.run_id, {"state": "COMPLETE"})
        self.echo(f"[trial {trial.number}] {self.metric} = {value:.4f}  (test ROC-AUC "
                  f"{result.test_metrics['roc_auc']:.4f}{second}, {result.seconds:.0f}s)")
        if self.optimise == "also":
            return also_value
        if self.optimise == "both":
            return value, also_value
        return value
