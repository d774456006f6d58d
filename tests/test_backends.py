"""Keras backends: the choice (deepfake/backend.py), the TF-free NumPy pipeline giving TensorFlow's pictures
(deepfake/pixels.py, deepfake/array_pipeline.py), and the detector on JAX (and PyTorch where it is installed):
trained, used and exported without TensorFlow, and loading with the same predictions on another backend.

This process runs Keras on TensorFlow; the other backends run in subprocesses (Keras picks its backend once)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake import backend as BK
from deepfake import pixels
from deepfake.array_pipeline import ArrayDataset, synthetic_count
from deepfake.errors import DeepfakeError
from tests.helpers import TINY_ARGS, tiny_config

REPO = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(not HAS_JAX, reason="jax is not installed (pip install 'deepfake[jax]')")
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="no PyTorch build installed (the project never installs one)")


def run_python(code: str, backend: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 picture (smooth noise), so JPEG keeps detail at every scale."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC))


# --------------------------------------------------------------------------- choosing the backend


def test_requested_backend_follows_setting_then_environment():
    assert BK.requested("jax", {}) == "jax"
    assert BK.requested("auto", {"KERAS_BACKEND": "torch"}) == "torch"
    assert BK.requested("auto", {}) == "tensorflow"
    with pytest.raises(DeepfakeError, match="train.backend must be one of tensorflow, jax, torch"):
        BK.requested("mxnet", {})
    with pytest.raises(DeepfakeError, match="KERAS_BACKEND must be one of"):
        BK.requested("auto", {"KERAS_BACKEND": "numpy"})


def test_use_refuses_a_second_backend_once_keras_runs():
    import keras

    assert keras.backend.backend() == "tensorflow"
    assert BK.use("tensorflow", {}) == "tensorflow"
    with pytest.raises(DeepfakeError, match="Keras already runs on tensorflow in this process, not jax"):
        BK.use("jax", {})


def test_a_missing_backend_package_is_one_line_naming_the_install(tmp_path):
    code = """
        import importlib.util, sys
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "jax" else real(name, *a)
        from deepfake.cli import main
        main(["--backend", "jax", "predict", "--model", "nowhere", "x.png"])
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("Error: the jax backend needs the jax package: pip install 'deepfake[jax]' "
                                   "(NVIDIA GPU: pip install 'jax[cuda13]')")


def test_jit_default_per_backend():
    assert BK.jit_default("jax", gpu=False) is True
    assert BK.jit_default("tensorflow", gpu=False) is False and BK.jit_default("tensorflow", gpu=True) is True
    assert BK.jit_default("torch", gpu=True) is False


def test_config_validates_the_backend():
    with pytest.raises(DeepfakeError, match="train.backend"):
        tiny_config("train.backend=theano")
    assert tiny_config("train.backend=jax").train.backend == "jax"


# --------------------------------------------------------------------------- the same pictures as TensorFlow


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("shape", [(256, 256), (300, 500), (100, 90), (1000, 700), (224, 224)])
def test_numpy_decoder_gives_tensorflows_pixels(fmt, shape):
    """Same decoded, DCT-scaled, resized (and, over 2x, antialiased) pixels; with data.fit: crop the same
    full-resolution pictures, small ones resized up."""
    from deepfake import images

    raw = encoded(smooth_image(*shape), fmt)
    for fit in ("resize", "crop"):
        ours = pixels.decode(raw, 224, fit)
        theirs = images.decode_image(raw, 224, fit).numpy()
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=0.01)  # float rounding of the weights


