"""The detector is logged as MLflow models-from-code: no pickle, and it loads and answers like the Predictor."""

import base64
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from deepfake import tracking
from deepfake.inference import META_FILE, ModelMeta, Predictor, example_frames, pip_requirements, pyfunc_artifacts
from tests.helpers import tiny_config


@pytest.fixture()
def logged(tmp_path, untrained_detector):
    """The untrained tiny detector (read, not changed) logged as a pyfunc to a fresh MLflow store."""
    cfg = tiny_config(f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=pyfunc")
    model_dir = untrained_detector
    meta = ModelMeta.load(model_dir / META_FILE)
    tracking.setup(cfg.tracking)
    with tracking.start_run("pyfunc"):
        uri = tracking.log_model(pyfunc_artifacts(model_dir), *example_frames(meta), pip_requirements())
    return {"uri": uri, "model_dir": model_dir, "tmp": tmp_path}


def test_the_pyfunc_is_logged_from_code_without_a_pickle(logged):
    local = Path(mlflow.artifacts.download_artifacts(logged["uri"], dst_path=str(logged["tmp"] / "download")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert Path(flavor["model_code_path"]).name == "pyfunc_model.py"
    assert not list(local.rglob("*.pkl")) and "python_model" not in flavor
    assert (local / "code" / "deepfake" / "inference.py").is_file()  # the package travels with the model


def test_the_logged_pyfunc_answers_as_the_predictor(logged, tiny_split_dataset):
    images = sorted((tiny_split_dataset / "test").rglob("*.jpg"))[:4]
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in images] + ["not an image"]})
    out = mlflow.pyfunc.load_model(logged["uri"]).predict(frame)
    expected = Predictor.from_dir(logged["model_dir"]).predict_values(list(frame["image"]))
    assert out["fake_probability"].tolist()[:4] == pytest.approx([r["fake_probability"] for r in expected[:4]])
    assert out.loc[4, "fake_probability"] is None and out.loc[4, "error"]
