"""ONNX export agrees with Keras and serves `deepfake predict`."""

import numpy as np
from click.testing import CliRunner

from deepfake import config as C
from deepfake import model as M
from deepfake.cli import main
from deepfake.inference import ModelMeta, OnnxModel, Predictor, save_detector


def test_export_matches_keras_and_predict_uses_it(tmp_path, tiny_split_dataset):
    cfg = C.resolve(set_args=["data.image_size=32", "model.weights=none", "model.head_units=[8]"])
    model = M.build_model(cfg)
    save_detector(model, ModelMeta(threshold=0.5, image_size=32), tmp_path / "keras")
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "keras"), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    onnx = OnnxModel(tmp_path / "onnx" / "model.onnx")
    x = np.random.default_rng(1).uniform(0, 255, (100, 32, 32, 3)).astype("float32")
    diff = np.abs(onnx.predict(x) - model.predict(x, verbose=0)).max()
    assert diff < 1e-3
    exported = Predictor.from_dir(tmp_path / "onnx")
    assert isinstance(exported.model, OnnxModel) and exported.meta.image_size == 32
    images = sorted(str(p) for p in (tiny_split_dataset / "test").rglob("*.jpg"))
    keras_rows = Predictor.from_dir(tmp_path / "keras").predict_values(images)
    onnx_rows = exported.predict_values(images)
    for a, b in zip(keras_rows, onnx_rows, strict=True):
        assert abs(a["fake_probability"] - b["fake_probability"]) < 1e-3 and a["label"] == b["label"]
    cli = CliRunner().invoke(main, ["predict", "--model", str(tmp_path / "onnx"), *images])
    assert cli.exit_code == 0, cli.output
    bad = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "onnx"), "--out", str(tmp_path / "again")])
    assert bad.exit_code == 2 and "already" in bad.output
