"""Everything that talks to MLflow lives here: runs, params, metrics, artifacts, models, registry.

Default tracking is embedded: ``sqlite:///mlflow.db`` in the working directory. Point
``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) at a PostgreSQL database or an
``mlflow server`` to share runs between machines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import mlflow
import mlflow.models
import mlflow.pyfunc
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from deepfake.config import Config, TrackingConfig, default_tracking_uri
from deepfake.errors import DeepfakeError, first_line, outage_cause

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow.data.pandas_dataset import PandasDataset

    from deepfake.audit import AuditResult
    from deepfake.data import DatasetInfo
    from deepfake.model import WeightsInfo

log = logging.getLogger(__name__)

# What talking to an MLflow tracking store raises when it fails: MLflow's own errors, network errors (those of
# requests are OSErrors too) and the database errors of a SQL store.
STORE_ERRORS = (MlflowException, OSError, sqlalchemy.exc.SQLAlchemyError)

PACKAGES = (
    "deepfake", "tensorflow", "tensorflow-cpu", "keras", "mlflow", "optuna", "optuna-integration",
    "scikit-learn", "numpy", "pillow", "matplotlib", "click", "pandas",
)
MODEL_NAME_IN_RUN = "model"
WEIGHTS_WARNING_TAG = "warning.weights"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


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
def _environment(values: dict[str, str]) -> Iterator[None]:
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
    with _environment({} if PROGRESS_BAR_ENV in os.environ else {PROGRESS_BAR_ENV: "false"}):
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
        with _environment(HTTP_PROBE if http else {}):  # but a wrong URL fails within seconds
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


class RunPruned(Exception):
    """Raised inside :func:`start_run` to end the run as pruned: status KILLED and the tag ``state=PRUNED``
    (a pruned Optuna trial raises one, :class:`deepfake.tuning.TrialPruned`)."""


@contextlib.contextmanager
def start_run(
    run_name: str | None = None,
    *,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> Iterator[Any]:
    """An MLflow run (resumed when ``run_id`` is given, nested under ``parent_run_id``).

    On an exception the run ends FAILED (KILLED for Ctrl-C) with a ``state`` tag and the error; a
    :class:`RunPruned` ends it KILLED with ``state=PRUNED``.
    """
    if run_id is None and parent_run_id is None:
        run_id = claim_project_run()
    run = mlflow.start_run(run_id=run_id, run_name=run_name if run_id is None else None,
                           parent_run_id=parent_run_id, tags=tags)
    status = "FINISHED"
    outage = False
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        mlflow.set_tag("state", "KILLED")
        raise
    except BaseException as exc:
        state = "PRUNED" if isinstance(exc, RunPruned) else "FAILED"
        status = "KILLED" if state == "PRUNED" else "FAILED"
        outage = unreachable(exc) is not None
        if not outage:  # with the store unreachable these would only wait out the same retries again
            mlflow.set_tag("state", state)
            if state == "FAILED":
                mlflow.set_tag("error", f"{type(exc).__name__}: {str(exc)[:500]}")
        raise
    finally:
        if outage:  # one attempt; a run left RUNNING is ended as FAILED by the next tuning worker
            try:
                with _environment(HTTP_NO_RETRIES):
                    mlflow.end_run(status=status)
            except STORE_ERRORS as exc:
                log.warning("could not end MLflow run %s (%s)", run.info.run_id, first_line(exc))
        else:
            mlflow.end_run(status=status)


@contextlib.contextmanager
def reopened_run(run_id: str) -> Iterator[Any]:
    """An ended run made active again to add to it (say, the detector of a head-only trial, assembled later),
    then ended with the status it had. A failure on the way leaves its status and tags as they were.

    The run may belong to another experiment than the active one (``deepfake register`` names none), which
    MLflow refuses to resume a run of: the active experiment is set aside meanwhile.
    """
    from mlflow.tracking import fluent

    status = mlflow.get_run(run_id).info.status
    active = getattr(fluent, "_active_experiment_id", None)
    fluent._active_experiment_id = None
    try:
        run = mlflow.start_run(run_id=run_id)
        try:
            yield run
        finally:
            mlflow.end_run(status=status)
    finally:
        fluent._active_experiment_id = active


def create_run(run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create a run without making it active (e.g. a study's parent run); return its id."""
    project_run = claim_project_run()
    if project_run:
        set_run_tags(project_run, tags or {})
        return project_run
    run = mlflow.start_run(run_name=run_name, tags=tags)
    mlflow.end_run(status="FINISHED")
    return run.info.run_id