def test_numpy_augmentations_equal_tensorflows_for_the_same_parameters():
    import tensorflow as tf

    from deepfake import input_pipeline as IP
    from deepfake.images import crop_offsets

    image = np.random.default_rng(1).uniform(0, 255, (64, 48, 3)).astype(np.float32)
    sigma, radius = 1.7, 9
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-0.5 * tf.square(x / sigma))
    k = k / tf.reduce_sum(k)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    across = tf.nn.depthwise_conv2d(padded, tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
    down = tf.nn.depthwise_conv2d(across, tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
    np.testing.assert_allclose(pixels.blur(image, sigma, radius), down[0].numpy(), atol=1e-4)
    # JPEG re-compression: the TF pipeline's own function, forced on, at the quality its seed draws
    from deepfake.config import AugmentConfig

    cfg = AugmentConfig(jpeg_prob=1.0, jpeg_quality_min=40)
    seed = tf.constant([3, 4], tf.int64)
    quality = int(tf.random.stateless_uniform([], seed + 1, cfg.jpeg_quality_min, 101, dtype=tf.int32))
    np.testing.assert_array_equal(pixels.jpeg_recompress(image, quality),
                                  IP._jpeg_recompress(tf.constant(image), seed, cfg).numpy())
    for side, n in [(224, 3), (500, 3), (300, 2), (1000, 3), (230, 1)]:
        np.testing.assert_array_equal(pixels.crop_offsets(side, 224, n), crop_offsets(tf.constant(side), 224, n))


@pytest.mark.parametrize("fit", ["resize", "crop"])
def test_array_pipeline_evaluation_batches_equal_tf_data(tmp_path, fit):
    """Validation/test batches (no randomness) are the tf.data pipeline's, crops and their owners included: 80 px
    JPEGs DCT-scaled and resized to 32 px, or cut into their grid of 32 px crops."""
    from deepfake import data as D
    from deepfake import input_pipeline as IP
    from deepfake.demo import make_demo_dataset

    make_demo_dataset(tmp_path / "d", per_class=20, size=80, seed=3)
    cfg = tiny_config("data.image_size=32", f"data.fit={fit}", "data.test_crops=2", "data.batch_size=4",
                      data=tmp_path / "d").data
    split = D.scan_dataset(cfg).splits["val"]
    crop = fit == "crop"
    theirs = list(IP.batches(IP.make_dataset(split, cfg, training=False, owners=crop)))
    ours = list(IP.batches(ArrayDataset(split, cfg, training=False, owners=crop)))
    assert len(ours) == len(theirs) > 1
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b) == (3 if crop else 2)
        np.testing.assert_allclose(a[0], b[0], rtol=0, atol=0.01)
        for x, y in zip(a[1:], b[1:], strict=True):
            np.testing.assert_array_equal(x, y)


def test_array_pipeline_training_epochs(tiny_split_dataset):
    """A seeded epoch repeats exactly whatever the workers; the next one is reshuffled; synthetic fakes follow
    their reals in the known number; pixels stay in 0..255."""
    from deepfake import data as D

    cfg = tiny_config("data.image_size=32", "data.synthetic_fakes.kind=resynth", "data.synthetic_fakes.fraction=0.5",
                      "data.augment.blur_prob=0.5", "data.augment.jpeg_prob=0.5", data=tiny_split_dataset).data
    split = D.scan_dataset(cfg).splits["train"]

    def epoch(ds):
        parts = [ds[i] for i in range(len(ds))]
        ds.on_epoch_end()
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), ds.plan().copy()

    one = ArrayDataset(split, cfg, training=True, seed=5)
    cfg_single = tiny_config("data.image_size=32", "data.synthetic_fakes.kind=resynth",
                             "data.synthetic_fakes.fraction=0.5", "data.augment.blur_prob=0.5",
                             "data.augment.jpeg_prob=0.5", "data.num_parallel_calls=1", data=tiny_split_dataset).data
    other = ArrayDataset(split, cfg_single, training=True, seed=5)
    plan0 = one.plan().copy()
    x0, y0, _ = epoch(one)
    x0b, y0b, _ = epoch(other)
    np.testing.assert_array_equal(x0, x0b)
    np.testing.assert_array_equal(y0, y0b)
    reals = int(np.sum(np.asarray(split.labels) == 0))
    assert len(y0) == len(split) + synthetic_count(split.labels, 0.5) == len(split) + reals // 2
    fakes = np.flatnonzero(plan0[:, 1] == 1)
    assert len(fakes) == reals // 2 and np.all(plan0[fakes - 1, 0] == plan0[fakes, 0])  # right after its real
    assert np.all(y0[fakes] == 1.0)
    assert x0.min() >= 0 and x0.max() <= 255 and x0.dtype == np.float32
    x1, _, _ = epoch(one)
    assert not np.array_equal(one.plan(1)[:, 0], plan0[:, 0]) and not np.array_equal(x0, x1)


def test_array_pipeline_mixes_datasets_in_their_shares(tmp_path):
    from deepfake import data as D
    from deepfake import mixing
    from deepfake.demo import make_demo_dataset

    roots = []
    for i, n in enumerate((6, 18)):
        make_demo_dataset(tmp_path / f"d{i}", per_class=n, size=24, seed=i)
        roots.append(tmp_path / f"d{i}")
    cfg = tiny_config("data.image_size=32", f"data.path={roots[0]}", f"data.extra_paths=[{roots[1]}]").data
    info = mixing.scan(cfg, lambda data_cfg, name: D.scan_dataset(data_cfg))
    train = info.splits["train"]
    assert len(info.shares) == 2
    ds = ArrayDataset(train, cfg, training=True, seed=1, mix=info.shares)
    expected = D.epoch_counts(train, info.shares)
    for epoch in range(2):
        plan = ds.plan(epoch)
        got: dict = {}
        for idx in plan[:, 0]:
            key = (train.datasets[idx], int(train.labels[idx]))
            got[key] = got.get(key, 0) + 1
        assert got == {k: v for k, v in expected.items() if v}
        assert len(plan) == len(train)


