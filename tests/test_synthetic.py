"""Self-made training fakes (deepfake/synthetic.py, data.synthetic_fakes): self-blended and re-synthesised images,
their place in the training input pipeline, real-only training splits and the cached face keypoints."""

import os

import numpy as np
import pytest
from PIL import Image, ImageFilter

from deepfake import config as C
from deepfake import data as D
from deepfake import synthetic as S
from deepfake.demo import draw_face
from deepfake.errors import DeepfakeError
from tests.helpers import tiny_config

SIZE = 32
KEYPOINTS = np.array([[22, 26], [42, 26], [32, 36], [25, 46], [39, 46]], dtype=float)  # in a 64 px face


def face(seed=0, size=64):
    return draw_face(np.random.default_rng([seed, 5]), size)


def write_faces(folder, n, seed=0, size=SIZE):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(face(seed + i, size)).save(path)
        paths.append(str(path))
    return paths


# The tiny configuration (SIZE px) with self-blended fakes, ellipse masks (no face points) and no flips.
SBI = ("data.synthetic_fakes.kind=sbi", "data.synthetic_fakes.mask=ellipse", "data.augment.flip=false")


# ----------------------------------------------------------------------------- self-blended images


@pytest.mark.parametrize("seed", range(8))
def test_self_blend_changes_only_inside_its_mask(seed):
    image = face(seed)
    fake, mask = S.self_blend(image, np.random.default_rng(seed))
    assert fake.shape == image.shape and fake.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
    outside, inside = mask == 0, mask > 0
    assert outside.any() and inside.any()
    np.testing.assert_array_equal(fake[outside], image[outside])
    changed = np.abs(fake.astype(int) - image.astype(int)).sum(axis=-1) > 0
    assert changed[inside].mean() > 0.3  # the jittered source shows through the mask
    assert not changed[outside].any()


def test_self_blend_mask_covers_the_keypoints_dict_or_array():
    image = face(1)
    corner = KEYPOINTS - 14  # a face in the top left corner, away from where the ellipse would be
    named = dict(zip(S.KEYPOINT_NAMES, map(tuple, corner), strict=True))
    for keypoints in (corner, named):
        for seed in range(5):
            _, mask = S.self_blend(image, np.random.default_rng(seed), keypoints)
            at = mask[corner[:, 1].astype(int), corner[:, 0].astype(int)]
            assert (at >= 0.2).all(), at  # the blend ratio is at least 0.25
            assert mask[54:, 54:].max() == 0  # the mask follows the face, not the image's centre
    # keypoints marked as missing (-1 or NaN) give the ellipse, as None does
    for missing in (np.full((5, 2), -1.0), np.full((5, 2), np.nan)):
        a = S.self_blend(image, np.random.default_rng(3), missing)
        b = S.self_blend(image, np.random.default_rng(3), None)
        np.testing.assert_array_equal(a[0], b[0])


def test_same_seed_same_fake_other_seed_other_fake():
    image = face(2)
    for kind in S.KINDS:
        a = S.make_fake(image, kind, np.random.default_rng(11))
        b = S.make_fake(image, kind, np.random.default_rng(11))
        c = S.make_fake(image, kind, np.random.default_rng(12))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), kind
    with pytest.raises(ValueError, match="unknown synthetic fake kind"):
        S.make_fake(image, "gan", np.random.default_rng(0))


# ----------------------------------------------------------------------------- re-synthesised images


def blurred(image):
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(4)), dtype=float)


@pytest.mark.parametrize("seed", range(10))
def test_resynthesise_keeps_content_and_changes_pixels(seed):
    image = face(seed)
    fake = S.resynthesise(image, np.random.default_rng(seed))
    assert fake.shape == image.shape and fake.dtype == np.uint8
    assert np.abs(fake.astype(int) - image.astype(int)).max() > 0  # pixel-level traces
    other = face(seed + 100)
    same = np.abs(blurred(fake) - blurred(image)).mean()
    assert same < 6, same  # the same picture, seen from afar
    assert same < np.abs(blurred(other) - blurred(image)).mean() / 3


