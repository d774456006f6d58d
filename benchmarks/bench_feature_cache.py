"""Feature cache: a head-only trial (frozen backbone, phase 1 only) with and without the cache.

Same data, config and seed; "cold" computes and stores the features, "warm" is every later
trial on the same (data, image size, weights) — what a study's trials see after the first.

    python benchmarks/bench_feature_cache.py [--data DIR] [--size 128] [--epochs 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from common import DEFAULT_DATA, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    import keras
    from sklearn.metrics import roc_auc_score

    from deepfake import config as C
    from deepfake import data as D
    from deepfake import features as F
    from deepfake import training as T
    from deepfake.input_pipeline import make_dataset

    work = tempfile.mkdtemp(prefix="bench-fc-")
    cfg = C.resolve(set_args=[f"data.path={args.data}", f"data.image_size={args.size}", "model.weights=none",
                              f"train.epochs={args.epochs}", "train.fine_tune_epochs=0", "train.patience=100",
                              "data.augment.flip=false", "data.cache=none", "train.mixed_precision=off",
                              f"train.feature_cache_dir={work}/features"])
    info = D.scan_dataset(cfg.data, check_images=False)
    val = info.splits["val"]
    rows = []
    for name in ("no cache (backbone every epoch)", "cache cold (first trial)", "cache warm (later trials)"):
        keras.backend.clear_session()
        train_ds = make_dataset(info.splits["train"], cfg.data, training=True, seed=1)
        val_ds = make_dataset(val, cfg.data, training=False)
        features = None if name.startswith("no cache") else F.FeatureCache(cfg).provider(info)
        start = time.perf_counter()
        result = T.train(cfg, train_ds, val_ds, f"{work}/ckpt", features=features, verbose=0)
        seconds = time.perf_counter() - start
        auc = roc_auc_score(val.labels, T.predict_probabilities(result.model, val_ds))
        rows.append({"trial": name, "seconds": round(seconds, 1), "val_roc_auc": round(auc, 4)})
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = round(base / r["seconds"], 1)
    shutil.rmtree(work, ignore_errors=True)
    write("feature_cache", rows, notes=(
        f"{len(info.splits['train'])} train / {len(val)} val images of {args.data} at {args.size} px, "
        f"{args.epochs} head epochs, random-init backbone (same seed in all three), float32. Seconds include "
        "model building and checkpointing."))


if __name__ == "__main__":
    main()
