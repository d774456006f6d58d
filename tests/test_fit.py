"""``data.fit: crop``: random crops at full resolution in training, the mean over a grid of crops at evaluation and
inference, stored with the model (issue 15, point 4)."""

import json

import numpy as np
import pytest
from PIL import Image

from deepfake import config as C
from deepfake import images as IM
from deepfake import input_pipeline as IP
from deepfake.calibration import apply_temperature
from deepfake.config import AugmentConfig, DataConfig
from deepfake.data import Split
from deepfake.errors import DeepfakeError
from deepfake.inference import META_FILE, ModelMeta, Predictor, save_detector
from tests.helpers import tiny_config

SIZE = 32
H, W = 96, 80


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Six noise PNGs of 96x80 (lossless: decoded pixels are the written ones), alternating labels."""
    root = tmp_path_factory.mktemp("fit")
    rng = np.random.default_rng(0)
    paths, arrays = [], []
    for i in range(6):
        arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        path = root / f"img{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
        arrays.append(arr.astype("float32"))
    return Split(paths, [i % 2 for i in range(6)]), arrays


def crop_cfg(**kw):
    base = dict(image_size=SIZE, batch_size=4, fit="crop", cache="memory", augment=AugmentConfig(flip=False))
    return DataConfig(**(base | kw))


def windows(arr):
    return np.lib.stride_tricks.sliding_window_view(arr, (SIZE, SIZE, 3))[:, :, 0]  # (H-S+1, W-S+1, S, S, 3)


def find_window(crop, arrays):
    """(image index, y, x) of the window of an original image equal to ``crop``, or None."""
    for i, arr in enumerate(arrays):
        hits = np.argwhere(np.all(windows(arr) == crop, axis=(2, 3, 4)))
        if len(hits):
            return (i, *hits[0])
    return None


def epoch(ds):
    return np.concatenate([x.numpy() for x, _ in ds])


def test_config_validates_fit_and_test_crops():
    assert C.resolve().data.fit == "resize"
    assert C.resolve(set_args=["data.fit=crop", "data.test_crops=2"]).data.test_crops == 2
    with pytest.raises(DeepfakeError, match="data.fit"):
        C.resolve(set_args=["data.fit=zoom"])
    with pytest.raises(DeepfakeError, match="data.test_crops"):
        C.resolve(set_args=["data.fit=crop", "data.test_crops=0"])


def test_cli_fit_option_sets_data_fit():
    from deepfake.cli.app import config_from_options

    assert config_from_options(fit="crop").data.fit == "crop"
    assert config_from_options().data.fit == "resize"


def test_training_crops_are_full_resolution_windows_seeded_and_new_each_epoch(pictures):
    split, arrays = pictures
    ds = IP.make_dataset(split, crop_cfg(), training=True, seed=5)
    first, second = epoch(ds), epoch(ds)
    assert first.shape == (6, SIZE, SIZE, 3)
    found = [find_window(crop, arrays) for crop in first]
    assert all(f is not None for f in found), "a training crop is not a window of its image (resampled?)"
    assert sorted(f[0] for f in found) == list(range(6))  # one crop of each image per epoch
    assert {tuple(f) for f in found} != {tuple(find_window(c, arrays)) for c in second}  # new crops every epoch
    again = IP.make_dataset(split, crop_cfg(), training=True, seed=5)
    np.testing.assert_array_equal(epoch(again), first)  # a seeded run repeats
    np.testing.assert_array_equal(epoch(again), second)
    # Two seeds give different crops of the same image.
    other = IP.make_dataset(split, crop_cfg(), training=True, seed=6)
    assert {tuple(f) for f in found} != {tuple(find_window(c, arrays)) for c in epoch(other)}


def test_decode_keeps_resolution_and_resizes_only_small_images_up(pictures, tmp_path):
    split, arrays = pictures
    raw = open(split.paths[0], "rb").read()
    np.testing.assert_array_equal(np.asarray(IM.decode_image(raw, SIZE, "crop")), arrays[0])
    assert IM.decode_image(raw, SIZE).shape == (SIZE, SIZE, 3)  # resize unchanged
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8)).save(small)
    assert tuple(IM.decode_image(small.read_bytes(), SIZE, "crop").shape) == (32, 64, 3)


def test_grid_of_crops_covers_the_image():
    arr = np.arange(H * W * 3, dtype="float32").reshape(H, W, 3)
    crops = np.asarray(IM.crop_grid(arr, SIZE, 3))
    expected = [arr[y:y + SIZE, x:x + SIZE] for y in (0, 32, 64) for x in (0, 24, 48)]
    np.testing.assert_array_equal(crops, np.stack(expected))
    assert IM.crop_grid(arr[:SIZE, :SIZE], SIZE, 3).shape[0] == 1  # an image of exactly S: one crop
    centre = np.asarray(IM.crop_grid(arr, SIZE, 1))
    np.testing.assert_array_equal(centre[0], arr[32:64, 24:56])
    assert IM.crop_grid(arr[:SIZE, :], SIZE, 2).shape[0] == 2  # 1 down x 2 across


def mean_pixel(x):
    """A stub model's raw output: the mean pixel / 255 of each image."""
    return np.asarray(x, dtype="float64").reshape(len(x), -1).mean(axis=1) / 255.0


