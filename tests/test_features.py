"""Frozen-backbone feature cache: hits, invalidation, and agreement with the full model."""

import os

import numpy as np
import pytest

from deepfake import data as D
from deepfake import features as F
from deepfake import model as M
from deepfake import training as T
from deepfake.input_pipeline import make_dataset


@pytest.fixture()
def cfg_for(tiny_cfg, tmp_path):
    """``cfg_for(root, *sets)``: the tiny configuration on dataset ``root``, its feature cache in this test's folder."""

    def make(root, *sets):
        return tiny_cfg(f"train.feature_cache_dir={tmp_path / 'cache'}", *sets, data=root)

    return make


@pytest.fixture()
def counted(monkeypatch):
    calls = []
    real = F.compute_features

    def counting(model, split, cfg):
        calls.append(len(split))
        return real(model, split, cfg)

    monkeypatch.setattr(F, "compute_features", counting)
    return calls


def test_hit_after_first_computation(tiny_split_dataset, counted, cfg_for):
    cfg = cfg_for(tiny_split_dataset)
    info = D.scan_dataset(cfg.data)
    model = M.build_model(cfg)
    first = F.FeatureCache(cfg).get(model, info.splits["train"])
    cache = F.FeatureCache(cfg)  # a new process would start like this
    second = cache.get(model, info.splits["train"])
    assert counted == [16] and cache.hits == 1 and cache.misses == 0
    np.testing.assert_array_equal(first, second)
    assert first.shape == (16, M.backbone_spec(model).feature_dim)


def test_cached_features_through_the_head_match_the_full_model(tiny_split_dataset, cfg_for):
    cfg = cfg_for(tiny_split_dataset)
    info = D.scan_dataset(cfg.data)
    model = M.build_model(cfg)
    feats = F.FeatureCache(cfg).get(model, info.splits["val"])
    via_cache = M.head_of(model).predict(feats, verbose=0)
    full = model.predict(make_dataset(info.splits["val"], cfg.data, training=False), verbose=0)
    np.testing.assert_allclose(via_cache, full, atol=1e-5)


@pytest.mark.parametrize("change", ["image_size", "representation", "weights", "file", "backbone"])
def test_any_key_change_invalidates(tiny_split_dataset, tmp_path, counted, change, cfg_for):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_split_dataset, root)
    cfg = cfg_for(root)
    info = D.scan_dataset(cfg.data)
    model = M.build_model(cfg)
    F.FeatureCache(cfg).get(model, info.splits["val"])
    if change == "image_size":
        cfg = cfg_for(root, "data.image_size=48")
        model = M.build_model(cfg)
    elif change == "representation":
        cfg = cfg_for(root, "model.representation=npr")
        model = M.build_model(cfg)
    elif change == "backbone":
        cfg = cfg_for(root, "model.backbone=efficientnet_lite0")
        model = M.build_model(cfg)
    elif change == "weights":
        T.set_seeds(123)
        model = M.build_model(cfg)  # other random weights
    else:
        path = info.splits["val"].paths[0]
        os.utime(path, ns=(1, 1))  # the file changed on disk
    cache = F.FeatureCache(cfg)
    cache.get(model, info.splits["val"])
    assert cache.misses == 1 and cache.hits == 0 and len(counted) == 2


def test_cache_key_names_the_backbone(tiny_split_dataset, cfg_for):
    """Two backbones never share cached features, even with an equal weights fingerprint."""
    paths = D.scan_dataset(cfg_for(tiny_split_dataset).data).splits["val"].paths
    keys = {F.cache_key(paths, cfg_for(tiny_split_dataset, f"model.backbone={name}"), "same")
            for name in ("resnet50", "efficientnet_lite0", "efficientnet_b0")}
    assert len(keys) == 3


@pytest.mark.slow
def test_phase_one_from_cache_trains_and_checkpoints_the_full_model(tiny_split_dataset, tmp_path, cfg_for):
    cfg = cfg_for(tiny_split_dataset, "train.epochs=2", "train.fine_tune_epochs=1", "train.patience=5")
    info = D.scan_dataset(cfg.data)
    train_ds = make_dataset(info.splits["train"], cfg.data, training=True)
    val_ds = make_dataset(info.splits["val"], cfg.data, training=False)
    cache = F.FeatureCache(cfg)
    result = T.train(cfg, train_ds, val_ds, tmp_path / "ckpt", features=cache.provider(info), verbose=0)
    assert cache.misses == 2  # train and val computed once
    assert len(result.history["val_auc"]) == 3 and result.phase_boundary == 2
    best = M.load_keras_model(result.best_path)
    assert best.name == "deepfake_resnet50"  # the full detector, not just the head