def delete_run(run_id: str) -> None:
    mlflow.MlflowClient().delete_run(run_id)


def fail_run(run_id: str, reason: str) -> bool:
    """End a run as FAILED with ``state=FAILED`` and the reason in its ``error`` tag (an existing ``error``
    is kept). For runs a stopped worker left RUNNING, or that finished although their trial failed. Runs
    already FAILED or KILLED, and deleted runs, are left alone; returns whether the run was changed."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    if run.info.status in ("FAILED", "KILLED") or run.info.lifecycle_stage == "deleted":
        return False
    if "error" not in run.data.tags:
        client.set_tag(run_id, "error", reason[:500])
    client.set_tag(run_id, "state", "FAILED")
    client.set_terminated(run_id, status="FAILED")
    return True


def running_child_runs(parent_run_id: str) -> dict[str, dict[str, str]]:
    """Runs nested under ``parent_run_id`` whose status is still RUNNING: ``{run_id: tags}``."""
    client = mlflow.MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs(
        [experiment], max_results=5000,
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    return {run.info.run_id: dict(run.data.tags) for run in runs}


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_table_csv(frame: pd.DataFrame, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        frame.to_csv(path, index=False)
        mlflow.log_artifact(str(path), str(Path(artifact_file).parent) if "/" in artifact_file else None)


def log_figure(figure: Figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def log_config(cfg: Config, out_dir: str | Path | None = None) -> None:
    """Resolved config as params (flattened keys) and as ``config.yaml``; package versions as tags."""
    params = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in cfg.flat().items()}
    params = {k: v for k, v in params.items() if not k.startswith("tracking.")}
    mlflow.log_params(params)
    mlflow.log_text(cfg.to_yaml(), "config.yaml")
    versions = package_versions()
    mlflow.set_tags({f"version.{k}": v for k, v in versions.items()})
    mlflow.log_dict(versions, "environment/versions.json")


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({k: v for k, v in params.items()})


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_weights_info(info: WeightsInfo | None) -> None:
    """Record where the backbone weights came from; the random-init fallback gets a loud tag."""
    if info is None:
        return
    tags = {"weights.requested": info.requested, "weights.source": info.source, "model.backbone": info.backbone}
    if info.origin:
        tags["weights.origin"] = info.origin
    if info.warning:
        tags[WEIGHTS_WARNING_TAG] = info.warning
        mlflow.log_text(info.warning + "\n", "WARNING_random_init_weights.txt")
    set_tags(tags)


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}  # MLflow dataset input contexts


@contextlib.contextmanager
def _dataset_warnings_silenced() -> Iterator[None]:
    """MLflow registers its local dataset source type twice and warns that a path is ambiguous; it hints that
    an integer column cannot hold missing values (labels are never missing)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", message="Failed to determine whether .* can resolve source")  # MLflow 3.0
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        yield


def split_dataset(info: DatasetInfo, split: str) -> PandasDataset:
    """One split as an MLflow dataset: its files and labels (the digest changes when they do), named
    ``<dataset folder>-<split>``, with the folder the files come from (``ROOT/train``, or ``ROOT`` for an
    unsplit dataset) as its source; face crops and video frames name their source file."""
    import pandas as pd

    files = info.splits[split]
    frame = pd.DataFrame({"path": [str(p) for p in files.paths], "label": [int(y) for y in files.labels]})
    if files.groups:  # pictures made of videos or face crops: which file each came from
        frame.insert(1, "source", [str(g) for g in files.groups])
    sources = frame["source" if files.groups else "path"].tolist()
    folder = Path(os.path.commonpath(sources)) if len(frame) else Path(info.root)
    if not folder.is_dir():  # a split of one file
        folder = folder.parent
    with _dataset_warnings_silenced():
        return mlflow.data.from_pandas(frame, source=folder.absolute().as_uri(), targets="label",
                                       name=f"{Path(info.root).name}-{split}")


