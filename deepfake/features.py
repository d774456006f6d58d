"""Frozen-backbone feature cache.

In phase 1 the backbone is frozen, so the pooled backbone features of un-augmented images
are the same every epoch and every trial that only changes the head. They are computed once
per (file list with sizes and modification times, image size, representation, backbone
and its weights) and stored as ``.npy`` under ``train.feature_cache_dir``; a change to any of those
is a different key, so a stale cache is never read.

Phase 1 from the cache trains on un-augmented features (augmentation applies in phase 2).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfake.config import Config

if TYPE_CHECKING:
    import keras

    from deepfake.data import DatasetInfo, Split

log = logging.getLogger(__name__)


def weights_fingerprint(model: keras.Model) -> str:
    """A hash of the backbone's weights (ImageNet, random with a seed, or a file all differ)."""
    from deepfake.model import backbone_of

    h = hashlib.sha1()
    for w in backbone_of(model).weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]


def cache_key(paths: list[str], cfg: Config, fingerprint: str) -> str:
    h = hashlib.sha1()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(f"backbone={cfg.model.backbone};size={cfg.data.image_size};repr={cfg.model.representation};"
             f"pool={cfg.model.pooling};"
             f"weights={fingerprint}".encode())
    return h.hexdigest()[:20]


def compute_features(model: keras.Model, split: Split, cfg: Config) -> np.ndarray:
    """Pooled backbone features ``(N, feature width)`` of a split's images, in file order, no augmentation."""
    from deepfake.input_pipeline import make_dataset
    from deepfake.model import feature_extractor

    ds = make_dataset(split, cfg.data, training=False, seed=cfg.train.seed)
    return np.asarray(feature_extractor(model).predict(ds, verbose=0), dtype="float32")


class FeatureCache:
    """Loads or computes features for dataset splits; counts hits and misses (for logs and tests)."""

    def __init__(self, cfg: Config, directory: str | Path | None = None):
        self.cfg = cfg
        self.directory = Path(directory or cfg.train.feature_cache_dir)
        self.hits = 0
        self.misses = 0

    def get(self, model: keras.Model, split: Split, fingerprint: str | None = None) -> np.ndarray:
        key = cache_key(split.paths, self.cfg, fingerprint or weights_fingerprint(model))
        path = self.directory / f"{key}.npy"
        if path.is_file():
            feats = np.load(path)
            if feats.shape[0] == len(split):
                self.hits += 1
                return feats
        self.misses += 1
        log.info("computing frozen-backbone features of %d images (cached in %s for later runs)", len(split),
                 self.directory)
        feats = compute_features(model, split, self.cfg)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, feats)
        tmp.replace(path)  # atomic: concurrent workers never read half a file
        return feats

    def provider(self, info: DatasetInfo) -> Callable[[keras.Model], tuple[np.ndarray, ...]]:
        """``features(model)`` for :func:`deepfake.training.train`: train and val features + labels."""

        def features(model):
            fingerprint = weights_fingerprint(model)
            train, val = info.splits["train"], info.splits["val"]
            x_train = self.get(model, train, fingerprint)
            x_val = self.get(model, val, fingerprint)
            log.info("feature cache %s: %d hit(s), %d miss(es)", self.directory, self.hits, self.misses)
            return (x_train, np.asarray(train.labels, dtype="float32"),
                    x_val, np.asarray(val.labels, dtype="float32"))

        return features
