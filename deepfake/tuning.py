"""Optuna studies over the detector's hyperparameters. The only module that talks to Optuna.

* The search space is one YAML file (``experiments/search_space.yaml``): config keys mapped
  to distributions, plus the sampler and pruner.
* Every trial is one tracked training run (:func:`deepfake.pipeline.run`) nested under the
  study's parent MLflow run; per-epoch validation metrics drive pruning.
* Studies live in an RDB storage (SQLite by default, PostgreSQL for many workers) with
  heartbeats: a trial left RUNNING by a killed worker is failed and retried by the next one.
* ``--n-trials N`` means "until the study holds N finished (complete or pruned) trials", so
  running the same command again resumes, and any number of workers share one budget.
"""

from __future__ import annotations

import gc
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from deepfake import config as C
from deepfake import pipeline, tracking
from deepfake.errors import DeepfakeError, first_line

log = logging.getLogger(__name__)

METRICS = {  # --metric -> (key in pipeline's validation metrics, direction, Keras per-epoch log key)
    "val_auc": ("roc_auc", "maximize", "val_auc"),
    "val_average_precision": ("average_precision", "maximize", "val_auc"),
    "val_accuracy": ("accuracy", "maximize", "val_accuracy"),
    "val_loss": ("log_loss", "minimize", "val_loss"),
}
DISTRIBUTION_KEYS = {"type", "low", "high", "log", "step", "choices"}
PARENT_RUN_ATTR = "mlflow_parent_run_id"


@dataclass
class SearchSpace:
    params: dict[str, dict[str, Any]]
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one value per parameter; returns ``{"train.learning_rate": 3e-4, ...}``."""
        values = {}
        for key, spec in self.params.items():
            kind = spec["type"]
            if kind == "float":
                values[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec.get("log", False),
                                                  step=spec.get("step"))
            elif kind == "int":
                values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False),
                                                step=spec.get("step", 1))
            else:
                values[key] = trial.suggest_categorical(key, spec["choices"])
        return values


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate the search-space YAML (keys must be config options)."""
    path = Path(path)
    if not path.is_file():
        raise DeepfakeError(f"--search-space {path}: no such file; see experiments/search_space.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise DeepfakeError(f"--search-space {path}: not valid YAML") from None
    unknown_sections = set(raw) - {"params", "sampler", "pruner"}
    if unknown_sections or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise DeepfakeError(f"--search-space {path}: needs a non-empty 'params' mapping (and optional sampler, pruner)"
                            + (f"; unknown section(s) {sorted(unknown_sections)}" if unknown_sections else ""))
    known = set(C.Config().flat())
    for key, spec in raw["params"].items():
        where = f"--search-space {path}: parameter '{key}'"
        if key not in known:
            raise DeepfakeError(f"{where} is not a config option; known: {', '.join(sorted(known))}")
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise DeepfakeError(f"{where} needs type float, int or categorical")
        extra = set(spec) - DISTRIBUTION_KEYS
        if extra:
            raise DeepfakeError(f"{where} has unknown field(s) {sorted(extra)}; use {sorted(DISTRIBUTION_KEYS)}")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise DeepfakeError(f"{where} needs a non-empty 'choices' list")
        else:
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
                raise DeepfakeError(f"{where} needs numeric 'low' and 'high'")
            if low > high:
                raise DeepfakeError(f"{where} has low {low} > high {high}; swap them")
            if spec.get("log") and low <= 0:
                raise DeepfakeError(f"{where} is log-scaled, so low must be > 0 (got {low})")
        # Every value the space can produce must make a valid config.
        for probe in _probe_values(spec):
            try:
                C.from_dict(C.nest({key: probe}))
            except DeepfakeError as exc:
                raise DeepfakeError(f"{where}: value {probe!r} is impossible ({exc})") from None
    space = SearchSpace(raw["params"], raw.get("sampler") or {"type": "tpe"}, raw.get("pruner") or {"type": "median"})
    make_pruner(space.pruner)
    make_sampler(space.sampler, seed=0)
    return space


def _probe_values(spec: dict[str, Any]) -> list[Any]:
    if spec["type"] == "categorical":
        return list(spec["choices"])
    return [spec["low"], spec["high"]]


PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}


