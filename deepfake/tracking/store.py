"""The MLflow tracking store: where it is (:func:`setup`), riding out its outages, and what failing to reach it
looks like (:func:`unreachable`, :func:`outages_reported`).

Default tracking is embedded: ``sqlite:///mlflow.db`` in the working directory. Point
``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) at a PostgreSQL database or an
``mlflow server`` to share runs between machines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator

import mlflow
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from deepfake.config import TrackingConfig, default_tracking_uri
from deepfake.errors import DeepfakeError, first_line, outage_cause

log = logging.getLogger(__name__)

# What talking to an MLflow tracking store raises when it fails: MLflow's own errors, network errors (those of
# requests are OSErrors too) and the database errors of a SQL store.
STORE_ERRORS = (MlflowException, OSError, sqlalchemy.exc.SQLAlchemyError)

_project_run: dict[str, str | None] = {"id": None}


def claim_project_run() -> str | None:
    """The run that ``mlflow run`` created for this process, once (then None).

    Under ``mlflow run`` the first run we open (a training run, or a study's parent run) *is*
    the project's run, so what ``mlflow run`` reports and what we log are one run.
    """
    run_id, _project_run["id"] = _project_run["id"], None
    return run_id


# MLflow's HTTP client retries with exponential backoff (0, 2, 4, 8, 16, 32 s): a tracking server that is
# down for up to about a minute (a restart) is ridden out. The start-up check uses few retries, so that a
# wrong --tracking-uri fails within seconds; cleaning up after an outage uses none.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
HTTP_PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
HTTP_NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class _RetryNotice(logging.Filter):
    """urllib3 logs each retry of a request in a long line; during an outage, say it once a minute instead."""

    uri, last = "", -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Retrying"):
            return True
        now = time.monotonic()
        if now - self.last < 60:
            return False
        self.last = now
        record.msg, record.args = "MLflow tracking server %s is not answering; retrying for up to about a minute", (
            self.uri,)
        return True


_RETRY_NOTICE = _RetryNotice()


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block (MLflow reads its HTTP settings per request)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No "Downloading artifacts" progress bars in the block: MLflow draws one per download, several per model
    load, and they flood the output of predict, evaluate and suite. The user's own
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` wins."""
    with environment({} if PROGRESS_BAR_ENV in os.environ else {PROGRESS_BAR_ENV: "false"}):
        yield


def unreachable(exc: BaseException) -> str | None:
    """One line naming the tracking store when ``exc`` (or an error behind it) means it cannot be reached
    (connection refused or timed out, retries exhausted: :func:`deepfake.errors.outage_cause`); None for any
    other error. An error raised ``from None`` hides what it was raised while handling."""
    error = outage_cause(exc, suppressed_context=False)
    if error is None:
        return None
    return (f"--tracking-uri {mlflow.get_tracking_uri()}: the MLflow tracking store cannot be reached "
            f"({first_line(error, 160)})")


@contextlib.contextmanager
def outages_reported(hint: str = "") -> Iterator[None]:
    """A tracking store still unreachable after MLflow's retries becomes a one-line error (exit code 2)."""
    try:
        yield
    except DeepfakeError:
        raise
    except Exception as exc:
        what = unreachable(exc)
        if what is None:
            raise
        raise DeepfakeError(what + hint) from None


def setup(tracking: TrackingConfig) -> str:
    """Point MLflow at the tracking URI and experiment; fail fast with a one-line error.

    Launched by ``mlflow run``, the project's run and experiment are adopted instead.
    """
    project_run = os.environ.pop("MLFLOW_RUN_ID", None)  # else every start_run() would resume it
    uri = default_tracking_uri(tracking.tracking_uri)
    http = uri.startswith(("http://", "https://"))
    if http:  # ride out short server outages (the user's own MLFLOW_HTTP_REQUEST_* settings win)
        for key, value in HTTP_RETRIES.items():
            os.environ.setdefault(key, value)
        _RETRY_NOTICE.uri = uri
        logging.getLogger("urllib3.connectionpool").addFilter(_RETRY_NOTICE)
    mlflow.set_tracking_uri(uri)
    try:
        with environment(HTTP_PROBE if http else {}):  # but a wrong URL fails within seconds
            if project_run:
                os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
                mlflow.set_experiment(experiment_id=mlflow.get_run(project_run).info.experiment_id)
                _project_run["id"] = project_run
            else:
                mlflow.set_experiment(tracking.experiment)
    except STORE_ERRORS as exc:
        first = first_line(exc)
        raise DeepfakeError(
            f"--tracking-uri {uri}: cannot reach the MLflow tracking store ({first}); "
            "check the URL, that the server or database is running, or unset MLFLOW_TRACKING_URI"
        ) from None
    return uri


def active_tracking_uri() -> str:
    return mlflow.get_tracking_uri()