def test_transposed_convolution_keeps_brightness_and_leaves_a_trace():
    small = face(3, 32).astype(np.float32)
    up = S._transposed_conv(small, 2, np.random.default_rng(0))
    assert up.shape == (64, 64, 3)
    assert abs(up.mean() - small.mean()) < 0.05 * small.mean()
    # zero insertion: the phases of the 2x2 grid differ (the checkerboard of generator upsampling)
    phases = [up[i::2, j::2].mean() for i in (0, 1) for j in (0, 1)]
    assert max(phases) - min(phases) > 0.5


def test_fake_from_seed_keeps_untouched_float_pixels_exactly():
    image = face(4, SIZE).astype(np.float32) + 0.37  # decoded, resized pixels are not whole numbers
    seed = np.array([5, -7], dtype=np.int64)
    out = S.fake_from_seed(image, np.full((5, 2), -1.0, np.float32), seed, b"sbi")
    same = np.all(out == image, axis=-1)
    assert same.any() and not same.all()
    np.testing.assert_array_equal(out, S.fake_from_seed(image, np.full((5, 2), -1.0, np.float32), seed, b"sbi"))
    both = {S.fake_from_seed(image, np.full((5, 2), -1.0, np.float32), np.array([s, 1]), "both").tobytes()
            for s in range(6)}
    assert len(both) == 6


# ----------------------------------------------------------------------------- config, dataset scan, class weights


@pytest.mark.parametrize("sets, fragment", [
    ({"data.synthetic_fakes.kind": "gan"}, "data.synthetic_fakes.kind' must be one of none, sbi, resynth, both"),
    ({"data.synthetic_fakes.fraction": 0}, "data.synthetic_fakes.fraction' must be in (0, 1]"),
    ({"data.synthetic_fakes.fraction": 1.5}, "data.synthetic_fakes.fraction' must be in (0, 1]"),
    ({"data.synthetic_fakes.mask": "dlib"}, "data.synthetic_fakes.mask' must be one of mesh, keypoints, ellipse"),
])
def test_config_validation(sets, fragment):
    with pytest.raises(DeepfakeError) as err:
        tiny_config(*SBI, *(f"{k}={v}" for k, v in sets.items()))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_config_defaults_and_overrides():
    cfg = C.resolve()
    assert (cfg.data.synthetic_fakes.kind, cfg.data.synthetic_fakes.fraction) == ("none", 0.5)
    assert cfg.data.synthetic_fakes.mask == "mesh"
    cfg = tiny_config(*SBI, "data.synthetic_fakes.kind=both", "data.synthetic_fakes.fraction=0.25")
    assert cfg.flat()["data.synthetic_fakes.kind"] == "both" and cfg.data.synthetic_fakes.fraction == 0.25


def test_class_weights_count_the_expected_synthetic_fakes():
    labels = [0] * 30 + [1] * 10
    assert D.balanced_class_weights(labels) == pytest.approx({0: 40 / 60, 1: 40 / 20})
    # 30 reals give 15 fakes an epoch: 30 real, 25 fake
    assert D.balanced_class_weights(labels, 2, 0.5) == pytest.approx({0: 55 / 60, 1: 55 / 50})
    assert D.balanced_class_weights([0] * 8, 2, 0.5) == pytest.approx({0: 12 / 16, 1: 12 / 8})
    assert D.balanced_class_weights([0] * 8) == {0: 1.0, 1: 1.0}  # no fakes at all: nothing to balance


