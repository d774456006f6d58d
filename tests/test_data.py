"""Dataset layouts, bad input, unreadable files, decoding of every format, tf.data pipeline."""

import shutil

import numpy as np
import pytest
from PIL import Image

from deepfake import config as C
from deepfake import data as D
from deepfake import images as IM
from deepfake import input_pipeline as IP
from deepfake.array_pipeline import cache_mode
from deepfake.errors import DeepfakeError
from tests.helpers import png_bomb, tiny_config


def dcfg(path, *sets):
    """The data settings of the tiny configuration (in batches of 4) on dataset ``path``."""
    return tiny_config("data.batch_size=4", *sets, data=path).data


def write_image(path, mode="RGB", size=(20, 16), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        img = img.convert(mode)  # CMYK ...
    assert img.mode == mode
    img.save(path, format=fmt)
    return path


# ----------------------------------------------------------------------------- layouts


def test_split_layout(tiny_split_dataset):
    info = D.scan_dataset(dcfg(tiny_split_dataset))
    assert info.layout == "split"
    assert {k: len(v) for k, v in info.splits.items()} == {"train": 16, "val": 4, "test": 4}
    assert info.splits["train"].counts(["real", "fake"]) == {"real": 8, "fake": 8}
    assert info.skipped == []
    assert all(p.endswith(".jpg") for p in info.splits["test"].paths)


def test_unsplit_layout_is_stratified_and_seeded(tiny_unsplit_dataset):
    cfg = dcfg(tiny_unsplit_dataset, "data.val_fraction=0.2", "data.test_fraction=0.2")
    a = D.scan_dataset(cfg, seed=1)
    b = D.scan_dataset(cfg, seed=1)
    c = D.scan_dataset(cfg, seed=2)
    assert a.layout == "unsplit"
    assert a.splits["test"].paths == b.splits["test"].paths
    assert a.splits["test"].paths != c.splits["test"].paths
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 24, "val": 8, "test": 8}
    for split in a.splits.values():
        assert split.counts(["real", "fake"])["real"] == split.counts(["real", "fake"])["fake"]
    all_paths = sum((s.paths for s in a.splits.values()), [])
    assert len(all_paths) == len(set(all_paths)) == 40


def test_custom_class_names(tmp_path):
    for cls in ("camera", "generated"):
        for i in range(6):
            write_image(tmp_path / "d" / cls / f"{i}.png")
    info = D.scan_dataset(dcfg(tmp_path / "d", "data.class_names=[camera,generated]", "data.val_fraction=0.33",
                               "data.test_fraction=0.33"))
    labels = dict(zip(sum((s.paths for s in info.splits.values()), []),
                      sum((s.labels for s in info.splits.values()), []), strict=True))
    assert all(("generated" in p) == bool(y) for p, y in labels.items())


def test_missing_val_folder_is_carved_from_train(tiny_split_dataset, tmp_path):
    root = tmp_path / "noval"
    shutil.copytree(tiny_split_dataset, root)
    shutil.rmtree(root / "val")
    info = D.scan_dataset(dcfg(root, "data.val_fraction=0.25"))
    assert len(info.splits["val"]) == 4 and len(info.splits["train"]) == 12
    assert any("no val/" in n for n in info.notes)


# ----------------------------------------------------------------------------- evaluation-only datasets