def expected_means(arrays, n=3):
    return np.array([np.mean([mean_pixel(c[None])[0] for c in np.asarray(IM.crop_grid(a, SIZE, n))])
                     for a in arrays])


def test_evaluation_averages_the_probabilities_of_each_images_crops(pictures):
    split, arrays = pictures
    cfg = crop_cfg()
    probs = IP.predict_images(mean_pixel, split, cfg)
    np.testing.assert_allclose(probs, expected_means(arrays), rtol=1e-9)
    # Not the mean over the whole image (which would equal it only by accident of this stub), nor one crop.
    assert not np.allclose(probs, expected_means(arrays, 1))
    # The crops of the evaluation dataset: 9 per image, in order.
    assert sum(len(x) for x, _ in IP.make_dataset(split, cfg, training=False)) == 9 * len(split)
    resized = IP.predict_images(mean_pixel, split, crop_cfg(fit="resize"))
    assert resized.shape == (len(split),)


class MeanPixelModel:
    def predict(self, images, batch_size=32, verbose=0):
        return mean_pixel(images)[:, None]


def test_predictor_scores_crops_like_the_evaluation(pictures):
    split, arrays = pictures
    meta = ModelMeta(image_size=SIZE, fit="crop", test_crops=3, temperature=2.0)
    predictor = Predictor(MeanPixelModel(), meta)
    expected = apply_temperature(expected_means(arrays), 2.0)  # the mean raw probability, then calibrated
    np.testing.assert_allclose(predictor.predict_split(split, batch_size=4), expected, rtol=1e-9)
    rows = predictor.predict_values(split.paths, batch_size=4)
    np.testing.assert_allclose([r["fake_probability"] for r in rows], expected, rtol=1e-9)
    assert predictor.decode(split.paths[0]).shape == (SIZE, SIZE, 3)  # the centre crop (Grad-CAM)
    assert predictor.data_config().fit == "crop"


def test_meta_round_trip_and_older_metas_resize(tmp_path):
    path = ModelMeta(fit="crop", test_crops=2).save(tmp_path / META_FILE)
    loaded = ModelMeta.load(path)
    assert (loaded.fit, loaded.test_crops) == ("crop", 2)
    old = json.loads(path.read_text())
    del old["fit"], old["test_crops"]
    path.write_text(json.dumps(old))
    assert ModelMeta.load(path).fit == "resize"


def tiny_model():
    """A tiny model whose output depends on the pixels (a new detector's head answers 0.5 whatever they are)."""
    import keras

    init = keras.initializers.RandomNormal(stddev=0.5, seed=1)
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255.0),
                             keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=init),
                             keras.layers.GlobalMaxPooling2D(),
                             keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init)])