@pytest.fixture(scope="module")
def real_only_dataset(tmp_path_factory):
    """train/real/ only (faces); val/ and test/ with both classes."""
    root = tmp_path_factory.mktemp("real_only")
    write_faces(root / "train" / "real", 16, seed=0)
    (root / "train" / "fake").mkdir()
    for split, start in (("val", 100), ("test", 200)):
        write_faces(root / split / "real", 4, seed=start)
        for i, path in enumerate(write_faces(root / split / "fake", 4, seed=start + 50)):
            fake = S.self_blend(np.asarray(Image.open(path)), np.random.default_rng(i))[0]
            Image.fromarray(fake).save(path)
    return root


def test_scan_allows_a_real_only_train_split_with_synthetic_fakes(real_only_dataset, tmp_path):
    cfg = tiny_config(*SBI, data=real_only_dataset)
    info = D.scan_dataset(cfg.data, check_images=False)
    assert info.splits["train"].counts(["real", "fake"]) == {"real": 16, "fake": 0}
    assert info.class_weights() == pytest.approx({0: 24 / 32, 1: 24 / 16})
    assert "train" in info.report() and info.summary()["imbalance_ratio"]["train"] is None
    # without synthetic fakes every split still needs both classes
    with pytest.raises(DeepfakeError, match="train/fake has no images"):
        D.scan_dataset(tiny_config(*SBI, "data.synthetic_fakes.kind=none", data=real_only_dataset).data,
                       check_images=False)
    # a train/fake/ folder that is missing entirely is fine too; val/ is still needed
    other = tmp_path / "d"
    write_faces(other / "train" / "real", 6)
    for split in ("test",):
        write_faces(other / split / "real", 3)
        write_faces(other / split / "fake", 3, seed=9)
    with pytest.raises(DeepfakeError, match="needs a val/ folder") as err:
        D.scan_dataset(tiny_config(*SBI, data=other).data, check_images=False)
    assert "\n" not in str(err.value)
    write_faces(other / "val" / "real", 3)
    with pytest.raises(DeepfakeError, match="val.*fake"):
        D.scan_dataset(tiny_config(*SBI, data=other).data, check_images=False)


def test_head_only_and_feature_cache_are_off_with_synthetic_fakes():
    from deepfake import pipeline

    cfg = C.resolve(set_args=["train.fine_tune_epochs=0"])
    assert pipeline.head_only(cfg)
    cfg = C.resolve(set_args=["train.fine_tune_epochs=0", "data.synthetic_fakes.kind=resynth"])
    assert not pipeline.head_only(cfg)


# ----------------------------------------------------------------------------- input pipeline


