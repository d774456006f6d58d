"""A study's outcome: its best trial (the Pareto rule for two objectives), logged to the parent MLflow run
with the trials as CSV and Optuna's plots."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from deepfake import pipeline, tracking
from deepfake.tuning.attributes import ALSO_ATTR, HEAD_ONLY_ATTR, RUN_ATTR

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What :func:`deepfake.tuning.tune` returns: the study's best trial and its counts, as this worker saw them."""

    study_name: str
    parent_run_id: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_model_uri: str | None
    best_run_id: str | None
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float


def pareto_choice(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[Any]) -> optuna.trial.FrozenTrial:
    """The champion rule of a two-objective study: of its Pareto-optimal trials (``study.best_trials``), the one
    with the highest mean of the two scores (a loss counts as its negative); ties go to the better first score,
    then the earlier trial."""
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in directions]

    def key(t: optuna.trial.FrozenTrial) -> tuple:
        scores = [s * v for s, v in zip(signs, t.values, strict=True)]
        return (sum(scores) / len(scores), scores[0], -t.number)

    return max(trials, key=key)



def summarize(study: optuna.Study, parent: str, started: float, echo: Callable[[str], None] = print) -> StudyResult:
    """Log best params/value, all trials as CSV and Optuna's plots to the parent run. The best trial's
    detector is assembled when it was a head-only trial (:func:`deepfake.pipeline.assemble`, once per study)."""
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    multi = len(study.directions) > 1
    best = None
    if count[TrialState.COMPLETE]:
        best = pareto_choice(study.best_trials, study.directions) if multi else study.best_trial
    best_model_uri = best.user_attrs.get("model_uri") if best else None
    if best is not None and best_model_uri is None and best.user_attrs.get(HEAD_ONLY_ATTR):
        best_model_uri = pipeline.assemble(best.user_attrs[RUN_ATTR], echo=echo)
    with tracking.start_run(run_id=parent):
        tracking.log_table_csv(study.trials_dataframe(), "study/trials.csv")
        tracking.log_metrics({"n_complete": count[TrialState.COMPLETE], "n_pruned": count[TrialState.PRUNED],
                              "n_failed": count[TrialState.FAIL]})
        if best is not None:
            # Tags, not params: a resumed study's best changes, and MLflow params cannot be changed.
            tracking.set_tags({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
            tracking.log_metrics({"best_value": best.values[0]} if multi else {"best_value": best.value})
            if ALSO_ATTR in best.user_attrs:
                tracking.log_metrics({"best_also_roc_auc": best.user_attrs[ALSO_ATTR]})
            if multi:
                tracking.set_tags({"best.rule": "Pareto-optimal trial with the highest mean of the two scores",
                                   "pareto.trials": ",".join(str(t.number) for t in study.best_trials)})
            tracking.set_tags({"best.mlflow_run_id": best.user_attrs.get(RUN_ATTR, "")})
            for name, figure in _plots(study).items():
                tracking.log_figure(figure, f"study/{name}.png")
    result = StudyResult(
        study_name=study.study_name, parent_run_id=parent,
        best_trial=best.number if best else None,
        best_value=(best.values[0] if multi else best.value) if best else None,
        best_params=dict(best.params) if best else {},
        best_model_uri=best_model_uri,
        best_run_id=best.user_attrs.get(RUN_ATTR) if best else None,
        n_complete=count[TrialState.COMPLETE], n_pruned=count[TrialState.PRUNED], n_failed=count[TrialState.FAIL],
        seconds=time.time() - started,
    )
    echo(f"\nStudy '{study.study_name}': {result.n_complete} complete, {result.n_pruned} pruned, "
         f"{result.n_failed} failed")
    if best is not None and multi:
        front = ", ".join(f"{t.number} ({t.values[0]:.4f}, {t.values[1]:.4f})" for t in study.best_trials)
        echo(f"Pareto front (trial: primary, --also-data): {front}")
        echo(f"Best trial {best.number} (highest mean of the two on the front): {best.values[0]:.4f} and "
             f"{best.values[1]:.4f} with {best.params}")
    elif best is not None:
        also = f" (--also-data ROC-AUC {best.user_attrs[ALSO_ATTR]:.4f})" if ALSO_ATTR in best.user_attrs else ""
        echo(f"Best trial {best.number}: {study.direction.name.lower()} value {best.value:.4f}{also} "
             f"with {best.params}")
    return result


def _plots(study: optuna.Study) -> dict[str, Any]:
    """Optuna's optimisation history, parallel coordinates and parameter importances (matplotlib)."""
    import warnings

    from optuna.visualization import matplotlib as vis

    if len(study.directions) > 1:  # the trade-off between the two scores, and each score's history
        makers = {
            "pareto_front": lambda s: vis.plot_pareto_front(s, target_names=["primary (validation)",
                                                                               "--also-data ROC-AUC"]),
            "optimization_history_primary": lambda s: vis.plot_optimization_history(
                s, target=lambda t: t.values[0], target_name="primary"),
            "optimization_history_also": lambda s: vis.plot_optimization_history(
                s, target=lambda t: t.values[1], target_name="--also-data ROC-AUC"),
        }
    else:
        makers = {
            "optimization_history": vis.plot_optimization_history,
            "parallel_coordinate": vis.plot_parallel_coordinate,
            "param_importances": vis.plot_param_importances,
        }
    figures = {}
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings
                ax = make(study)
            ax = ax[0] if hasattr(ax, "__len__") and not hasattr(ax, "figure") else ax
            ax = ax.flat[0] if hasattr(ax, "flat") else ax
            figures[name] = ax.figure
        except Exception as exc:  # noqa: BLE001 - a figure Optuna cannot draw (importances need 2+ varied trials) is skipped
            log.info("skipped the %s plot: %s", name, exc)
    return figures
