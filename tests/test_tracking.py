"""deepfake.tracking on its own, on a temporary SQLite store: the configuration and the dataset (with its
lineage) logged to a run, registration idempotent per run, failed runs, quiet downloads."""

import json
import os
import subprocess
import sys

import keras
import mlflow
import pytest

from deepfake import config as C
from deepfake import data as D
from deepfake import tracking
from deepfake.inference import ModelMeta, example_frames, pip_requirements, pyfunc_artifacts, save_detector

MODEL_NAME = "unit-detector"


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    """A configuration whose tracking store is a fresh SQLite file, set up as the commands set it up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = C.resolve(set_args=[f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=unit",
                              "train.epochs=3", "model.head_units=[16,8]"])
    tracking.setup(cfg.tracking)
    return cfg


def log_tiny_detector(folder):
    """Log a detector without a backbone (32 px in, mean colour -> sigmoid), as training logs its model."""
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    meta = ModelMeta(image_size=32, threshold=0.4)
    model_dir = save_detector(model, meta, folder)
    return tracking.log_model(pyfunc_artifacts(model_dir), *example_frames(meta), pip_requirements())


def inputs_by_context(run_id):
    """A run's dataset inputs: ``{context: dataset}``."""
    out = {}
    for item in mlflow.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        out[tags["mlflow.data.context"]] = item.dataset
    return out


def test_log_config_logs_params_the_yaml_and_package_versions(cfg):
    with tracking.start_run("config") as run:
        tracking.log_config(cfg)
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.params["train.epochs"] == "3" and logged.data.params["model.head_units"] == "16,8"
    assert not [k for k in logged.data.params if k.startswith("tracking.")]  # the store is not a parameter
    assert logged.data.tags["version.mlflow"] == mlflow.__version__
    assert C.resolve([tracking.download_run_artifacts(run.info.run_id, "config.yaml")]) == cfg


def test_log_dataset_counts_and_one_input_per_split_with_its_folder(cfg, tiny_split_dataset):
    cfg.data.path = str(tiny_split_dataset)
    info = D.scan_dataset(cfg.data, seed=0)
    with tracking.start_run("data") as run:
        tracking.log_dataset(info)
    logged = mlflow.get_run(run.info.run_id)
    for split in ("train", "val", "test"):
        for label in ("real", "fake"):
            files = list((tiny_split_dataset / split / label).glob("*.jpg"))
            assert logged.data.metrics[f"dataset.{split}.{label}"] == len(files) > 0
    assert logged.data.params["dataset.layout"] == "split"
    inputs = inputs_by_context(run.info.run_id)
    assert set(inputs) == {"training", "validation", "testing"}
    for context, split in (("training", "train"), ("validation", "val"), ("testing", "test")):
        dataset = inputs[context]
        assert dataset.name == f"{tiny_split_dataset.name}-{split}"
        assert dataset.source_type == "local"
        assert json.loads(dataset.source)["uri"] == (tiny_split_dataset / split).absolute().as_uri()
        assert json.loads(dataset.profile)["num_rows"] == len(list((tiny_split_dataset / split).rglob("*.jpg")))
    assert len({d.digest for d in inputs.values()}) == 3  # the digest is the split's files, not its size


def test_log_dataset_of_an_unsplit_folder_and_of_an_evaluation(cfg, tiny_unsplit_dataset):
    cfg.data.path = str(tiny_unsplit_dataset)
    info = D.scan_dataset(cfg.data, seed=0)
    with tracking.start_run("unsplit") as run:
        tracking.log_dataset(info)
    root = tiny_unsplit_dataset.absolute().as_uri()
    assert {json.loads(d.source)["uri"] for d in inputs_by_context(run.info.run_id).values()} == {root}
    with tracking.start_run("evaluation") as run:
        tracking.log_dataset(info, evaluated="test")
    inputs = inputs_by_context(run.info.run_id)
    assert list(inputs) == ["evaluation"] and inputs["evaluation"].name == f"{tiny_unsplit_dataset.name}-test"


def test_register_model_is_idempotent_per_run(cfg, tmp_path):
    with tracking.start_run("first"):
        first = log_tiny_detector(tmp_path / "first")
    version = tracking.register_model(first, MODEL_NAME, tags={"val_auc": 0.9})
    # Registering the same run's model again (a study run again, an interrupted registration) reuses the
    # version and adds only the tags it lacks.
    again = tracking.register_model(first, MODEL_NAME, tags={"val_auc": 0.1, "test_auc": 0.8})
    assert again == version == "1"
    tags = tracking.version_info(MODEL_NAME, version)["tags"]
    assert tags["val_auc"] == "0.9" and tags["test_auc"] == "0.8"
    with tracking.start_run("second"):
        second = log_tiny_detector(tmp_path / "second")
    assert tracking.register_model(second, MODEL_NAME) == "2"
    assert len(mlflow.MlflowClient().search_model_versions(f"name = '{MODEL_NAME}'")) == 2


def test_a_run_that_raises_ends_failed_with_the_error(cfg):
    with pytest.raises(ValueError), tracking.start_run("broken") as run:
        raise ValueError("the data went away")
    logged = mlflow.get_run(run.info.run_id)
    assert logged.info.status == "FAILED" and logged.data.tags["state"] == "FAILED"
    assert logged.data.tags["error"] == "ValueError: the data went away"


def test_downloads_draw_no_progress_bars_unless_asked(cfg, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.txt").write_text(str(i))
    with tracking.start_run("artifacts") as run:
        mlflow.log_artifacts(str(folder), "model")
    capsys.readouterr()
    local = tracking.download_model_dir(f"runs:/{run.info.run_id}/model")
    assert sorted(p.name for p in local.iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]
    assert "Downloading artifacts" not in capsys.readouterr().err
    assert tracking.PROGRESS_BAR_ENV not in os.environ  # set only while downloading
    monkeypatch.setenv(tracking.PROGRESS_BAR_ENV, "true")  # the user's own choice wins
    tracking.download_run_artifacts(run.info.run_id, "model")
    assert "Downloading artifacts" in capsys.readouterr().err


# What `deepfake register`, `promote` and `report` import when they run: they read runs and models and score
# through the predictor, which loads Keras only once a Keras model is loaded.
READ_ONLY_COMMANDS = """
import json, sys
import deepfake.cli.promote, deepfake.cli.register, deepfake.cli.report
from deepfake import data, registry, report, tracking
from deepfake.config import TrackingConfig, resolve
print(json.dumps(sorted(m for m in ("keras", "tensorflow", "torch") if m in sys.modules)))
"""


def test_register_promote_and_report_import_no_keras():
    done = subprocess.run([sys.executable, "-c", READ_ONLY_COMMANDS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_a_dataset_another_worker_stored_at_the_same_moment_is_logged_on_the_second_try(monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from deepfake.tracking import lineage

    calls = []

    def log_input(dataset, context):
        calls.append(context)
        if len(calls) == 1:  # what PostgreSQL answers when a second worker inserts the same dataset meanwhile
            raise MlflowException('(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint '
                                  '"dataset_pk"')

    monkeypatch.setattr(mlflow, "log_input", log_input)
    lineage._log_input(object(), "training")
    assert calls == ["training", "training"]
    monkeypatch.setattr(mlflow, "log_input", lambda dataset, context: (_ for _ in ()).throw(MlflowException("boom")))
    with pytest.raises(MlflowException, match="boom"):  # other errors are not retried
        lineage._log_input(object(), "training")
