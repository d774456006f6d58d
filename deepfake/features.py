"""Frozen-backbone feature cache.

In phase 1 the backbone is frozen, so the pooled backbone features of un-augmented images
are the same every epoch and every trial that only changes the head. They are computed once
per (file list with sizes and modification times, image size, representation, backbone
and its weights) and stored as ``.npy`` under ``train.feature_cache_dir``; a change to any of those
is a different key, so a stale cache is never read.

Phase 1 from the cache trains on un-augmented features (augmentation applies in phase 2).

A head-only tuning trial (:meth:`FeatureCache.head_features`) needs no backbone at all once its process
has fingerprinted it and the features are on disk: it trains, validates and tests the head on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfake.config import Config

if TYPE_CHECKING:
    import keras

    from deepfake.data import DatasetInfo, Split
    from deepfake.model import WeightsInfo

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
    """Pooled backbone features ``(N, feature width)`` of a split's images, in file order, no augmentation.

    Always those of the float32 backbone in inference mode (a float32 copy of a mixed-precision detector
    computes them), whatever the training precision: what the saved (float32) detector computes, so that
    the head on cached features gives the detector's own probabilities, and the same features whichever
    precision filled the cache.
    """
    from deepfake.input_pipeline import make_dataset
    from deepfake.model import as_float32, feature_extractor

    ds = make_dataset(split, cfg.data, training=False, seed=cfg.train.seed)
    return np.asarray(feature_extractor(as_float32(model, cfg)).predict(ds, verbose=0), dtype="float32")


class FeatureCache:
    """Loads or computes features for dataset splits; counts hits and misses (for logs and tests)."""

    def __init__(self, cfg: Config, directory: str | Path | None = None):
        self.cfg = cfg
        self.directory = Path(directory or cfg.train.feature_cache_dir)
        self.hits = 0
        self.misses = 0

    def _path(self, split: Split, fingerprint: str) -> Path:
        return self.directory / f"{cache_key(split.paths, self.cfg, fingerprint)}.npy"

    def load(self, split: Split, fingerprint: str) -> np.ndarray | None:
        """The cached features of ``split`` for the backbone with this fingerprint (a hit), or None."""
        path = self._path(split, fingerprint)
        if path.is_file():
            feats = np.load(path)
            if feats.shape[0] == len(split):
                self.hits += 1
                return feats
        return None

    def get(self, model: keras.Model, split: Split, fingerprint: str | None = None) -> np.ndarray:
        fingerprint = fingerprint or weights_fingerprint(model)
        feats = self.load(split, fingerprint)
        if feats is not None:
            return feats
        path = self._path(split, fingerprint)
        self.misses += 1
        log.info("computing frozen-backbone features of %d images (cached in %s for later runs)", len(split),
                 self.directory)
        feats = compute_features(model, split, self.cfg)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, feats)
        tmp.replace(path)  # atomic: concurrent workers never read half a file
        return feats

    def split_features(self, model: keras.Model, split: Split, fingerprint: str) -> np.ndarray:
        """:meth:`get` for a split, dataset by dataset when it joins several (each dataset's features cached alone,
        so a dataset's cache serves every mix it is trained in), in the split's order."""
        groups = split.by_dataset()
        if len(groups) < 2:
            return self.get(model, split, fingerprint)
        out: np.ndarray | None = None
        for positions in groups.values():
            feats = self.get(model, split.subset(positions), fingerprint)
            if out is None:
                out = np.empty((len(split), *feats.shape[1:]), dtype=feats.dtype)
            out[np.asarray(positions)] = feats
        assert out is not None
        return out

    def provider(self, info: DatasetInfo) -> Callable[[keras.Model], tuple[np.ndarray, ...]]:
        """``features(model)`` for :func:`deepfake.training.train`: train and val features + labels."""

        def features(model):
            fingerprint = weights_fingerprint(model)
            train, val = info.splits["train"], info.splits["val"]
            x_train = self.split_features(model, train, fingerprint)
            x_val = self.split_features(model, val, fingerprint)
            log.info("feature cache %s: %d hit(s), %d miss(es)", self.directory, self.hits, self.misses)
            y_train = np.asarray(train.labels, dtype="float32")
            if info.shares and len(train.dataset_names()) > 1:  # each dataset its share, as the pixels' epochs
                keep = epoch_indices(train, info.shares, self.cfg.train.seed)
                x_train, y_train = x_train[keep], y_train[keep]
            return x_train, y_train, x_val, np.asarray(val.labels, dtype="float32")

        return features

    def head_features(self, info: DatasetInfo, splits: Sequence[str] = ("train", "val", "test")) -> HeadFeatures:
        """The features of ``splits`` for a run that trains and evaluates the head alone (a head-only trial).

        The backbone is built - seeded with ``train.seed``, as :func:`deepfake.training.train` builds it - only
        when this process has not fingerprinted it yet or a split's features are not on disk; every later trial
        of a study reads the fingerprint from memory and the features from disk and builds nothing.
        """
        identity = backbone_identity(self.cfg)
        known = _FINGERPRINTS.get(identity)
        found: dict[str, np.ndarray | None] = {}
        if known is not None:
            found = {name: self.load(info.splits[name], known[0]) for name in splits}
            if all(a is not None for a in found.values()):
                log.info("feature cache %s: %d hit(s), backbone not built", self.directory, self.hits)
                return HeadFeatures(known[0], known[1], found)
        import keras

        from deepfake.model import build_model

        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")  # features are the float32 backbone's
        try:
            keras.utils.set_random_seed(self.cfg.train.seed)  # as training.set_seeds before it builds a model
            model, weights_info = build_model(self.cfg, with_info=True)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        fingerprint = weights_fingerprint(model)
        _FINGERPRINTS[identity] = (fingerprint, weights_info)
        if known is None or known[0] != fingerprint:
            found = {}
        arrays = {name: found[name] if found.get(name) is not None else self.get(model, info.splits[name], fingerprint)
                  for name in splits}
        log.info("feature cache %s: %d hit(s), %d miss(es)", self.directory, self.hits, self.misses)
        return HeadFeatures(fingerprint, weights_info, arrays)


def epoch_indices(split: Split, shares: dict[str, float], seed: int) -> np.ndarray:
    """Positions in ``split`` that make one epoch of several datasets mixed by ``shares``
    (:func:`deepfake.data.epoch_counts`): each (dataset, class) group's count drawn from it (seeded; without
    repeats while the group is large enough), for training a head on cached features."""
    from deepfake.data import epoch_counts

    rng = np.random.default_rng(seed)
    by_name = split.by_dataset()
    chosen = []
    for (name, label), n in sorted(epoch_counts(split, shares).items()):
        group = np.asarray([i for i in by_name[name] if int(split.labels[i]) == label])
        whole, rest = divmod(n, len(group))
        chosen += [group] * whole + [rng.choice(group, rest, replace=False)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=int)


@dataclass
class HeadFeatures:
    """What a head-only run needs of the backbone: its fingerprint, where its weights came from, and the
    pooled features of each split (in file order)."""

    fingerprint: str
    weights_info: WeightsInfo
    arrays: dict[str, np.ndarray]


# The fingerprint and weights source of each backbone this process has built for head_features, so that
# later trials need not build it again (keyed by everything that decides its initial weights).
_FINGERPRINTS: dict[tuple, tuple[str, WeightsInfo]] = {}


def backbone_identity(cfg: Config) -> tuple:
    """What decides a freshly built backbone's weights: architecture, weights choice (a weights file by its
    size and modification time too), pooling, image size and the seed of a random initialisation."""
    m = cfg.model
    weights = m.weights.strip()
    stamp: tuple = ()
    if weights.lower() not in ("auto", "imagenet", "none"):
        path = Path(weights).expanduser()
        if path.is_file():
            st = path.stat()
            stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    return (m.backbone, weights, stamp, m.pooling, cfg.data.image_size, cfg.train.seed)
