"""Shared fixtures: tiny generated datasets (no test needs real data or the network)."""

import os
import sys

import pytest

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
def tiny_unsplit_dataset(tmp_path):
    """An unsplit dataset (real/, fake/) of 32 px images, 20 per class."""
    import shutil

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
