"""Self-blended fakes' masks side by side: train on a face dataset's REAL training faces only (plus self-blended
fakes made from them, one per real per epoch) with each mask kind, ``data.synthetic_fakes.mask`` mesh, keypoints
and ellipse, and score the real test split (real and fake faces). Everything else is the same for the three
runs: config, seed, shortened schedule.

    python benchmarks/bench_sbi_masks.py [--data ../shared/datasets/dfdc-faces-dev] [--image-size 160]
        [--epochs 1] [--fine-tune-epochs 4] [--kinds mesh,keypoints,ellipse]

The dataset is read, never written: a folder of symlinks in a temporary directory holds its train/real/ (no
train/fake/), val/ and test/. Before the runs the face points are found once into one cache folder (the mesh for
all real training faces, MTCNN's keypoints likewise), timed, and the mask kinds each setting gives are counted
(deepfake.synthetic.training_keypoints, mask_counts); the runs then read the cache.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from common import run_deepfake, write

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dfdc-faces-dev"
KINDS = ("mesh", "keypoints", "ellipse")


def link_dataset(source: Path, target: Path) -> Path:
    """train/real, val/{real,fake}, test/{real,fake} of ``source`` as symlinks under ``target``."""
    for split, classes in (("train", ("real",)), ("val", ("real", "fake")), ("test", ("real", "fake"))):
        for name in classes:
            folder = target / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in sorted((source / split / name).iterdir()):
                if path.is_file():
                    os.symlink(path.resolve(), folder / path.name)
    return target


def overrides(args: argparse.Namespace, cache: Path) -> list[str]:
    sets = {"data.synthetic_fakes.kind": "sbi", "data.synthetic_fakes.fraction": 1.0,
            "data.image_size": args.image_size, "train.epochs": args.epochs,
            "train.fine_tune_epochs": args.fine_tune_epochs, "train.patience": 100,
            "data.media_cache_dir": cache, "data.leakage_check": "false", "data.audit": "false",
            "tracking.log_model": "false"}
    return [f"{k}={v}" for k, v in sets.items()]


def find_points(data: Path, sets: list[str]) -> tuple[dict, dict]:
    """Find (and cache) every kind's face points once: seconds and mask counts per kind."""
    from deepfake import config as C
    from deepfake import synthetic

    train = data / "train" / "real"
    paths = sorted(str(p) for p in train.iterdir())
    seconds, counts = {}, {}
    for kind in ("keypoints", "mesh", "ellipse"):  # keypoints first: the mesh run's fallback reads them cached
        cfg = C.resolve(["dfdc_faces"], set_args=[*sets, f"data.synthetic_fakes.mask={kind}"])
        start = time.perf_counter()
        points = synthetic.training_keypoints(paths, [0] * len(paths), cfg.data)
        seconds[kind] = round(time.perf_counter() - start, 1)
        counts[kind] = synthetic.mask_counts(points)
    return seconds, counts


def test_metrics(output: str, cwd: Path) -> dict:
    from mlflow import MlflowClient

    match = re.search(r"MLflow run ([0-9a-f]{32})", output)
    if not match:
        return {}
    metrics = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}").get_run(match.group(1)).data.metrics
    return {k: metrics.get(k) for k in ("test_roc_auc", "test_average_precision", "test_accuracy", "val_auc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sbi-masks-"))
    data = link_dataset(args.data, work / "data")
    cache = work / "cache"
    sets = overrides(args, cache)
    point_seconds, counts = find_points(data, sets)
    print("face points found in", point_seconds, "s; masks per kind:", counts)
    rows = []
    for kind in args.kinds.split(","):
        command = ["train", "--data", str(data), "--config", "dfdc_faces", "--experiment", "bench-sbi-masks",
                   *(x for s in [*sets, f"data.synthetic_fakes.mask={kind}"] for x in ("--set", s))]
        output, seconds, code, usage = run_deepfake(command, work)
        if code:
            print(output[-3000:])
        metrics = test_metrics(output, work) if code == 0 else {}
        row = {"mask": kind, **{f"masks_{k}": v for k, v in counts[kind].items()},
               "points_s": point_seconds[kind], **metrics, "train_s": round(seconds), "cpu_s":
               round(usage.ru_utime + usage.ru_stime), "exit": code}
        print(row, flush=True)
        rows.append(row)
    shown = " ".join(f"--set {s}" for s in sets if "media_cache_dir" not in s)
    write("sbi_masks", rows, notes=(
        f"dfdc-faces-dev ({args.data}): trained on train/real only ({counts['ellipse']['ellipse']} faces) plus one "
        f"self-blended fake per real per epoch; val and test with their real fakes (face swaps). Command per kind: "
        f"`deepfake train --data DIR --config dfdc_faces {shown} --set data.synthetic_fakes.mask=KIND` (DIR: symlinks "
        f"to train/real, val, test; one shared data.media_cache_dir). Shortened from the shipped dfdc_faces (224 px, "
        f"2 + 20 epochs, patience 6) to {args.image_size} px, {args.epochs} + {args.fine_tune_epochs} epochs without "
        f"early stopping, identically for every kind, to fit three runs in about 25 minutes on 2 shared cores (run "
        f"under nice -n 10). One seed (42) per kind: differences of a few hundredths of ROC-AUC are within "
        f"seed-to-seed noise. masks_*: the mask kind each real training face got; points_s: seconds to find (and "
        f"cache) the points before the runs (mesh: the face mesh, MTCNN only where it finds no face)."),
        extra={"command": f"python benchmarks/bench_sbi_masks.py --image-size {args.image_size} --epochs "
                          f"{args.epochs} --fine-tune-epochs {args.fine_tune_epochs}", "overrides": sets,
               "point_seconds": point_seconds, "mask_counts": counts})


if __name__ == "__main__":
    main()