def _make(kinds: dict[str, type], what: str, spec: dict[str, Any], default: str, **defaults: Any):
    kind = spec.get("type", default)
    if kind not in kinds:
        raise DeepfakeError(f"search space {what} type '{kind}' is unknown; use one of {', '.join(kinds)}")
    args = {**defaults, **{k: v for k, v in spec.items() if k != "type"}}
    try:
        return kinds[kind](**args)
    except TypeError as exc:
        raise DeepfakeError(f"search space {what} '{kind}': {exc}") from None


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    return _make(PRUNERS, "pruner", spec, "median")


def make_sampler(spec: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    return _make(SAMPLERS, "sampler", spec, "tpe", seed=seed)


def make_storage(url: str, heartbeat_interval: int = 30, grace_period: int | None = None, max_retry: int = 2):
    """An RDB storage with heartbeats, so trials of killed workers are failed and retried."""
    if not url or "://" not in url:
        raise DeepfakeError(f"--storage {url!r}: not a database URL; use e.g. sqlite:///optuna.db or "
                            "postgresql://user@host:5432/db")
    scheme = url.split("://", 1)[0]
    if not scheme.startswith(("sqlite", "postgresql", "mysql")):
        raise DeepfakeError(f"--storage {url}: unsupported scheme '{scheme}'; use sqlite:///… or postgresql://…")
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period or 2 * heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                    engine_kwargs={"pool_pre_ping": True} if not scheme.startswith("sqlite") else None,
                )
        except Exception as exc:
            text = str(exc)
            # Workers starting together on a fresh database race to create Optuna's tables.
            if attempt < 3 and any(s in text for s in ("already exists", "duplicate key", "UniqueViolation")):
                time.sleep(1 + attempt)
                continue
            first = first_line(exc)
            raise DeepfakeError(f"--storage {url}: cannot open the Optuna storage ({first}); check that the database "
                                "server is running and the URL is right") from None
    raise AssertionError("unreachable")


class _PruningCallback(KerasPruningCallback):
    """Optuna's Keras pruning callback; a pruned trial's MLflow run is tagged ``state=PRUNED``."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        try:
            super().on_epoch_end(epoch, logs)
        except optuna.TrialPruned as exc:
            exc.run_state = "PRUNED"  # read by tracking.start_run when it ends the run
            raise


def _parent_run(study: optuna.Study, cfg: C.Config, study_name: str, storage_url: str) -> str:
    """The study's one parent MLflow run, shared by all workers (created by the first)."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        return run_id
    run_id = tracking.create_run(
        f"study-{study_name}",
        tags={"optuna.study_name": study_name, "optuna.storage": _redact(storage_url), "deepfake.role": "study"},
    )
    study.set_user_attr(PARENT_RUN_ATTR, run_id)
    time.sleep(0.5)  # another worker may have raced us: the attribute written last wins
    winner = optuna.load_study(study_name=study_name, storage=study._storage).user_attrs.get(PARENT_RUN_ATTR)
    if winner != run_id:
        tracking.delete_run(run_id)
    return winner


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@dataclass
class StudyResult:
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