def epoch(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def real_split(tmp_path_factory):
    paths = write_faces(tmp_path_factory.mktemp("reals"), 40, seed=300)
    return D.Split(paths, [0] * len(paths))


def test_make_dataset_adds_seeded_fakes_of_the_reals(real_split):
    from deepfake.input_pipeline import make_dataset

    cfg = tiny_config(*SBI, "data.synthetic_fakes.fraction=0.5")
    ds = make_dataset(real_split, cfg.data, training=True, seed=3)
    assert tuple(ds.element_spec[0].shape) == (None, SIZE, SIZE, 3) and tuple(ds.element_spec[1].shape) == (None,)
    assert int(ds.cardinality()) == 8  # 40 reals + 20 fakes in batches of 8: Keras knows an epoch's steps
    x1, y1 = epoch(ds)
    x2, y2 = epoch(ds)
    for x, y in ((x1, y1), (x2, y2)):
        assert (y == 0).sum() == 40  # every real is kept
        assert (y == 1).sum() == 20  # fraction of them give a fake, exactly
        assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 255
    fakes1 = sorted(f.tobytes() for f in x1[y1 == 1])
    fakes2 = sorted(f.tobytes() for f in x2[y2 == 1])
    assert fakes1 != fakes2  # new fakes every epoch
    reals = {f.tobytes() for f in x1[y1 == 0]}
    assert not reals & set(fakes1)
    # a fake follows its real: same content, changed pixels
    for i in np.flatnonzero(y1 == 1)[:5]:
        assert y1[i - 1] == 0
        diff = np.abs(x1[i] - x1[i - 1])
        assert diff.max() > 0 and (diff.sum(-1) == 0).any()  # SBI: the original outside the mask
    # the same seed repeats exactly; another seed does not
    again = epoch(make_dataset(real_split, cfg.data, training=True, seed=3))
    np.testing.assert_array_equal(again[0], x1)
    np.testing.assert_array_equal(again[1], y1)
    other = epoch(make_dataset(real_split, cfg.data, training=True, seed=4))
    assert not np.array_equal(other[0], x1)
    x0, _ = epoch(make_dataset(real_split, tiny_config(*SBI, "data.synthetic_fakes.kind=none").data, training=True,
                               seed=3))
    picked = [i for i in range(len(y1)) if y1[i] == 1]
    sources = {x1[i - 1].tobytes() for i in picked}
    assert len(sources) == 20 and sources <= {f.tobytes() for f in x0}
    # fraction 1: every real gives a fake; evaluation datasets never get any
    both = tiny_config(*SBI, "data.synthetic_fakes.fraction=1", "data.synthetic_fakes.kind=both").data
    x, y = epoch(make_dataset(real_split, both, training=True, seed=3))
    assert (y == 1).sum() == 40
    assert (epoch(make_dataset(real_split, cfg.data, training=False))[1] == 0).all()


def test_fakes_are_made_of_reals_only(tmp_path):
    from deepfake.input_pipeline import make_dataset

    paths = write_faces(tmp_path / "r", 6) + write_faces(tmp_path / "f", 6, seed=50)
    split = D.Split(paths, [0] * 6 + [1] * 6)
    x, y = epoch(make_dataset(split, tiny_config(*SBI, "data.synthetic_fakes.fraction=1").data, training=True, seed=0))
    assert (y == 0).sum() == 6 and (y == 1).sum() == 12
    assert D.balanced_class_weights(split.labels, 2, 1) == pytest.approx({0: 18 / 12, 1: 18 / 24})


# ----------------------------------------------------------------------------- keypoints


def fake_face(keypoints, box=(4.0, 4.0, 60.0, 60.0)):
    from deepfake.faces import Face

    return Face(box, 0.99, dict(zip(S.KEYPOINT_NAMES, map(tuple, keypoints), strict=True)))


def test_keypoints_are_detected_once_and_cached(tmp_path, monkeypatch):
    from deepfake import faces

    paths = write_faces(tmp_path / "img", 3, size=64)
    calls = []

    def detect(images, cfg):
        calls.append(len(images))
        return [[fake_face(KEYPOINTS)], [], [fake_face(KEYPOINTS + 2)]][:len(images)]

    monkeypatch.setattr(faces, "detect_faces_batch", detect)
    cfg = tiny_config(*SBI, f"data.media_cache_dir={tmp_path / 'cache'}").data  # image_size 32: half of 64
    first = S.keypoints_for(paths, cfg)
    assert calls == [3]
    assert first.shape == (3, 5, 2) and first.dtype == np.float32
    np.testing.assert_allclose(first[0], KEYPOINTS / 2)
    assert (first[1] == -1).all()  # no face: the ellipse
    np.testing.assert_allclose(first[2], (KEYPOINTS + 2) / 2)
    second = S.keypoints_for(paths, cfg)
    assert calls == [3]  # from the cache
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [S.KEYPOINTS_FILE]  # no temporary left behind
    # a changed file is detected again, alone
    st = os.stat(paths[2])
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    S.keypoints_for(paths, cfg)
    assert calls == [3, 1]
    # the input pipeline asks only with kind sbi/both and mask keypoints (or mesh), and only for the reals
    calls.clear()
    on = tiny_config(*SBI, f"data.media_cache_dir={tmp_path / 'cache2'}", "data.synthetic_fakes.mask=keypoints").data
    kp = S.training_keypoints(paths, [0, 1, 0], on)
    assert kp.shape == (3, 468, 2) and calls == [2]
    assert np.isnan(kp[1]).all() and (kp[0, :5] >= 0).all() and np.isnan(kp[0, 5:]).all()
    assert np.isnan(kp[2]).all()  # the detector (above) found no face in the second image it was given
    assert S.mask_counts(kp, [0, 1, 0]) == {"mesh": 0, "keypoints": 1, "ellipse": 1}
    off = tiny_config(*SBI, f"data.media_cache_dir={tmp_path / 'cache3'}", "data.synthetic_fakes.kind=resynth",
                      "data.synthetic_fakes.mask=keypoints").data
    assert np.isnan(S.training_keypoints(paths, [0, 0, 0], off)).all() and calls == [2]
    ellipse = tiny_config(*SBI, f"data.media_cache_dir={tmp_path / 'cache4'}").data
    assert np.isnan(S.training_keypoints(paths, [0, 0, 0], ellipse)).all() and calls == [2]


def test_pipeline_blends_through_the_keypoint_mask(tmp_path, monkeypatch):
    from deepfake import faces
    from deepfake.input_pipeline import make_dataset

    paths = write_faces(tmp_path / "img", 8, size=SIZE)
    small = np.array([[4, 5], [14, 5], [9, 9], [5, 13], [13, 13]], dtype=float)  # top left: not the ellipse's place
    monkeypatch.setattr(faces, "detect_faces_batch", lambda images, cfg: [[fake_face(small)] for _ in images])
    cfg = tiny_config(*SBI, f"data.media_cache_dir={tmp_path / 'cache'}", "data.synthetic_fakes.mask=keypoints",
                      "data.synthetic_fakes.fraction=1")
    x, y = epoch(make_dataset(D.Split(paths, [0] * 8), cfg.data, training=True, seed=1))
    for i in np.flatnonzero(y == 1):
        changed = np.abs(x[i] - x[i - 1]).sum(-1) > 0
        assert changed[4:14, 4:14].mean() > 0.5  # about the keypoints
        assert not changed[26:, 26:].any()  # not at the far corner


# ----------------------------------------------------------------------------- training end to end


@pytest.mark.slow
def test_a_real_only_dataset_trains_with_synthetic_fakes(real_only_dataset, tmp_path, tiny_cfg):
    from deepfake import training as T
    from deepfake.input_pipeline import make_dataset

    cfg = tiny_cfg("model.backbone=efficientnet_lite0", "train.epochs=1", "train.fine_tune_epochs=0",
                   "data.synthetic_fakes.kind=sbi", "data.synthetic_fakes.mask=ellipse", data=real_only_dataset)
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed, check_images=False)
    train_ds = make_dataset(info.splits["train"], cfg.data, training=True, seed=cfg.train.seed)
    val_ds = make_dataset(info.splits["val"], cfg.data, training=False, seed=cfg.train.seed)
    result = T.train(cfg, train_ds, val_ds, tmp_path / "ckpt", class_weight=info.class_weights(), verbose=0)
    assert len(result.history["loss"]) == 1 and np.isfinite(result.history["loss"]).all()
    assert "val_auc" in result.history


def test_cli_options_set_the_config():
    from click.testing import CliRunner

    from deepfake.cli import main
    from deepfake.cli.app import config_from_options

    cfg = config_from_options(synthetic_fakes="both", synthetic_fraction=0.3)
    assert (cfg.data.synthetic_fakes.kind, cfg.data.synthetic_fakes.fraction) == ("both", 0.3)
    for command in ("train", "tune"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--synthetic-fakes [none|sbi|resynth|both]" in result.output and "--synthetic-fraction" in result.output
    result = CliRunner().invoke(main, ["train", "--data", ".", "--synthetic-fraction", "2"])
    assert result.exit_code == 2 and "data.synthetic_fakes.fraction' must be in (0, 1]" in result.output