def test_evaluation_scan_takes_a_held_out_dataset_whole(tiny_unsplit_dataset, tiny_split_dataset, tmp_path):
    # An unsplit folder: every image, not its 15 % "test split".
    info, split = D.scan_evaluation_dataset(dcfg(tiny_unsplit_dataset))
    assert split == "all" and list(info.splits) == ["all"]
    assert len(info.splits["all"]) == 40 and info.splits["all"].counts(["real", "fake"]) == {"real": 20, "fake": 20}
    assert "total" in info.report() and info.summary()["totals"] == {"all": 40}
    # ... unless its test split is asked for: the one training made (same seed).
    info, split = D.scan_evaluation_dataset(dcfg(tiny_unsplit_dataset), split="test", seed=3)
    assert split == "test"
    assert info.splits["test"].paths == D.scan_dataset(dcfg(tiny_unsplit_dataset), seed=3).splits["test"].paths
    assert len(info.splits["test"]) == 6
    # A folder with only test/{real,fake}: evaluated whole, not refused as a wrong layout.
    only_test = tmp_path / "only_test"
    shutil.copytree(tiny_split_dataset / "test", only_test / "test")
    info, split = D.scan_evaluation_dataset(dcfg(only_test))
    assert split == "test" and len(info.splits["test"]) == 4
    with pytest.raises(DeepfakeError, match=r"only_test/train is missing: .*holds test/; pass --split test"):
        D.scan_evaluation_dataset(dcfg(only_test), split="train")
    # val/ and test/ without train/: every image of both.
    shutil.copytree(tiny_split_dataset / "val", only_test / "val")
    info, split = D.scan_evaluation_dataset(dcfg(only_test))
    assert split == "all" and len(info.splits["all"]) == 8
    # A training dataset (train/ present): its test split by default, everything on request.
    info, split = D.scan_evaluation_dataset(dcfg(tiny_split_dataset))
    assert split == "test" and len(info.splits["test"]) == 4
    info, split = D.scan_evaluation_dataset(dcfg(tiny_split_dataset), split="all")
    assert len(info.splits["all"]) == 24
    # Training still needs train/, and says so.
    with pytest.raises(DeepfakeError, match=r"only_test/train is missing: a dataset for training needs train/"):
        D.scan_dataset(dcfg(only_test))


# ----------------------------------------------------------------------------- bad input


def test_missing_folder(tmp_path):
    with pytest.raises(DeepfakeError, match=f"{tmp_path / 'nope'}.*does not exist"):
        D.scan_dataset(dcfg(tmp_path / "nope"))


def test_path_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DeepfakeError, match="not a folder"):
        D.scan_dataset(dcfg(tmp_path / "f.txt"))


def test_wrong_layout(tmp_path):
    write_image(tmp_path / "d" / "cats" / "a.png")
    expected = r"neither train/ val/ test/.*expected DATA/\{train,val,test\}/\{real,fake\}/"
    with pytest.raises(DeepfakeError, match=expected):
        D.scan_dataset(dcfg(tmp_path / "d"))


def test_missing_class_in_split(tiny_split_dataset, tmp_path):
    root = tmp_path / "nofake"
    shutil.copytree(tiny_split_dataset, root)
    shutil.rmtree(root / "test" / "fake")
    with pytest.raises(DeepfakeError, match=r"test/fake is missing"):
        D.scan_dataset(dcfg(root))


def test_empty_class(tiny_split_dataset, tmp_path):
    root = tmp_path / "empty"
    shutil.copytree(tiny_split_dataset, root)
    for f in (root / "train" / "real").iterdir():
        f.unlink()
    with pytest.raises(DeepfakeError, match=r"train/real has no images"):
        D.scan_dataset(dcfg(root))


def test_split_with_one_class_only_after_skipping(tiny_split_dataset, tmp_path):
    root = tmp_path / "oneclass"
    shutil.copytree(tiny_split_dataset, root)
    for f in (root / "val" / "fake").iterdir():
        f.write_bytes(b"")  # all unreadable: the val split is left with one class
    with pytest.raises(DeepfakeError, match=r"val.*only one class"):
        D.scan_dataset(dcfg(root))


def test_missing_test_split(tiny_split_dataset, tmp_path):
    root = tmp_path / "notest"
    shutil.copytree(tiny_split_dataset, root)
    shutil.rmtree(root / "test")
    with pytest.raises(DeepfakeError, match="test.*missing"):
        D.scan_dataset(dcfg(root))


# ----------------------------------------------------------------------------- unreadable files


