"""MLflow runs: opening, ending and failing them, and what is logged to the active one (config, params,
metrics, tags, artifacts, figures, tables)."""

from __future__ import annotations

import contextlib
import logging
import platform
import tempfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from deepfake.config import Config
from deepfake.errors import DeepfakeError, first_line
from deepfake.tracking.store import (
    HTTP_NO_RETRIES,
    STORE_ERRORS,
    claim_project_run,
    environment,
    quiet_downloads,
    unreachable,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from deepfake.model import WeightsInfo

log = logging.getLogger(__name__)

PACKAGES = (
    "deepfake", "tensorflow", "tensorflow-cpu", "keras", "mlflow", "optuna", "optuna-integration",
    "scikit-learn", "numpy", "pillow", "matplotlib", "click", "pandas",
)
WEIGHTS_WARNING_TAG = "warning.weights"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


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
                with environment(HTTP_NO_RETRIES):
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


def run_info(run_id: str) -> dict[str, Any]:
    try:
        run = mlflow.get_run(run_id)
    except STORE_ERRORS:
        raise DeepfakeError(f"--run {run_id}: no such MLflow run at {mlflow.get_tracking_uri()}") from None
    return {"run_id": run_id, "params": run.data.params, "metrics": run.data.metrics, "tags": run.data.tags,
            "status": run.info.status, "artifact_uri": run.info.artifact_uri}


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
