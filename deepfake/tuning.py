"""Optuna studies over the detector's hyperparameters. The only module that talks to Optuna.

* The search space is one YAML file (shipped: ``search_space``, ``search_space_demo`` in
  ``deepfake/experiments/``): config keys mapped to distributions, plus the sampler and pruner.
* Every trial is one tracked training run (:func:`deepfake.pipeline.run`) nested under the
  study's parent MLflow run; per-epoch validation metrics drive pruning.
* Studies live in an RDB storage (SQLite by default, PostgreSQL for many workers) with
  heartbeats: a trial left RUNNING by a killed worker is failed and retried by the next one.
* ``--n-trials N`` means "until the study holds N finished (complete or pruned) trials", so
  running the same command again resumes, and any number of workers share one budget.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from deepfake import config as C
from deepfake import pipeline, tracking
from deepfake.errors import DeepfakeError, exception_chain, first_line, outage_cause
from deepfake.objectives import METRICS, OPTIMISE

log = logging.getLogger(__name__)

DISTRIBUTION_KEYS = {"type", "low", "high", "log", "step", "choices"}
PARENT_RUN_ATTR = "mlflow_parent_run_id"
BASELINE_ATTR = "baseline"  # trial user attribute: the trial enqueued with the configuration's own values
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's MLflow run, recorded as soon as the run starts
HEAD_ONLY_ATTR = "head_only"  # trial user attribute: its run logged the head; the detector is assembled when needed
FAILURE_ATTR = "failure"  # trial user attribute: why the trial failed, for its MLflow run


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

    def baseline(self, cfg: C.Config) -> dict[str, Any]:
        """The configuration's own values of the parameters, where the space holds them (a value outside a
        range, off its step or not among the choices is left to the sampler). A one-element list, such as
        ``model.head_units: [256]``, is the choice ``256``."""
        flat = cfg.flat()
        values: dict[str, Any] = {}
        for key, spec in self.params.items():
            value = flat[key]
            if spec["type"] == "categorical":
                if value in spec["choices"]:
                    values[key] = value
                elif isinstance(value, list) and len(value) == 1 and value[0] in spec["choices"]:
                    values[key] = value[0]
            elif _in_range(value, spec):
                values[key] = value
        return values


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate the search-space YAML (keys must be config options): a file, or a shipped one by name."""
    path = C.find_file(path, folder="")
    if not path.is_file():
        raise DeepfakeError(f"--search-space {path}: no such file; give a YAML file or a shipped search space: "
                            + ", ".join(C.shipped_names("", prefix="search_space")))
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
        _check_distribution(where, spec)
        # Every value the space can produce must make a valid config.
        for probe in _probe_values(spec):
            try:
                C.from_dict(C.nest({key: probe}))
            except DeepfakeError as exc:
                raise DeepfakeError(f"{where}: value {probe!r} is impossible ({exc})") from None
    space = SearchSpace(raw["params"], raw.get("sampler") or {"type": "tpe"}, raw.get("pruner") or {"type": "median"})
    # The sampler and pruner are built here, so that a bad argument stops before a study or run exists.
    make_pruner(space.pruner, where=f"--search-space {path}")
    make_sampler(space.sampler, seed=0, where=f"--search-space {path}")
    return space


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _in_range(value: Any, spec: dict[str, Any]) -> bool:
    """``value`` is one a float or int distribution can draw (within low..high, on the step grid)."""
    if not _is_number(value) or (spec["type"] == "int" and not isinstance(value, int)):
        return False
    if not spec["low"] <= value <= spec["high"]:
        return False
    steps = (value - spec["low"]) / spec["step"] if spec.get("step") else 0
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def _check_distribution(where: str, spec: dict[str, Any]) -> None:
    """Everything Optuna would only reject when a trial suggests the parameter (after a study, a trial
    and its runs exist): one line naming the parameter and the field."""
    kind = spec["type"]
    if kind == "categorical":
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise DeepfakeError(f"{where} needs a non-empty 'choices' list")
        extra = sorted(set(spec) - {"type", "choices"})
        if extra:
            raise DeepfakeError(f"{where} is categorical, so it takes only 'choices' (not {', '.join(extra)})")
        return
    if "choices" in spec:
        raise DeepfakeError(f"{where} is {kind}: 'choices' is for categorical parameters; use low and high")
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    if not _is_number(low) or not _is_number(high):
        raise DeepfakeError(f"{where} needs numeric 'low' and 'high'")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise DeepfakeError(f"{where} is an int parameter, so 'low' and 'high' must be integers (got {low}, {high})")
    if low > high:
        raise DeepfakeError(f"{where} has low {low} > high {high}; swap them")
    if not isinstance(log, bool):
        raise DeepfakeError(f"{where} has log {log!r}; use true or false")
    if log and low <= 0:
        raise DeepfakeError(f"{where} is log-scaled, so low must be > 0 (got {low})")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise DeepfakeError(f"{where} has step {step!r}; step must be "
                                f"{'an integer' if kind == 'int' else 'a number'} > 0, or left out")
        if log:
            raise DeepfakeError(f"{where} has both 'step' and 'log: true', which Optuna cannot combine; drop one")
    try:  # and whatever else Optuna's own distribution checks
        if kind == "float":
            optuna.distributions.FloatDistribution(low, high, log=log, step=step)
        else:
            optuna.distributions.IntDistribution(low, high, log=log, step=1 if step is None else step)
    except ValueError as exc:
        raise DeepfakeError(f"{where}: {first_line(exc)}") from None


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


