"""Exports (ONNX, OpenVINO float32/bf16/int8) agree with Keras, are refused when they do not, and serve
`deepfake predict`, the pyfunc and the registry."""

import numpy as np
import pytest
from click.testing import CliRunner

from deepfake import config as C
from deepfake import data as D
from deepfake import model as M
from deepfake.cli import main
from deepfake.errors import DeepfakeError
from deepfake.export import MAX_ABS_DIFF, MAX_AUC_DROP, export
from deepfake.inference import KERAS_FILE, OnnxModel, OpenVinoModel, Predictor
from tests.helpers import copy_detector

pytestmark = pytest.mark.usefixtures("one_onnx_conversion")  # one detector, converted to ONNX once


def test_export_matches_keras_and_predict_uses_it(tmp_path, tiny_split_dataset, detector_copy):
    model = M.load_keras_model(detector_copy(tmp_path / "keras") / KERAS_FILE)
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


@pytest.fixture(scope="module")
def keras_detector(tmp_path_factory, untrained_detector):
    """The tiny untrained detector (seeded: its int8 check passes or fails alike every run) with a threshold and
    temperature of its own."""
    return copy_detector(untrained_detector, tmp_path_factory.mktemp("keras"), threshold=0.4, temperature=1.5)


def _val_split(root):
    return D.scan_dataset(C.DataConfig(path=str(root)), check_images=False).splits["val"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, keras_detector, tiny_split_dataset):
    """The detector exported once to each OpenVINO format (checked on the validation split): format -> (folder,
    the export's check figures)."""
    root = tmp_path_factory.mktemp("exported")
    return {fmt: (root / fmt, export(Predictor.from_dir(keras_detector), root / fmt, fmt,
                                     split=_val_split(tiny_split_dataset)))
            for fmt in ("openvino", "openvino-bf16", "openvino-int8")}


@pytest.mark.parametrize("fmt", ["openvino", "openvino-bf16", "openvino-int8"])
def test_openvino_exports_agree_with_keras_and_serve_predict(exported, keras_detector, tiny_split_dataset, fmt):
    folder, info = exported[fmt]
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.meta.json", "model.xml"]
    assert info["max_abs_diff"] <= MAX_ABS_DIFF[fmt] and info["roc_auc_keras"] is not None
    assert info["roc_auc_keras"] - info["roc_auc_export"] <= MAX_AUC_DROP  # the rule the export applies
    keras_predictor, predictor = Predictor.from_dir(keras_detector), Predictor.from_dir(folder)
    assert isinstance(predictor.model, OpenVinoModel) and predictor.meta.format == fmt
    assert predictor.meta.threshold == 0.4 and predictor.meta.temperature == 1.5  # the detector's own, kept
    images = sorted(str(p) for p in (tiny_split_dataset / "test").rglob("*.jpg"))
    x = np.stack([keras_predictor.decode(path) for path in images])  # held out: the test split
    diff = np.abs(predictor.predict_arrays(x) - keras_predictor.predict_arrays(x)).max()
    assert diff < {"openvino": 1e-4, "openvino-bf16": 0.05, "openvino-int8": 0.1}[fmt]
    cli = CliRunner().invoke(main, ["predict", "--model", str(folder), *images])
    assert cli.exit_code == 0, cli.output
    assert f"{len(images)} answered" in cli.output
    assert sum(line.startswith(tuple(images)) for line in cli.output.splitlines()) == len(images)


def test_the_int8_model_keeps_preprocessing_and_head_in_float32(exported):
    import openvino as ov

    ops = ov.Core().read_model(str(exported["openvino-int8"][0] / "model.xml")).get_ops()
    quantised = [op.get_friendly_name() for op in ops if op.get_type_name() == "FakeQuantize"]
    assert len(quantised) > 20  # the backbone's convolutions run in int8
    assert not [name for name in quantised if "/preprocess" in name or "/head" in name]


def test_a_failed_agreement_check_leaves_no_exported_model(tmp_path, keras_detector, exported):
    import shutil

    out = tmp_path / "out"
    with pytest.raises(DeepfakeError, match="disagrees with Keras.*nothing exported"):
        export(Predictor.from_dir(keras_detector), out, "openvino-bf16", tolerance=1e-12)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no folder, no temporary left behind
    # An earlier good export in the same folder survives a refused one untouched.
    shutil.copytree(exported["openvino-int8"][0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = CliRunner().invoke(main, ["export", "--model", str(keras_detector), "--out", str(out),
                                       "--format", "onnx", "--tolerance", "0"])
    assert result.exit_code != 0 and "nothing exported" in result.output and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_int8_needs_data_and_an_exported_model_is_not_explained(tmp_path, keras_detector, exported,
                                                                 tiny_split_dataset):
    result = CliRunner().invoke(main, ["export", "--model", str(keras_detector), "--out", str(tmp_path / "o"),
                                       "--format", "openvino-int8"])
    assert result.exit_code != 0 and "needs --data" in result.output and not (tmp_path / "o").exists()
    image = str(sorted((tiny_split_dataset / "test").rglob("*.jpg"))[0])
    result = CliRunner().invoke(main, ["explain", image, "--model", str(exported["openvino"][0])])
    assert result.exit_code != 0 and "exported" in result.output and "Traceback" not in result.output


def test_an_export_registered_beside_the_keras_model_loads_as_pyfunc(tmp_path, exported, tiny_split_dataset):
    import base64

    import mlflow
    import pandas as pd

    from deepfake import registry, tracking

    tracking.setup(C.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="export"))
    folder, info = exported["openvino-int8"]
    version, alias = registry.register_export(folder, "deepfake-detector", "models:/deepfake-detector@champion",
                                              info)
    assert alias == "champion-openvino-int8"
    assert tracking.alias_version("deepfake-detector", alias) == version
    assert tracking.version_info("deepfake-detector", version)["tags"]["format"] == "openvino-int8"
    images = sorted((tiny_split_dataset / "test").rglob("*.jpg"))[:3]
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in images]})
    out = mlflow.pyfunc.load_model(f"models:/deepfake-detector@{alias}").predict(frame)
    expected = Predictor.from_dir(folder).predict_values(list(frame["image"]))
    assert out["fake_probability"].tolist() == pytest.approx([r["fake_probability"] for r in expected], abs=1e-6)
    local = tracking.local_model(f"models:/deepfake-detector@{alias}")
    assert isinstance(Predictor.from_dir(local).model, OpenVinoModel)
