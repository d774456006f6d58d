"""The training input pipeline on each backend: tf.data (TensorFlow) against the NumPy/Pillow workers (JAX, PyTorch),
in images per second, next to what training consumes (benchmarks/results/backends.json, bench_backends.py).

The dfdc_faces recipe's training pipeline (224 px face crops, JPEG re-compression 0.2, flips, self-blended fakes
after half the reals, blended through face-mesh masks found before the clock starts) on LIMIT images spread
over the dfdc-faces-dev training split (both classes): a cold epoch (files decoded and cached) then warm ones
(from the cache: fakes and augmentations made anew). Each pipeline runs alone in a process of its own, with every
core, as it would be ahead of training; the number to beat is 1.5x the training images/s (no starved steps).

    python benchmarks/bench_pipeline_backends.py [--data DIR] [--limit 512] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from common import RESULTS, write

DFDC = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dfdc-faces-dev"

CHILD = """
import json, os, resource, sys, time
import numpy as np
from deepfake import config as C, data as D
from deepfake.input_pipeline import batches, make_dataset, synthetic_keypoints
import keras
args = json.loads(sys.argv[1])
cfg = C.resolve(["dfdc_faces"], set_args=[f"data.path={args['data']}", "data.cache=memory"])
split = D.scan_dataset(cfg.data, check_images=False).splits["train"]
split = split.subset(np.unique(np.linspace(0, len(split) - 1, min(args["limit"], len(split))).astype(int)))
points = synthetic_keypoints(split.paths, split.labels, cfg.data)
ds = make_dataset(split, cfg.data, training=True, seed=1, keypoints=points)
rates = []
for epoch in range(args["epochs"]):
    cpu0, start, n = time.process_time(), time.perf_counter(), 0
    if keras.backend.backend() == "tensorflow":
        for x, _ in ds:
            n += int(x.shape[0])
    else:
        for x, _ in batches(ds):
            n += len(x)
        ds.on_epoch_end()
    wall = time.perf_counter() - start
    rates.append({"epoch": epoch + 1, "images": n, "images_per_s": n / wall,
                  "cpu_s_per_image": (time.process_time() - cpu0) / n})
print("RESULT " + json.dumps({"backend": keras.backend.backend(), "epochs": rates}))
"""


def run(backend: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    payload = json.dumps({"data": args.data, "limit": args.limit, "epochs": args.epochs})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), payload], env=env, capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{backend}: failed\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DFDC))
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    args = parser.parse_args()
    training = {}
    trained = RESULTS / "backends.json"
    if trained.exists():  # images/s training consumes, per backend, for the Lite0 fine-tune rows
        for row in json.loads(trained.read_text()).get("rows", []):
            if "lite0" in str(row.get("model", "")).lower() and row.get("images_per_s"):
                training[row["backend"]] = float(row["images_per_s"])
    rows = []
    for backend in args.backends:
        result = run(backend, args)
        cold, *warm = result["epochs"]
        best_warm = max((e["images_per_s"] for e in warm), default=float("nan"))
        pipeline = "tf.data" if backend == "tensorflow" else "NumPy/Pillow workers"
        for name in ([backend] if backend != "jax" else ["jax", "torch"]):  # jax and torch share the pipeline
            consumed = training.get(name)
            rows.append({"backend": name, "pipeline": pipeline, "cold images/s": cold["images_per_s"],
                         "warm images/s": best_warm,
                         "warm CPU-ms/image": 1000 * min(e["cpu_s_per_image"] for e in warm) if warm else None,
                         "training images/s (Lite0 fine-tune)": consumed if consumed else "n/a",
                         "warm / training": best_warm / consumed if consumed else "n/a"})
    notes = (f"dfdc_faces recipe's training pipeline, {args.limit} training images spread over {args.data}, "
             f"{args.epochs} epochs (cold = decoding and caching; warm = from the cache, fakes and augmentations "
             "made anew), every core. Training images/s: benchmarks/results/backends.json (Lite0 fine-tuning at "
             "224 px, batch 32). The target is warm / training >= 1.5.")
    write("pipeline_backends", rows, notes)


if __name__ == "__main__":
    main()