def test_unreadable_files_are_skipped_and_listed(tiny_split_dataset, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(tiny_split_dataset, root)
    train_fake = root / "train" / "fake"
    good = sorted(train_fake.glob("*.jpg"))[0].read_bytes()
    (train_fake / "zero.jpg").write_bytes(b"")
    (train_fake / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (train_fake / "text.jpg").write_text("this is not an image")
    write_image(train_fake / "thin.png", size=(1, 40))
    png_bomb(train_fake / "bomb.png")
    (train_fake / "notes.txt").write_text("ignored: not an image extension")
    info = D.scan_dataset(dcfg(root))
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in info.skipped}
    assert set(reasons) == {"zero.jpg", "truncated.jpg", "text.jpg", "thin.png", "bomb.png"}
    assert reasons["zero.jpg"] == "empty file"
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert "too small" in reasons["thin.png"]
    assert "too large" in reasons["bomb.png"]
    assert len(info.splits["train"]) == 16  # the good images are all still there
    report = info.report()
    assert "skipped 5 unreadable" in report and "bomb.png" in report
    assert info.summary()["n_skipped"] == 5


def test_check_image_accepts_every_supported_format(tmp_path):
    for name, mode, fmt in [("a.jpg", "RGB", "JPEG"), ("b.png", "RGBA", "PNG"), ("c.bmp", "RGB", "BMP"),
                            ("d.gif", "P", "GIF"), ("e.png", "L", "PNG"), ("f.png", "P", "PNG"),
                            ("g.jpg", "CMYK", "JPEG"), ("h.webp", "RGBA", "WEBP"), ("i.tif", "RGB", "TIFF"),
                            ("j.jpg", "RGB", "WEBP")]:  # the format counts, not the extension
        assert IM.check_image(write_image(tmp_path / name, mode=mode, fmt=fmt)) is None, name
    ico = write_image(tmp_path / "k.png", fmt="ICO")  # a format Pillow knows but that is not accepted
    assert IM.check_image(ico) == "not an image in a supported format (JPEG, PNG, BMP, GIF, WebP, TIFF)"


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("RGB", "WEBP"), ("RGBA", "WEBP"), ("RGB", "TIFF"),
                                       ("P", "TIFF")])
def test_cmyk_webp_and_tiff_decode_to_the_pixels_pillow_sees(tmp_path, mode, fmt):
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:, :16], arr[:, 16:] = (200, 30, 40), (20, 180, 90)  # flat colours survive lossy coding
    path = tmp_path / f"x.{fmt.lower()}"
    img = Image.fromarray(arr)
    (img.convert(mode) if mode != "P" else img.convert("P", palette=Image.Palette.ADAPTIVE)).save(
        path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    ours = IM.load_image(path, 32)
    np.testing.assert_allclose(ours, np.asarray(Image.open(path).convert("RGB"), dtype=np.float32), atol=2)
    np.testing.assert_allclose(ours[0, 0], (200, 30, 40), atol=6)
    # The tf.data pipeline (training, evaluation) reads them too.
    x, _ = next(iter(IP.make_dataset(D.Split([str(path)], [1]), dcfg(tmp_path, "data.cache=none"), training=False)))
    np.testing.assert_allclose(x.numpy()[0], ours, atol=1e-3)


def test_dataset_reads_webp_tiff_cmyk_and_lists_symlink_problems(tiny_split_dataset, tmp_path):
    root = tmp_path / "formats"
    shutil.copytree(tiny_split_dataset, root)
    fake = root / "train" / "fake"
    for name, mode, fmt in [("w.webp", "RGB", "WEBP"), ("t.tif", "RGB", "TIFF"), ("t2.tiff", "L", "TIFF"),
                            ("c.jpeg", "CMYK", "JPEG")]:
        write_image(fake / name, mode=mode, size=(32, 32), fmt=fmt)
    (fake / "loop_a.jpg").symlink_to("loop_b.jpg")
    (fake / "loop_b.jpg").symlink_to("loop_a.jpg")
    (fake / "dangling.png").symlink_to("gone.png")
    info = D.scan_dataset(dcfg(root))
    names = {p.rsplit("/", 1)[-1] for p in info.splits["train"].paths + info.splits["val"].paths}
    assert {"w.webp", "t.tif", "t2.tiff", "c.jpeg"} <= names
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in info.skipped}
    assert reasons == {"loop_a.jpg": "cannot read: symlink loop", "loop_b.jpg": "cannot read: symlink loop",
                       "dangling.png": "cannot read: broken symlink (its target does not exist)"}
    assert "skipped 3 unreadable" in info.report()
    assert all(ext in IM.IMAGE_EXTENSIONS for ext in (".jpeg", ".webp", ".tif", ".tiff"))


@pytest.mark.parametrize("mode, fmt", [("RGB", "JPEG"), ("RGBA", "PNG"), ("RGB", "BMP"), ("P", "GIF"),
                                       ("L", "PNG"), ("P", "PNG"), ("L", "JPEG")])
