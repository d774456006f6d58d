"""Optuna's RDB storage with heartbeats, riding out database outages; SQLite transactions serialised.

A trial left RUNNING by a killed worker is failed once its heartbeat expires, and retried in a new trial
(:class:`RetryStaleTrial`), whose MLflow run is ended as FAILED.
"""

from __future__ import annotations

import abc
import logging
import time
import warnings
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from deepfake import tracking
from deepfake.errors import DeepfakeError, first_line, outage_cause
from deepfake.tuning.attributes import RUN_ATTR

log = logging.getLogger(__name__)


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
                                redact(self.url), first_line(cause, 160), self.budget)
                if now - self._down_since >= self.budget:
                    raise StorageUnreachable(
                        f"--storage {redact(self.url)}: the Optuna database has been unreachable for "
                        f"{now - self._down_since:.0f} s ({first_line(cause, 160)})") from None
                time.sleep(min(delay, self.budget - (now - self._down_since)))
                delay, attempt = min(2 * delay, 8.0), attempt + 1
                continue
            if self._down_since is not None:
                log.warning("the Optuna storage %s is reachable again", redact(self.url))
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
        fail_run(trial.user_attrs.get(RUN_ATTR),
                 f"trial {trial.number}: its worker sent no heartbeat for {self.grace_period} s (killed, or cut off "
                 f"from the Optuna database), so Optuna failed the trial"
                 + ("; its parameters are retried in a new trial" if retried else
                    f"; not retried again (already tried {len(history)} times)"))


def fail_run(run_id: str | None, reason: str) -> None:
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


def redact(url: str) -> str:
    """A storage URL without its user and password, for messages and tags."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url