def tune(
    cfg: C.Config,
    *,
    study_name: str,
    storage: str = "sqlite:///optuna.db",
    n_trials: int = 10,
    timeout: float | None = None,
    search_space: str | Path = "experiments/search_space.yaml",
    metric: str = "val_auc",
    heartbeat_interval: int = 30,
    grace_period: int | None = None,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or continue) a study until it holds ``n_trials`` finished trials or ``timeout`` passes."""
    import keras

    started = time.time()
    if metric not in METRICS:
        raise DeepfakeError(f"--metric {metric}: unknown; use one of {', '.join(METRICS)}")
    result_key, direction, epoch_key = METRICS[metric]
    space = load_search_space(search_space)
    rdb = make_storage(storage, heartbeat_interval, grace_period)
    info = pipeline.prepare_dataset(cfg, echo)
    study = optuna.create_study(
        study_name=study_name, storage=rdb, load_if_exists=True, direction=direction,
        sampler=make_sampler(space.sampler, seed=cfg.train.seed), pruner=make_pruner(space.pruner),
    )
    parent = _parent_run(study, cfg, study_name, storage)
    out_root = Path(cfg.train.output_dir) / study_name

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        gc.collect()
        params = space.suggest(trial)
        values = C.merge(cfg.to_dict(), C.nest(params))
        values["train"]["output_dir"] = str(out_root / f"trial_{trial.number:04d}")
        trial_cfg = C.from_dict(values)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        echo(f"\n[trial {trial.number}] {params}" + (f" (retry of trial {retried})" if retried is not None else ""))
        result = pipeline.run(
            trial_cfg,
            dataset=info,
            callbacks=[_PruningCallback(trial, epoch_key)],
            parent_run_id=parent,
            run_name=f"trial-{trial.number:04d}",
            tags={"optuna.study_name": study_name, "optuna.trial_number": str(trial.number),
                  **({"optuna.retry_of": str(retried)} if retried is not None else {})},
            verbose=0,
            echo=lambda s: None,
        )
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("model_uri", result.model_uri)
        trial.set_user_attr("test_roc_auc", result.test_metrics["roc_auc"])
        value = float(result.val_metrics[result_key])
        if math.isnan(value):
            raise optuna.TrialPruned("validation metric is NaN")
        tracking.set_run_tags(result.run_id, {"state": "COMPLETE"})
        echo(f"[trial {trial.number}] {metric} = {value:.4f}  (test ROC-AUC {result.test_metrics['roc_auc']:.4f}, "
             f"{result.seconds:.0f}s)")
        return value

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    echo(f"Study '{study_name}' ({_redact(storage)}): {done} finished trial(s) so far, target {n_trials}")
    if done < n_trials:
        study.optimize(
            objective,
            n_trials=n_trials - done,
            timeout=timeout,
            callbacks=[MaxTrialsCallback(n_trials, states=finished)],
            gc_after_trial=True,
            catch=(),
        )
    return summarize(study, parent, started, echo)


def summarize(study: optuna.Study, parent: str, started: float, echo: Callable[[str], None] = print) -> StudyResult:
    """Log best params/value, all trials as CSV and Optuna's plots to the parent run."""
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    best = study.best_trial if count[TrialState.COMPLETE] else None
    with tracking.start_run(run_id=parent):
        tracking.log_table_csv(study.trials_dataframe(), "study/trials.csv")
        tracking.log_metrics({"n_complete": count[TrialState.COMPLETE], "n_pruned": count[TrialState.PRUNED],
                              "n_failed": count[TrialState.FAIL]})
        if best is not None:
            tracking.log_params({f"best.{k}": v for k, v in best.params.items()} | {"best.trial": best.number})
            tracking.log_metrics({"best_value": best.value})
            tracking.set_tags({"best.mlflow_run_id": best.user_attrs.get("mlflow_run_id", "")})
            for name, figure in _plots(study).items():
                tracking.log_figure(figure, f"study/{name}.png")
    result = StudyResult(
        study_name=study.study_name, parent_run_id=parent,
        best_trial=best.number if best else None, best_value=best.value if best else None,
        best_params=dict(best.params) if best else {}, best_model_uri=best.user_attrs.get("model_uri") if best else None,
        best_run_id=best.user_attrs.get("mlflow_run_id") if best else None,
        n_complete=count[TrialState.COMPLETE], n_pruned=count[TrialState.PRUNED], n_failed=count[TrialState.FAIL],
        seconds=time.time() - started,
    )
    echo(f"\nStudy '{study.study_name}': {result.n_complete} complete, {result.n_pruned} pruned, "
         f"{result.n_failed} failed")
    if best is not None:
        echo(f"Best trial {best.number}: {study.direction.name.lower()} value {best.value:.4f} with {best.params}")
    return result


def _plots(study: optuna.Study) -> dict[str, Any]:
    """Optuna's optimisation history, parallel coordinates and parameter importances (matplotlib)."""
    import warnings

    from optuna.visualization import matplotlib as vis

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
        except Exception as exc:  # e.g. importances need 2+ complete trials with varying params
            log.info("skipped the %s plot: %s", name, exc)
    return figures


def study_summary(study_name: str, storage: str) -> dict[str, Any]:
    """Trial counts and best trial of an existing study (for status output and tests)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise DeepfakeError(f"--study-name {study_name}: no such study in {_redact(storage)}") from None
    trials = study.get_trials(deepcopy=False)
    return {
        "numbers": [t.number for t in trials],
        "states": [t.state.name for t in trials],
        "best_model_uri": study.best_trial.user_attrs.get("model_uri") if any(
            t.state == TrialState.COMPLETE for t in trials) else None,
        "parent_run_id": study.user_attrs.get(PARENT_RUN_ATTR),
    }
