"""Outages and stopped workers: one-line reports of an outage that outlasted the retries, and the clean-up
of the trials (and MLflow runs) that stopped workers left behind."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from deepfake import tracking
from deepfake.errors import DeepfakeError, exception_chain, first_line
from deepfake.tuning.attributes import FAILURE_ATTR, RUN_ATTR
from deepfake.tuning.storage import RetryingStorage, StorageUnreachable, fail_run

log = logging.getLogger(__name__)


class TrackingUnreachable(DeepfakeError):
    """The MLflow tracking store stayed unreachable for longer than MLflow's retries."""


def outage_error(exc: BaseException) -> DeepfakeError | None:
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
        if record.exc_info and outage_error(record.exc_info[1]) is not None:
            self.quiet = message.split(" ", 2)[1]  # "Trial 3 failed with parameters ..."
            return False
        return not (self.quiet and message.startswith(f"Trial {self.quiet} failed with value"))


@contextlib.contextmanager
def outages_reported(current: dict[str, Any], grace_period: int) -> Iterator[None]:
    """Turn an outage that outlasted the retries into one line (and exit code 2), after queueing a retry
    of the trial it failed."""
    quiet = _QuietOutage()
    optimize_log = logging.getLogger("optuna.study._optimize")
    optimize_log.addFilter(quiet)
    try:
        yield
    except Exception as exc:
        outage = outage_error(exc)
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


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose heartbeat expired (their retry and MLflow clean-up:
    :class:`deepfake.tuning.storage.RetryStaleTrial`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def settle(study: optuna.Study, storage: RetryingStorage, heartbeat_interval: int, grace_period: int,
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
        fail_stale_trials(study)
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


def close_failed_runs(study: optuna.Study, parent: str) -> None:
    """End as FAILED, with the reason, the MLflow runs of failed trials (a killed worker's run would stay
    RUNNING forever), and any run under the study's parent run still RUNNING although its trial is not."""
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.FAIL:
            fail_run(trial.user_attrs.get(RUN_ATTR),
                     trial.user_attrs.get(FAILURE_ATTR) or f"trial {trial.number} failed: its worker stopped")
    active = {str(t.number) for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)}
    for run_id, tags in tracking.running_child_runs(parent).items():
        number = tags.get("optuna.trial_number")
        if number not in active:
            fail_run(run_id, f"trial {number} is not running in Optuna any more: its worker stopped before "
                             "ending this run")