# --------------------------------------------------------------------------- JAX and PyTorch


def _cross_backend(untrained_detector: Path, tmp_path: Path, other: str) -> None:
    """The same saved detector predicts the same on ``other`` as here (TensorFlow), and one saved there loads here
    with the predictions it made there; Grad-CAM agrees too."""
    from deepfake import explain
    from deepfake.inference import load_predictor

    x = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    run_python(f"""
        import numpy as np, keras
        from deepfake import model as M, explain
        from deepfake.inference import load_predictor, save_detector, ModelMeta
        from tests.helpers import tiny_config
        assert keras.backend.backend() == {other!r}
        x = np.load("x.npy")
        p = load_predictor({str(untrained_detector)!r})
        np.save("theirs_of_ours.npy", p.model.predict(x, verbose=0))
        np.save("cam.npy", explain.grad_cam(p, x[0])[0])
        keras.utils.set_random_seed(3)
        save_detector(M.build_model(tiny_config()), ModelMeta(threshold=0.5, image_size=32), "made_there")
        np.save("made_there.npy", load_predictor("made_there").model.predict(x, verbose=0))
    """, other, tmp_path)
    ours = load_predictor(untrained_detector)
    assert np.abs(np.load(tmp_path / "theirs_of_ours.npy") - ours.model.predict(x, verbose=0)).max() <= 1e-4
    assert np.abs(np.load(tmp_path / "cam.npy") - explain.grad_cam(ours, x[0])[0]).max() <= 1e-3
    there = load_predictor(tmp_path / "made_there")
    assert np.abs(np.load(tmp_path / "made_there.npy") - there.model.predict(x, verbose=0)).max() <= 1e-4


@needs_jax
def test_a_detector_predicts_the_same_on_jax_and_tensorflow(untrained_detector, tmp_path):
    _cross_backend(untrained_detector, tmp_path, "jax")


@needs_torch
def test_a_detector_predicts_the_same_on_torch_and_tensorflow(untrained_detector, tmp_path):
    _cross_backend(untrained_detector, tmp_path, "torch")


TRAIN_PREDICT = """
    import json, sys
    from deepfake.cli import main
    def run(*args):
        try:
            main(list(args), standalone_mode=False)
        except SystemExit as exc:
            assert not exc.code, exc.code
    run("train", "--data", {data!r}, "--epochs", "1", "--fine-tune-epochs", "1", "--fine-tune-stages", "1",
        "--tracking-uri", "sqlite:///mlflow.db", "--output-dir", "out", *{tiny!r},
        "--set", "data.augment.jpeg_prob=0.5", "--set", "data.synthetic_fakes.kind=sbi")
    run("predict", "--model", "out/model", "--output", "predictions.csv", {data!r} + "/test")
    import keras, mlflow
    modules = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf2onnx"))[:5]
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    run = mlflow.search_runs(search_all_experiments=True, order_by=["start_time ASC"], max_results=1).iloc[0]
    tags = {{k[len("tags.runtime."):]: v for k, v in run.items() if k.startswith("tags.runtime.backend")}}
    json.dump({{"backend": keras.backend.backend(), "tensorflow": modules, "tags": tags}}, open("modules.json", "w"))
"""


def _train_predict_export(backend: str, tiny_split_dataset: Path, tmp_path: Path) -> None:
    run_python(TRAIN_PREDICT.format(data=str(tiny_split_dataset), tiny=list(TINY_ARGS)), backend, tmp_path, 1500)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert modules["backend"] == backend and modules["tensorflow"] == []  # trained and predicted without TensorFlow
    assert modules["tags"] == {"backend": backend, "backend_version": BK.version(backend)}  # run tags runtime.*
    rows = (tmp_path / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(list((tiny_split_dataset / "test").rglob("*.jpg")))  # a header, then every image
    data = str(tiny_split_dataset)
    run_python(f"""
        from deepfake.cli import main
        main(["export", "--model", "out/model", "--format", "onnx", "--out", "exported", "--data", {data!r}],
             standalone_mode=False)
    """, backend, tmp_path)
    assert (tmp_path / "exported" / "model.onnx").is_file()
    meta = json.loads((tmp_path / "exported" / "model.meta.json").read_text())
    assert meta["format"] == "onnx"


@pytest.mark.slow
@needs_jax
def test_train_predict_export_on_jax_without_tensorflow(tiny_split_dataset, tmp_path):
    _train_predict_export("jax", tiny_split_dataset, tmp_path)


@pytest.mark.slow
@needs_torch
def test_train_predict_export_on_torch_without_tensorflow(tiny_split_dataset, tmp_path):
    _train_predict_export("torch", tiny_split_dataset, tmp_path)