def log_dataset(info: DatasetInfo, evaluated: str | None = None, name: str | None = None) -> None:
    """Dataset summary (counts per split and class, skipped files) as JSON, text and params, and each split
    as an MLflow dataset input (:func:`split_dataset`) with the context training, validation or testing, so
    that the run shows its data lineage. An evaluation run names the split it ``evaluated``: that one is its
    only input, with the context ``evaluation``. A run evaluating several datasets gives each a ``name``: its
    files go below ``dataset/NAME/``, its metrics are ``dataset.NAME.*`` and its root the param
    ``dataset.NAME.root``."""
    for split_name in info.splits if evaluated is None else [evaluated]:
        with _dataset_warnings_silenced():
            mlflow.log_input(split_dataset(info, split_name),
                             context="evaluation" if evaluated else SPLIT_CONTEXTS.get(split_name, split_name))
    folder = f"dataset/{name}" if name else "dataset"
    key = f"dataset.{name}" if name else "dataset"
    summary = info.summary()
    mlflow.log_dict(summary, f"{folder}/summary.json")
    mlflow.log_text(info.report(), f"{folder}/report.txt")
    if info.leaks:
        mlflow.log_dict({"duplicates_across_splits": [vars(leak) for leak in info.leaks]}, f"{folder}/leakage.json")
    mlflow.log_params({f"{key}.root": str(info.root), f"{key}.layout": info.layout})
    metrics = {f"{key}.n_skipped": len(info.skipped)}
    for split_name, split in info.splits.items():
        for class_name, n in split.counts(info.class_names).items():
            metrics[f"{key}.{split_name}.{class_name}"] = n
    mlflow.log_metrics(metrics)


def log_audit(result: AuditResult) -> None:
    """A dataset audit (:mod:`deepfake.audit`): ``dataset/audit.csv``, ``audit.<property>_auc`` metrics and,
    when a property alone separates the classes, the tag ``warning.shortcut``."""
    log_table_csv(result.table, "dataset/audit.csv")
    log_metrics({f"audit.{row.property}_auc": row.roc_auc for row in result.table.itertuples()
                 if not math.isnan(row.roc_auc)})  # NaN: the property is not defined for both classes
    if result.shortcuts:
        mlflow.set_tag("warning.shortcut", ", ".join(result.shortcuts))


def log_metrics(metrics: dict[str, Any], prefix: str = "", step: int | None = None) -> None:
    clean = {}
    for key, value in metrics.items():
        try:
            clean[f"{prefix}{key}"] = float(value)
        except (TypeError, ValueError):
            continue
    mlflow.log_metrics(clean, step=step)


def log_artifacts(paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        elif path.is_file():
            mlflow.log_artifact(str(path), artifact_path)


def log_dict(data: dict, artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


class EpochLogger(keras.callbacks.Callback):
    """Keras callback: every epoch's logs as MLflow metrics, step = global epoch index."""

    def __init__(self, phase: str | None = None):
        super().__init__()
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs:  # one call per epoch: a head-only epoch on cached features takes less than a store round trip
            lr = getattr(self.model.optimizer, "learning_rate", None)
            extra = {} if lr is None else {"learning_rate": float(keras.ops.convert_to_numpy(lr))}
            log_metrics({**logs, **extra}, step=epoch)


# --------------------------------------------------------------------------- models


PYFUNC_MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # MLflow runs it to get the pyfunc (models-from-code)


def log_model(artifacts: dict[str, str], input_example: pd.DataFrame, output_example: pd.DataFrame,
              pip_requirements: list[str]) -> str:
    """Log a detector as an MLflow pyfunc from code; return its model URI.

    ``deepfake/pyfunc_model.py`` is logged as the model's code (MLflow runs it when the model is loaded;
    nothing is pickled), the ``deepfake`` package as its code path, ``artifacts`` (name -> file, as
    :func:`deepfake.inference.pyfunc_artifacts` gives them) as its files, and the signature is inferred from
    the example input and output.
    """
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        python_model=str(PYFUNC_MODEL_CODE),
        # Declared so that whoever loads the model may set them (MLflow lets a loader set only the keys a model
        # declares). Unset, paths are read in one's own process and refused when served (deepfake/pyfunc_model.py).
        model_config={"allow_paths": None, "path_root": ""},
        code_paths=[str(PYFUNC_MODEL_CODE.parent)],
        artifacts=artifacts,
        signature=mlflow.models.infer_signature(input_example, output_example),
        input_example=input_example,
        pip_requirements=pip_requirements,
    )
    return info.model_uri


def run_model_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{MODEL_NAME_IN_RUN}"


def download_model_dir(uri: str) -> Path:
    """Download a logged detector's ``model.keras`` and ``model.meta.json``; return their folder."""
    try:
        with quiet_downloads():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                             dst_path=tempfile.mkdtemp(prefix="deepfake-model-")))
    except STORE_ERRORS as exc:
        first = first_line(exc)
        raise DeepfakeError(
            f"--model {uri}: cannot download this model ({first}); check the URI, the tracking URI "
            "and that the model is registered (deepfake register)"
        ) from None
    artifacts = local / "artifacts"
    return artifacts if artifacts.is_dir() else local