def test_decode_image_gives_rgb_float_in_range(tmp_path, mode, fmt):
    path = write_image(tmp_path / f"x.{fmt.lower()}", mode=mode, size=(50, 30), fmt=fmt)
    img = IM.load_image(path, 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 255 and img.max() > 1  # pixels, not 0..1
    if mode == "L":
        np.testing.assert_allclose(img[..., 0], img[..., 1])


def test_decode_matches_pillow_without_resize(tmp_path):
    path = write_image(tmp_path / "p.png", size=(32, 32))
    ours = IM.load_image(path, 32)
    np.testing.assert_allclose(ours, np.asarray(Image.open(path).convert("RGB"), dtype=np.float32), atol=0.5)


# ----------------------------------------------------------------------------- pipeline


def test_make_dataset_shapes_labels_and_order(tiny_split_dataset):
    cfg = dcfg(tiny_split_dataset)
    info = D.scan_dataset(cfg)
    ds = IP.make_dataset(info.splits["test"], cfg, training=False)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(y, info.splits["test"].labels)  # evaluation keeps file order


def test_training_shuffle_is_seeded(tiny_split_dataset):
    cfg = dcfg(tiny_split_dataset, "data.augment.flip=false")
    split = D.scan_dataset(cfg).splits["train"]

    def labels(seed):
        return np.concatenate([y.numpy() for _, y in IP.make_dataset(split, cfg, training=True, seed=seed)])

    assert np.array_equal(labels(3), labels(3))
    assert not np.array_equal(labels(3), labels(4))
    assert sorted(labels(3)) == sorted(split.labels)


def test_cache_mode_auto_streams_large_datasets(tiny_split_dataset):
    cfg = dcfg(tiny_split_dataset)
    split = D.scan_dataset(cfg).splits["train"]
    assert cache_mode(split, cfg) == "memory"  # 16 images of 32 px: cached after decoding
    big = D.Split(split.paths * 20000, split.labels * 20000)  # 320k images would exceed 1 GiB
    assert cache_mode(big, cfg) == "none"  # streamed from disk every epoch
    cfg_none = dcfg(tiny_split_dataset, "data.cache=none")
    assert sum(int(y.shape[0]) for _, y in IP.make_dataset(split, cfg_none, training=True)) == 16


def _asym_image():
    import tensorflow as tf

    x = np.zeros((16, 16, 3), dtype=np.float32)
    x[:, :4] = 255.0  # bright left edge
    return tf.constant(x)


def test_augmentations_each_do_their_job():
    import tensorflow as tf

    img = _asym_image()
    seed = tf.constant([1, 2], dtype=tf.int64)
    off = C.AugmentConfig(flip=False, blur_prob=0.0, jpeg_prob=0.0)
    np.testing.assert_array_equal(IP.augment_image(img, seed, off).numpy(), img.numpy())
    flips = [IP._flip(img, tf.constant([s, 0], dtype=tf.int64), C.AugmentConfig()).numpy() for s in range(12)]
    assert any(np.array_equal(f, img.numpy()[:, ::-1]) for f in flips)
    assert any(np.array_equal(f, img.numpy()) for f in flips)
    blurred = IP._blur(img, seed, C.AugmentConfig(blur_prob=1.0, blur_sigma_max=3.0)).numpy()
    assert 0 < blurred[:, 4].mean() < 255 and blurred.shape == img.shape
    jpeg = IP._jpeg_recompress(img, seed, C.AugmentConfig(jpeg_prob=1.0, jpeg_quality_min=30)).numpy()
    assert jpeg.shape == img.shape and not np.array_equal(jpeg, img.numpy())


def test_class_weights_handle_imbalance(tmp_path):
    for i in range(30):
        write_image(tmp_path / "d" / "real" / f"{i}.png")
    for i in range(10):
        write_image(tmp_path / "d" / "fake" / f"{i}.png")
    info = D.scan_dataset(dcfg(tmp_path / "d", "data.val_fraction=0.2", "data.test_fraction=0.2"))
    w = info.class_weights()
    counts = info.splits["train"].counts(["real", "fake"])
    n = sum(counts.values())
    assert w[0] == pytest.approx(n / (2 * counts["real"]))
    assert w[1] == pytest.approx(n / (2 * counts["fake"]))
    assert w[1] > w[0]
    assert "class imbalance" in info.report()
