"""Logged models and the Model Registry: a detector logged as an MLflow pyfunc (from code), model URIs resolved
to local folders, registered versions, their tags and the ``@champion`` alias."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.models
import mlflow.pyfunc

from deepfake.errors import DeepfakeError, first_line
from deepfake.tracking.store import STORE_ERRORS, quiet_downloads

if TYPE_CHECKING:
    import pandas as pd

MODEL_NAME_IN_RUN = "model"
PYFUNC_MODEL_CODE = Path(__file__).parents[1] / "pyfunc_model.py"  # MLflow runs it to get the pyfunc (models-from-code)


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



SHOWN_METRICS = ("test_roc_auc", "test_average_precision", "test_accuracy", "test_eer", "test_n")


def describe_model(uri: str) -> dict[str, Any]:
    """What a served model's page shows about a registry or run URI: registered ``name`` and ``version`` (for
    ``models:/NAME/VERSION`` and ``models:/NAME@ALIAS``), ``run_id``, the ``datasets`` its run trained on (folder
    names) and its main test metrics (:data:`SHOWN_METRICS`, from the version's tags). Best effort: what the
    store cannot say is left out."""
    out: dict[str, Any] = {"uri": uri}
    client = mlflow.MlflowClient()
    try:
        if uri.startswith("models:/") and not uri.startswith("models:/m-"):
            ref = uri[len("models:/"):].split("/")
            name = ref[0]
            if "@" in name:
                name, alias = name.split("@", 1)
                mv = client.get_model_version_by_alias(name, alias)
            else:
                mv = client.get_model_version(name, ref[1])
            out |= {"name": name, "version": str(mv.version), "run_id": mv.run_id,
                    "metrics": {k: float(mv.tags[k]) for k in SHOWN_METRICS if k in mv.tags}}
        else:
            out["run_id"] = model_run_id(uri)
        if out.get("run_id"):
            params = mlflow.get_run(out["run_id"]).data.params
            paths = [params.get("data.path") or "", *(params.get("data.extra_paths") or "").split(",")]
            out["datasets"] = [Path(p).name for p in paths if p]
    except (mlflow.exceptions.MlflowException, *STORE_ERRORS, IndexError):
        pass
    return out