# Sampler and pruner arguments that must be integers of at least this much. Optuna checks some of them
# only while a study runs (a negative TPE n_startup_trials, say), or not at all.
INTEGER_ARGS = {
    "n_startup_trials": 0, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1, "n_ei_candidates": 1,
    "min_resource": 1, "max_resource": 1, "reduction_factor": 2, "min_early_stopping_rate": 0,
}


def _make(kinds: dict[str, type], what: str, spec: Any, default: str, where: str, **defaults: Any):
    if not isinstance(spec, dict):
        raise DeepfakeError(f"{where}: '{what}' must be a mapping such as {{type: {default}}}")
    kind = spec.get("type", default)
    if kind not in kinds:
        raise DeepfakeError(f"{where}: {what} type '{kind}' is unknown; use one of {', '.join(kinds)}")
    args = {k: v for k, v in spec.items() if k != "type"}
    if "seed" in args and "seed" in defaults:
        raise DeepfakeError(f"{where}: {what} seed is not an option; every trial's sampler is seeded from "
                            "train.seed (--seed), the study name and the trial number")
    for name, value in args.items():
        minimum = INTEGER_ARGS.get(name)
        if minimum is None or (value == "auto" and name in ("min_resource", "max_resource")):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise DeepfakeError(f"{where}: {what} {name} must be an integer >= {minimum} (got {value!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return kinds[kind](**defaults, **args)
    except (TypeError, ValueError) as exc:
        raise DeepfakeError(f"{where}: {what} '{kind}': {first_line(exc)}") from None


def make_pruner(spec: dict[str, Any], where: str = "search space") -> optuna.pruners.BasePruner:
    return _make(PRUNERS, "pruner", spec, "median", where)


def make_sampler(spec: dict[str, Any], seed: int, where: str = "search space") -> optuna.samplers.BaseSampler:
    return _make(SAMPLERS, "sampler", spec, "tpe", where, seed=seed)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """The search space's sampler, made afresh for every trial with a seed derived from the study name,
    ``train.seed`` and the trial number.

    A sampler seeded once per worker with ``train.seed`` makes every restarted or additional worker replay
    the same parameters. Trial numbers are unique within a study (the storage assigns them), so no two
    trials - of any worker - draw with the same seed, and a study's draws stay reproducible. (Samplers keep
    no state between trials besides their random generator: the history is read from the study.)
    """

    def __init__(self, spec: dict[str, Any], study_name: str, seed: int):
        self._spec = spec
        self._base = f"{study_name}\0{seed}"
        self._sampler = make_sampler(spec, seed=self.seed_for(-1))

    def seed_for(self, trial_number: int) -> int:
        digest = hashlib.sha256(f"{self._base}\0{trial_number}".encode()).digest()
        return int.from_bytes(digest[:4], "big")

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._sampler = make_sampler(self._spec, seed=self.seed_for(trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


class StorageUnreachable(DeepfakeError):
    """The Optuna database stayed unreachable for longer than the storage rides out."""


class RetryingStorage(optuna.storages.BaseStorage, optuna.storages._heartbeat.BaseHeartbeat):
    """Optuna's RDB storage, riding out database outages (a PostgreSQL restart, say).

    Every call is retried with backoff (0.5, 1, 2, 4, 8, 8 ... s) while the database is unreachable, for up
    to ``budget`` seconds: the heartbeat grace period, past which other workers fail our trial anyway. Then
    :class:`StorageUnreachable` (one line) is raised; later calls try once until the database answers
    again. Heartbeats are best effort: a missed one is not an error.
    """

    def __init__(self, rdb: optuna.storages.RDBStorage, url: str, budget: float):
        self.rdb, self.url, self.budget = rdb, url, budget
        self._down_since: float | None = None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        delay, attempt = 0.5, 0
        while True:
            try:
                result = getattr(self.rdb, name)(*args, **kwargs)
            except Exception as exc:
                if attempt and name == "set_trial_state_values" and isinstance(
                        exc, optuna.exceptions.UpdateFinishedTrialError):
                    # An earlier attempt was committed although its answer was lost.
                    trial = self.rdb.get_trial(args[0] if args else kwargs["trial_id"])
                    return trial.state == kwargs.get("state", args[1] if len(args) > 1 else None)
                cause = outage_cause(exc)
                if cause is None:
                    raise
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning("the Optuna storage %s is unreachable (%s); retrying for up to %.0f s",
                                _redact(self.url), first_line(cause, 160), self.budget)
                if now - self._down_since >= self.budget:
                    raise StorageUnreachable(
                        f"--storage {_redact(self.url)}: the Optuna database has been unreachable for "
                        f"{now - self._down_since:.0f} s ({first_line(cause, 160)})") from None
                time.sleep(min(delay, self.budget - (now - self._down_since)))
                delay, attempt = min(2 * delay, 8.0), attempt + 1
                continue
            if self._down_since is not None:
                log.warning("the Optuna storage %s is reachable again", _redact(self.url))
                self._down_since = None
            return result

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.rdb.record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - the heartbeat thread outlives any failure; the next beat tries again
            log.debug("missed a heartbeat: %s", first_line(exc))

    def trials_silent_for(self, study_id: int, seconds: float) -> list[int]:
        """IDs of the study's RUNNING trials whose last heartbeat is older than ``seconds``."""
        saved, self.rdb.grace_period = self.rdb.grace_period, seconds
        try:
            return self._call("_get_stale_trial_ids", study_id)
        finally:
            self.rdb.grace_period = saved


def _retried(name: str):
    def method(self, *args, **kwargs):
        return self._call(name, *args, **kwargs)

    method.__name__ = name
    return method


# Every other storage method is the RDB storage's, retried.
for _name in sorted({*optuna.storages.BaseStorage.__abstractmethods__, "get_n_trials", "get_best_trial",
                     "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "_get_stale_trial_ids",
                     "get_trial_number_from_id", "get_trial_param", "get_trial_id_from_study_id_trial_number",
                     "check_trial_is_updatable", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}):
    setattr(RetryingStorage, _name, _retried(_name))
del _name
abc.update_abstractmethods(RetryingStorage)


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker stopped sending heartbeats (a new trial with its parameters),
    which also ends the trial's MLflow run as FAILED with the reason; it would stay RUNNING forever."""

    def __init__(self, max_retry: int, grace_period: int):
        super().__init__(max_retry=max_retry)
        self.retries, self.grace_period = max_retry, grace_period

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().__call__(study, trial)
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        retried = len(history) <= self.retries
        _fail_run(trial.user_attrs.get(RUN_ATTR),
                  f"trial {trial.number}: its worker sent no heartbeat for {self.grace_period} s (killed, or cut off "
                  f"from the Optuna database), so Optuna failed the trial"
                  + ("; its parameters are retried in a new trial" if retried else
                     f"; not retried again (already tried {len(history)} times)"))


def _fail_run(run_id: str | None, reason: str) -> None:
    """End a trial's MLflow run as FAILED (best effort: the next worker's clean-up tries again)."""
    if not run_id:
        return
    try:
        tracking.fail_run(run_id, reason)
    except tracking.STORE_ERRORS as exc:
        log.warning("could not end MLflow run %s as FAILED yet (%s)", run_id, first_line(exc))


def serialise_sqlite_transactions(engine: Any) -> None:
    """Make every SQLite transaction of ``engine`` take the database's write lock when it begins.

    Python's sqlite3 driver begins a transaction only at the first write, so a read-then-write (Optuna
    claiming a waiting trial: "is it WAITING? then RUNNING") is not atomic: two workers both read WAITING
    and both run the trial. ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for the pysqlite driver) serialises
    them; PostgreSQL and MySQL lock the row (``SELECT ... FOR UPDATE``) and need nothing.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are not reused


def make_storage(url: str, heartbeat_interval: int = 30, grace_period: int | None = None,
                 max_retry: int = 2) -> RetryingStorage:
    """An RDB storage with heartbeats, so trials of killed workers are failed and retried, which rides out
    database outages shorter than the grace period (see :class:`RetryingStorage`)."""
    if not url or "://" not in url:
        raise DeepfakeError(f"--storage {url!r}: not a database URL; use e.g. sqlite:///optuna.db or "
                            "postgresql://user@host:5432/db")
    scheme = url.split("://", 1)[0]
    if not scheme.startswith(("sqlite", "postgresql", "mysql")):
        raise DeepfakeError(f"--storage {url}: unsupported scheme '{scheme}'; use sqlite:///… or postgresql://…")
    grace_period = grace_period or 2 * heartbeat_interval
    for attempt in range(4):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryStaleTrial(max_retry, grace_period),
                    engine_kwargs=None if scheme.startswith("sqlite") else {
                        "pool_pre_ping": True,  # reconnect after a database restart
                        "connect_args": {"connect_timeout": 10} if scheme.startswith("postgresql") else {},
                    },
                )
            if scheme.startswith("sqlite"):
                serialise_sqlite_transactions(rdb.engine)
            return RetryingStorage(rdb, url, budget=grace_period)
        except Exception as exc:  # noqa: BLE001 - any failure to open the user's --storage is reported in one line
            text = str(exc)
            # Workers starting together on a fresh database race to create Optuna's tables.
            if attempt < 3 and any(s in text for s in ("already exists", "duplicate key", "UniqueViolation")):
                time.sleep(1 + attempt)
                continue
            first = first_line(exc)
            raise DeepfakeError(f"--storage {url}: cannot open the Optuna storage ({first}); check that the database "
                                "server is running and the URL is right") from None
    raise AssertionError("unreachable")


class TrialPruned(optuna.TrialPruned, tracking.RunPruned):
    """Optuna's signal that a trial was pruned, which also ends the trial's MLflow run as PRUNED."""


class _PruningCallback(KerasPruningCallback):
    """Optuna's Keras pruning callback; a pruned trial's MLflow run is tagged ``state=PRUNED``."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        try:
            super().on_epoch_end(epoch, logs)
        except optuna.TrialPruned as exc:
            raise TrialPruned(*exc.args) from None


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
    see :func:`pareto_choice`). Trials are pruned on ``metric`` only when it alone is optimised.
    """
    import keras

    started = time.time()
    if metric not in METRICS:
        raise DeepfakeError(f"--metric {metric}: unknown; use one of {', '.join(METRICS)}")
    result_key, direction, epoch_key = METRICS[metric]
    if optimise not in OPTIMISE:
        raise DeepfakeError(f"--optimise {optimise}: use one of {', '.join(OPTIMISE)}")
    if optimise != "primary" and not also_data:
        raise DeepfakeError(f"--optimise {optimise} needs --also-data DIR: the dataset whose score it optimises")
    directions = {"primary": [direction], "also": ["maximize"], "both": [direction, "maximize"]}[optimise]
    space = search_space if isinstance(search_space, SearchSpace) else load_search_space(search_space)
    grace_period = grace_period or 2 * heartbeat_interval
    rdb = make_storage(storage, heartbeat_interval, grace_period)
    info = pipeline.prepare_dataset(cfg, echo)
    also = _also_split(cfg, also_data, echo) if also_data else None
    current: dict[str, Any] = {}  # the study and the trial this worker is running, for outage reports
    with _outages_reported(current, grace_period):
        study = _create_study(study_name, rdb, directions, sampler=TrialSeededSampler(
            space.sampler, study_name, cfg.train.seed), pruner=make_pruner(space.pruner))
        current["study"] = study
        enqueue_baseline(study, space, cfg, echo)
        parent = _parent_run(study, cfg, study_name, storage)
        _fail_stale_trials(study)
        _close_failed_runs(study, parent)
        out_root = Path(cfg.train.output_dir) / study_name

        def objective(trial: optuna.Trial) -> float:
            current["trial"] = trial.number
            keras.backend.clear_session()  # and one garbage collection (a full one takes seconds with TF loaded)
            params = space.suggest(trial)
            values = C.merge(cfg.to_dict(), C.nest(params))
            values["train"]["output_dir"] = str(out_root / f"trial_{trial.number:04d}")
            trial_cfg = C.from_dict(values)
            frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
            if frozen.user_attrs.get(FAILURE_ATTR):  # a retry inherits the failed trial's attributes
                trial.set_user_attr(FAILURE_ATTR, "")
            baseline = bool(frozen.user_attrs.get(BASELINE_ATTR))
            echo(f"\n[trial {trial.number}] {params}" + (" (baseline: the configuration's own values)" if baseline
                                                         else "")
                 + (f" (retry of trial {retried})" if retried is not None else ""))
            try:
                result = pipeline.run(
                    trial_cfg,
                    dataset=info,
                    callbacks=[_PruningCallback(trial, epoch_key)] if optimise == "primary" else [],
                    parent_run_id=parent,
                    run_name=f"trial-{trial.number:04d}",
                    tags={"optuna.study_name": study_name, "optuna.trial_number": str(trial.number),
                          **({"optuna.retry_of": str(retried)} if retried is not None else {}),
                          **({"optuna.baseline": "true"} if baseline else {})},
                    verbose=0,
                    echo=lambda s: None,
                    on_run_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id),
                    lean=True,
                    also=also,
                )
            except Exception as exc:
                what = None if isinstance(exc, StorageUnreachable) else tracking.unreachable(exc)
                if what is None:
                    raise
                with contextlib.suppress(Exception):
                    trial.set_user_attr(FAILURE_ATTR, f"trial {trial.number} failed: {what}")
                raise TrackingUnreachable(what) from None
            trial.set_user_attr(RUN_ATTR, result.run_id)
            trial.set_user_attr("model_uri", result.model_uri)
            if result.head_only and trial_cfg.tracking.log_model:  # its detector is assembled if it is the best
                trial.set_user_attr(HEAD_ONLY_ATTR, True)
            trial.set_user_attr("test_roc_auc", result.test_metrics["roc_auc"])
            value = float(result.val_metrics[result_key])
            if math.isnan(value):
                raise optuna.TrialPruned("validation metric is NaN")
            second = ""
            if result.also_metrics is not None:
                also_value = float(result.also_metrics["roc_auc"])
                trial.set_user_attr(ALSO_ATTR, also_value)
                second = f", --also-data ROC-AUC {also_value:.4f}"
            tracking.set_run_tags(result.run_id, {"state": "COMPLETE"})
            echo(f"[trial {trial.number}] {metric} = {value:.4f}  (test ROC-AUC {result.test_metrics['roc_auc']:.4f}"
                 f"{second}, {result.seconds:.0f}s)")
            if optimise == "also":
                return also_value
            if optimise == "both":
                return value, also_value
            return value

        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        echo(f"Study '{study_name}' ({_redact(storage)}): {done} finished trial(s) so far, target {n_trials}")
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
        _settle(study, rdb, heartbeat_interval, grace_period, echo)
        _close_failed_runs(study, parent)
        return summarize(study, parent, started, echo)


ALSO_ATTR = "also_roc_auc"  # a trial's ROC-AUC on the --also-data dataset


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


def pareto_choice(trials: Sequence[optuna.trial.FrozenTrial], directions: Sequence[Any]) -> optuna.trial.FrozenTrial:
    """The champion rule of a two-objective study: of its Pareto-optimal trials (``study.best_trials``), the one
    with the highest mean of the two scores (a loss counts as its negative); ties go to the better first score,
    then the earlier trial."""
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in directions]

    def key(t: optuna.trial.FrozenTrial) -> tuple:
        scores = [s * v for s, v in zip(signs, t.values, strict=True)]
        return (sum(scores) / len(scores), scores[0], -t.number)

    return max(trials, key=key)


def enqueue_baseline(study: optuna.Study, space: SearchSpace, cfg: C.Config,
                     echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """A new study (no trials yet) starts with the configuration's own values (:meth:`SearchSpace.baseline`):
    the baseline the sampler then has to beat. Returns the enqueued values; None for a study that has trials.
    Two workers starting a new study at once enqueue it once (``skip_if_exists``)."""
    if study.get_trials(deepcopy=False):
        return None
    values = space.baseline(cfg)
    if not values:
        return None
    study.enqueue_trial(values, user_attrs={BASELINE_ATTR: True}, skip_if_exists=True)
    echo(f"New study: the first trial is the configuration's own values, the baseline to beat: {values}")
    return values


class TrackingUnreachable(DeepfakeError):
    """The MLflow tracking store stayed unreachable for longer than MLflow's retries."""


def _outage(exc: BaseException) -> DeepfakeError | None:
    """The outage behind ``exc`` (Optuna's database or the MLflow tracking store), or None: one already
    reported as such, else a network or database error (:func:`deepfake.errors.outage_cause`, worded by
    :func:`deepfake.tracking.unreachable`)."""
    for error in exception_chain(exc):
        if isinstance(error, (StorageUnreachable, TrackingUnreachable)):
            return error
    what = tracking.unreachable(exc)
    return TrackingUnreachable(what) if what else None


class _QuietOutage(logging.Filter):
    """Optuna logs a failed trial with its traceback; a trial failed by an outage is reported in one line."""

    quiet: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and _outage(record.exc_info[1]) is not None:
            self.quiet = message.split(" ", 2)[1]  # "Trial 3 failed with parameters ..."
            return False
        return not (self.quiet and message.startswith(f"Trial {self.quiet} failed with value"))


@contextlib.contextmanager
def _outages_reported(current: dict[str, Any], grace_period: int):
    """Turn an outage that outlasted the retries into one line (and exit code 2), after queueing a retry
    of the trial it failed."""
    quiet = _QuietOutage()
    optimize_log = logging.getLogger("optuna.study._optimize")
    optimize_log.addFilter(quiet)
    try:
        yield
    except Exception as exc:
        outage = _outage(exc)
        if outage is None:
            raise
        number, what = current.get("trial"), "database" if isinstance(outage, StorageUnreachable) else "server"
        if number is not None and _retry_later(current["study"], number):
            note = f"; trial {number} failed and the next worker retries it"
        elif number is not None and what == "database":
            note = (f"; trial {number} stays RUNNING until its heartbeat expires ({grace_period} s), then the next "
                    "worker fails and retries it")
        else:
            note = ""
        raise DeepfakeError(f"{outage}{note}. Start the worker again when the {what} is back.") from None
    finally:
        optimize_log.removeFilter(quiet)


def _retry_later(study: optuna.Study, number: int) -> bool:
    """Queue a FAIL trial's parameters as a new trial (what a heartbeat retry does); best effort."""
    try:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if trial.state != TrialState.FAIL:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=2)(study, trial)
        return True
    except (StorageUnreachable, sqlalchemy.exc.SQLAlchemyError) as exc:  # the database is down too: the
        # trial is retried when its heartbeat expires
        log.debug("could not queue a retry of trial %s: %s", number, first_line(exc))
        return False


def _fail_stale_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose heartbeat expired (their retry and MLflow clean-up: :class:`RetryStaleTrial`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _settle(study: optuna.Study, storage: RetryingStorage, heartbeat_interval: int, grace_period: int,
            echo: Callable[[str], None]) -> None:
    """Before the study is reported: fail the trials of stopped workers, even those stopped too recently to
    be stale yet (they would stay RUNNING for good when no worker comes after this one).

    A live worker's trial sends a heartbeat every interval. Trials silent for longer are waited for until
    Optuna fails (and retries) them; trials that keep beating belong to live workers and are left alone.
    Waits at most about one grace period, and only while other trials are RUNNING.
    """
    silent_after = heartbeat_interval + max(1, min(5, heartbeat_interval))
    start, told = time.monotonic(), False
    while True:
        _fail_stale_trials(study)
        running = {t._trial_id: t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if not running:
            return
        silent = [running[i] for i in storage.trials_silent_for(study._study_id, silent_after) if i in running]
        waited = time.monotonic() - start
        if (not silent and waited >= silent_after) or waited >= grace_period + silent_after + 5:
            return
        if not told:
            echo(f"Trial(s) {sorted(running.values())} still RUNNING: waiting up to {grace_period + silent_after} s "
                 "to tell a stopped worker's trial (failed and retried once its heartbeat expires) from a live one")
            told = True
        time.sleep(1)


def _close_failed_runs(study: optuna.Study, parent: str) -> None:
    """End as FAILED, with the reason, the MLflow runs of failed trials (a killed worker's run would stay
    RUNNING forever), and any run under the study's parent run still RUNNING although its trial is not."""
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.FAIL:
            _fail_run(trial.user_attrs.get(RUN_ATTR),
                      trial.user_attrs.get(FAILURE_ATTR) or f"trial {trial.number} failed: its worker stopped")
    active = {str(t.number) for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)}
    for run_id, tags in tracking.running_child_runs(parent).items():
        number = tags.get("optuna.trial_number")
        if number not in active:
            _fail_run(run_id, f"trial {number} is not running in Optuna any more: its worker stopped before "
                              "ending this run")


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
