"""Shared fixtures: tiny generated datasets and tiny detectors (no test needs real data or the network).

The tiny configuration itself is :func:`tests.helpers.tiny_config` (32 px, random weights, an 8-unit head);
``tiny_cfg`` binds it to the test's own output folder, and ``untrained_detector`` is that model built and saved
once per session (``detector_copy`` gives a test its own copy, with its own metadata).
"""

import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import SEARCH_SPACE, copy_detector, tiny_config

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SESSION_MLFLOW_ENV = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}


@pytest.fixture(scope="session")
def tiny_split_dataset(tmp_path_factory):
    """A split dataset (train/val/test x real/fake) of 32 px JPEGs, 12 images per class."""
    from deepfake.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("tiny_split")
    make_demo_dataset(root, per_class=12, size=32, seed=7)
    return root


@pytest.fixture()
def env(tmp_path, monkeypatch, tiny_split_dataset):
    """Where a tuning test's studies run (:func:`tests.helpers.tune_args`): ``tmp``, this test's folder and working
    directory; ``uri`` and ``storage``, SQLite MLflow and Optuna databases there; ``data``, the tiny split dataset;
    ``space``, a search space file (:data:`tests.helpers.SEARCH_SPACE`, random sampler)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space = tmp_path / "search_space.yaml"
    space.write_text(SEARCH_SPACE % "random")
    return SimpleNamespace(tmp=tmp_path, uri=f"sqlite:///{tmp_path}/mlflow.db", storage=f"sqlite:///{tmp_path}/optuna.db",
                           data=str(tiny_split_dataset), space=space)


@pytest.fixture()
def tiny_cfg(tmp_path):
    """``tiny_cfg(*sets, data=None)``: the tiny configuration with its outputs under this test's tmp_path."""

    def make(*sets: str, data: object = None):
        return tiny_config(*sets, data=data, out=tmp_path / "out")

    return make


@pytest.fixture(scope="session")
def untrained_detector(tmp_path_factory) -> Path:
    """The tiny ResNet50 detector (32 px, head [8], seeded random weights), built and saved once: a folder with
    model.keras and model.meta.json (threshold 0.5). Enough for every test of the mechanics around a model."""
    import keras

    from deepfake import model as M
    from deepfake.inference import ModelMeta, save_detector

    keras.utils.set_random_seed(0)  # the same detector every run
    folder = tmp_path_factory.mktemp("untrained_detector")
    return save_detector(M.build_model(tiny_config()), ModelMeta(threshold=0.5, image_size=32), folder)


@pytest.fixture()
def detector_copy(untrained_detector, tmp_path):
    """``detector_copy(folder=None, **meta)``: a copy of the untrained detector with metadata fields changed."""

    def make(folder: Path | None = None, **meta) -> Path:
        return copy_detector(untrained_detector, folder or tmp_path / "detector", **meta)

    return make


@pytest.fixture(scope="session")
def one_onnx_conversion(tmp_path_factory):
    """From first use on, `deepfake.export.to_onnx` converts each distinct model (architecture and weights) once
    per session and copies that file for later exports of the same model: the conversion (tf2onnx, tens of seconds
    for a ResNet50) is the same work every time, and the export tests export one detector many times."""
    import hashlib
    import json

    import numpy as np

    from deepfake import export as X

    convert, folder, done = X.to_onnx, tmp_path_factory.mktemp("onnx"), {}

    def to_onnx(model, path):
        digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
        for weights in model.get_weights():
            digest.update(np.ascontiguousarray(weights).tobytes())
        key = digest.hexdigest()
        if key not in done:
            convert(model, folder / f"{key}.onnx")
            done[key] = folder / f"{key}.onnx"
        shutil.copyfile(done[key], path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(X, "to_onnx", to_onnx)
        yield done


@pytest.fixture()
def tiny_unsplit_dataset(tmp_path):
    """An unsplit dataset (real/, fake/) of 32 px images, 20 per class."""
    from deepfake.demo import make_demo_dataset

    src = tmp_path / "src"
    make_demo_dataset(src, per_class=20, size=32, seed=8)
    root = tmp_path / "unsplit"
    for cls in ("real", "fake"):
        (root / cls).mkdir(parents=True)
        for f in src.glob(f"*/{cls}/*.jpg"):
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(autouse=True)
def _tensorflow_functions_eager(request):
    """In-process tests run TensorFlow functions eagerly: tracing Keras' train step costs more than the few steps
    of a tiny model (fine-tuning the tiny ResNet50 for an epoch: 24 s traced, 6.5 s eager, on 2 cores), and what
    they check (checkpoints, resume, metrics, logging) does not depend on it. Tests marked ``graph`` run compiled,
    as users' training does, and so does every command a test starts in a subprocess. tf.data pipelines are
    compiled either way."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(request.node.get_closest_marker("graph") is None)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """Training may switch Keras to mixed precision; every test starts from float32."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True)
def _isolated_environment():
    """``mlflow.set_experiment`` exports MLFLOW_EXPERIMENT_ID into ``os.environ``; a later test (or a
    subprocess it starts, such as ``mlflow run``) would inherit an experiment id from another
    test's database. Every test ends with the MLFLOW_* variables the session started with (module-scoped
    fixtures pass their tracking URI explicitly)."""
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in _SESSION_MLFLOW_ENV]:
        del os.environ[key]
    os.environ.update(_SESSION_MLFLOW_ENV)
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        while fluent.active_run() is not None:
            fluent.end_run()
        fluent._active_experiment_id = None