def run_info(run_id: str) -> dict[str, Any]:
    try:
        run = mlflow.get_run(run_id)
    except STORE_ERRORS:
        raise DeepfakeError(f"--run {run_id}: no such MLflow run at {mlflow.get_tracking_uri()}") from None
    return {"run_id": run_id, "params": run.data.params, "metrics": run.data.metrics, "tags": run.data.tags,
            "status": run.info.status, "artifact_uri": run.info.artifact_uri}


def active_tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def is_model_uri(ref: str) -> bool:
    """``models:/…``, ``runs:/…`` and other URI schemes MLflow resolves (not plain paths)."""
    return ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "dbfs:/"))


def local_model(ref: str) -> str:
    """Where the model ``ref`` names is on this machine: an MLflow model URI (:func:`is_model_uri`) is
    downloaded first (:func:`download_model_dir`); a folder or file path is returned as it is."""
    return str(download_model_dir(ref)) if is_model_uri(ref) else ref


def model_run_id(model_uri: str) -> str | None:
    """The run that logged ``model_uri`` (``runs:/<run_id>/...`` or a logged model ``models:/m-...``)."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].split("/", 1)[0]
    if model_uri.startswith("models:/m-"):
        try:
            return mlflow.get_logged_model(model_uri[len("models:/"):].split("/", 1)[0]).source_run_id
        except mlflow.exceptions.MlflowException:
            return None
    return None


def find_version(name: str, model_uri: str) -> str | None:
    """The version of registered model ``name`` already registered from the run that logged ``model_uri``."""
    run_id = model_run_id(model_uri)
    if not run_id:
        return None
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException:
        return None
    return str(min(int(v.version) for v in versions)) if versions else None


def register_model(model_uri: str, name: str, tags: dict[str, Any] | None = None) -> str:
    """Register ``model_uri`` as a version of ``name``; return the version number.

    Idempotent per run: when the run that logged the model already has a version of ``name`` (a study or
    ``deepfake register`` run again, or a registration that was interrupted), that version is returned and
    only the tags it lacks are added.
    """
    tags = {k: str(v) for k, v in (tags or {}).items()}
    existing = find_version(name, model_uri)
    if existing is not None:
        present = version_info(name, existing)["tags"]
        set_version_tags(name, existing, {k: v for k, v in tags.items() if k not in present})
        return existing
    try:
        mv = mlflow.register_model(model_uri, name, tags=tags)
    except STORE_ERRORS as exc:
        first = first_line(exc)
        raise DeepfakeError(f"could not register {model_uri} as '{name}': {first}") from None
    return str(mv.version)


CHAMPION_ALIAS = "champion"


def alias_version(name: str, alias: str = CHAMPION_ALIAS) -> str | None:
    """The version of registered model ``name`` that ``alias`` points to, or None."""
    client = mlflow.MlflowClient()
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def set_alias(name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))


def set_version_tags(name: str, version: str, tags: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def version_info(name: str, version: str) -> dict[str, Any]:
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise DeepfakeError(f"--version {version}: model '{name}' has no such version") from None
    return {"version": str(mv.version), "run_id": mv.run_id, "source": mv.source, "tags": dict(mv.tags),
            "aliases": list(mv.aliases)}


def version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def download_run_artifacts(run_id: str, path: str = "") -> Path:
    """Download a run's artifacts (or those under ``path``) to a temporary folder."""
    try:
        with quiet_downloads():
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path or None,
                                                            dst_path=tempfile.mkdtemp(prefix="deepfake-run-")))
    except STORE_ERRORS as exc:
        first = first_line(exc)
        raise DeepfakeError(f"--run {run_id}: cannot read this run's artifacts ({first})") from None


def log_artifact_to_run(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Add a file to a run without reopening it (its status stays as it was)."""
    mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path)