def test_saved_crop_model_predicts_like_the_pipelines_evaluation(pictures, tmp_path):
    from deepfake import pipeline

    split, _ = pictures
    cfg = tiny_config("data.batch_size=4", "data.fit=crop", "data.test_crops=2")  # SIZE px
    model = tiny_model()
    temperature = 1.5
    evaluated = pipeline.evaluate_split(model, split, cfg, tmp_path / "eval", 0.5, "test", temperature)
    assert np.ptp(evaluated["probs"]) > 1e-4  # the images get different probabilities
    meta = ModelMeta(image_size=SIZE, temperature=temperature, fit="crop", test_crops=2)
    predictor = Predictor.from_dir(save_detector(model, meta, tmp_path / "model"))
    rows = predictor.predict_values(split.paths, batch_size=4)
    np.testing.assert_allclose([r["fake_probability"] for r in rows], evaluated["probs"], rtol=1e-5)
    np.testing.assert_allclose(predictor.predict_split(split, batch_size=4), evaluated["probs"], rtol=1e-5)
    # Per image: the mean of its 4 crops' raw probabilities, then the temperature.
    crops = predictor.decode_crops(open(split.paths[0], "rb").read())
    assert len(crops) == 4
    raw = np.asarray(model.predict(crops, verbose=0), dtype="float64").mean()
    np.testing.assert_allclose(evaluated["probs"][0], apply_temperature(np.array([raw]), temperature)[0], rtol=1e-5)
    resized = apply_temperature(IP.predict_images(model.predict_on_batch, split, DataConfig(image_size=SIZE)),
                                temperature)
    assert not np.allclose(resized, evaluated["probs"], rtol=1e-5)  # the crops, not the resized image, were scored


def test_sample_scores_a_crop_model_as_predict_does(pictures):
    from deepfake.inference import sample_predictions

    split, arrays = pictures
    predictor = Predictor(MeanPixelModel(), ModelMeta(image_size=SIZE, fit="crop", test_crops=3, temperature=2.0))
    picks = sample_predictions(predictor, split, ["real", "fake"], n=len(split), seed=0)
    assert sorted(p["path"] for p in picks) == sorted(split.paths)
    predicted = dict(zip(split.paths, predictor.predict_values(split.paths), strict=True))  # deepfake predict's
    for pick in picks:
        i = split.paths.index(pick["path"])
        assert pick["fake_probability"] == pytest.approx(predicted[pick["path"]]["fake_probability"], rel=1e-9)
        assert pick["fake_probability"] == pytest.approx(apply_temperature(expected_means(arrays)[i:i + 1], 2.0)[0])
        assert pick["predicted_label"] == predicted[pick["path"]]["label"]
        np.testing.assert_array_equal(pick["image"], predictor.decode(pick["path"]))  # the centre crop shown


def test_export_checks_a_crop_model_on_its_crops(pictures, tmp_path):
    from sklearn.metrics import roc_auc_score

    from deepfake.export import check_images, export

    split, _ = pictures
    predictor = Predictor.from_dir(save_detector(tiny_model(), ModelMeta(image_size=SIZE, fit="crop", test_crops=2),
                                                 tmp_path / "keras"))
    x, labels, owners = check_images(predictor, split)  # 6 images: all of them, in order
    crops = [predictor.decode_crops(open(path, "rb").read()) for path in split.paths]
    np.testing.assert_array_equal(x, np.concatenate(crops))  # the crops it sees at inference, not resized images
    assert labels.tolist() == split.labels and owners.tolist() == [i for i in range(6) for _ in range(4)]
    info = export(predictor, tmp_path / "onnx", "onnx", split=split)
    assert (info["n_checked"], info["n_inputs"]) == (6, 24)
    # Its ROC-AUC is the detector's: on each image's mean over its crops.
    assert info["roc_auc_keras"] == pytest.approx(roc_auc_score(split.labels, predictor.predict_split(split)))
    assert info["roc_auc_export"] == pytest.approx(info["roc_auc_keras"], abs=1e-3)
    exported = Predictor.from_dir(tmp_path / "onnx")
    assert exported.meta.fit == "crop"
    np.testing.assert_allclose(exported.predict_split(split), predictor.predict_split(split), atol=1e-4)


def test_crop_training_never_uses_cached_features():
    from deepfake import pipeline

    cfg = C.resolve(set_args=["train.fine_tune_epochs=0"])
    assert pipeline.head_only(cfg)
    cfg.data.fit = "crop"
    assert not pipeline.head_only(cfg)  # cached features would fix one crop per image
