"""The study loop: one worker runs (or continues) a study until it holds the trials asked for."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from deepfake import config as C
from deepfake import pipeline, tracking
from deepfake.errors import DeepfakeError
from deepfake.tuning.attributes import PARENT_RUN_ATTR
from deepfake.tuning.objective import Objective, study_directions
from deepfake.tuning.outages import close_failed_runs, fail_stale_trials, outages_reported, settle
from deepfake.tuning.samplers import TrialSeededSampler, make_pruner
from deepfake.tuning.space import SearchSpace, enqueue_baseline, load_search_space
from deepfake.tuning.storage import make_storage, redact
from deepfake.tuning.summary import StudyResult, summarize


def tune(
    cfg: C.Config,
    *,
    study_name: str,
    storage: str = "sqlite:///optuna.db",
    n_trials: int = 10,
    timeout: float | None = None,
    search_space: str | Path | SearchSpace = "search_space",
    metric: str = "val_auc",
    heartbeat_interval: int = 30,
    grace_period: int | None = None,
    also_data: str | None = None,
    optimise: str = "primary",
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or continue) a study until it holds ``n_trials`` finished trials or ``timeout`` passes.

    Outages are ridden out: of the Optuna database for up to the heartbeat grace period, of an MLflow
    tracking server for MLflow's HTTP retries (about a minute). Past that, the running trial is failed and
    retried by the next worker, and a one-line :class:`DeepfakeError` names what is unreachable. Trials of
    stopped workers are failed (and their MLflow runs ended FAILED) before the study is reported.

    ``also_data``: every trial is also scored on that dataset (whole, or its test split; ROC-AUC, never trained
    on). ``optimise`` is what the study maximises: ``primary`` (``metric``; the second score is recorded),
    ``also`` (the second dataset's ROC-AUC) or ``both`` (both, as a multi-objective study: its Pareto front is
    plotted on the parent run, and the best trial is the Pareto-optimal one with the highest mean of the two,
    see :func:`deepfake.tuning.summary.pareto_choice`). Trials are pruned on ``metric`` only when it alone is optimised.
    """
    started = time.time()
    directions = study_directions(metric, optimise, also_data=bool(also_data))
    space = search_space if isinstance(search_space, SearchSpace) else load_search_space(search_space)
    grace_period = grace_period or 2 * heartbeat_interval
    rdb = make_storage(storage, heartbeat_interval, grace_period)
    info = pipeline.prepare_dataset(cfg, echo)
    also = _also_split(cfg, also_data, echo) if also_data else None
    current: dict[str, Any] = {}  # the study and the trial this worker is running, for outage reports
    with outages_reported(current, grace_period):
        study = _create_study(study_name, rdb, directions, sampler=TrialSeededSampler(
            space.sampler, study_name, cfg.train.seed), pruner=make_pruner(space.pruner))
        current["study"] = study
        enqueue_baseline(study, space, cfg, echo)
        parent = _parent_run(study, study_name, storage)
        fail_stale_trials(study)
        close_failed_runs(study, parent)
        objective = Objective(cfg, space, study_name=study_name, parent_run_id=parent, dataset=info, metric=metric,
                              optimise=optimise, also=also, echo=echo, current=current)
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        echo(f"Study '{study_name}' ({redact(storage)}): {done} finished trial(s) so far, target {n_trials}")
        if done < n_trials:
            study.optimize(
                objective,
                n_trials=n_trials - done,
                timeout=timeout,
                # after each trial is told: an outage from here on is not that trial's
                callbacks=[MaxTrialsCallback(n_trials, states=finished),
                           lambda study, trial: current.pop("trial", None)],
                gc_after_trial=False,  # the next trial's clear_session collects
                catch=(),
            )
        settle(study, rdb, heartbeat_interval, grace_period, echo)
        close_failed_runs(study, parent)
        return summarize(study, parent, started, echo)


def _create_study(study_name: str, storage: Any, directions: list[str], **kwargs: Any) -> optuna.Study:
    """Create or load a study; a study made for other objectives (say one of --optimise primary, continued with
    --optimise both) is refused in one line (Optuna would load it with its own objectives)."""
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, directions=directions,
                                **kwargs)
    found = [d.name.lower() for d in study.directions]
    if found != [d.lower() for d in directions]:
        raise DeepfakeError(f"--study-name {study_name}: the study optimises other objectives ({', '.join(found)}) "
                            f"than asked ({', '.join(directions)}); continue it with its own --optimise and --metric, "
                            "or name a new study")
    return study


def _also_split(cfg: C.Config, also_data: str, echo: Callable[[str], None]):
    """The pictures of ``--also-data`` every trial is scored on: a held-out dataset whole, a training dataset's
    test split (as ``deepfake evaluate`` takes them)."""
    import dataclasses

    from deepfake import data as D

    dcfg = dataclasses.replace(cfg.data, path=also_data)
    info, split = D.scan_evaluation_dataset(dcfg, split="auto", seed=cfg.train.seed)
    target = info.splits[split]
    if len(set(target.labels)) < 2:
        raise DeepfakeError(f"--also-data {also_data}: needs real and fake images to score a ROC-AUC")
    counts = ", ".join(f"{n} {c}" for c, n in target.counts(info.class_names).items())
    echo(f"Every trial is also scored on {also_data} ({split}: {counts})")
    return target


def _parent_run(study: optuna.Study, study_name: str, storage_url: str) -> str:
    """The study's one parent MLflow run, shared by all workers (created by the first)."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        return run_id
    run_id = tracking.create_run(
        f"study-{study_name}",
        tags={"optuna.study_name": study_name, "optuna.storage": redact(storage_url), "deepfake.role": "study"},
    )
    study.set_user_attr(PARENT_RUN_ATTR, run_id)
    time.sleep(0.5)  # another worker may have raced us: the attribute written last wins
    winner = optuna.load_study(study_name=study_name, storage=study._storage).user_attrs.get(PARENT_RUN_ATTR)
    if winner != run_id:
        tracking.delete_run(run_id)
    return winner

