"""Peak resident memory of one training epoch over 1,000 vs 10,000 images of 256 px.

The images are streamed from disk (`data.cache=none`, no feature cache), so memory should not
grow with the dataset. Each size runs in a fresh subprocess; peak RSS is its ru_maxrss.

    python benchmarks/bench_memory.py [--counts 1000 10000] [--size 64]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write

CHILD = r"""
import json, resource, sys, time
from deepfake import config as C, data as D, training as T
from deepfake.input_pipeline import make_dataset
root, size = sys.argv[1], int(sys.argv[2])
cfg = C.resolve(set_args=[f"data.path={root}", f"data.image_size={size}", "model.weights=none", "train.epochs=1",
                          "train.fine_tune_epochs=1", "train.feature_cache=false", "data.cache=none",
                          "data.val_fraction=0.02", "data.test_fraction=0.02"])
info = D.scan_dataset(cfg.data, check_images=False)
start = time.perf_counter()
T.train(cfg, make_dataset(info.splits["train"], cfg.data, training=True),
        make_dataset(info.splits["val"], cfg.data, training=False), root + "_ckpt", verbose=0)
print(json.dumps({"n_train": len(info.splits["train"]), "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_images(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for i in range(n):
        cls = "real" if i % 2 == 0 else "fake"
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        img = np.roll(base, i, axis=1)  # a different 256x256 image each time
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--size", type=int, default=64, help="model input size (images on disk are 256 px)")
    args = parser.parse_args()
    rows = []
    for n in args.counts:
        root = Path(tempfile.mkdtemp(prefix=f"bench-mem-{n}-"))
        make_images(root, n)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(args.size)], capture_output=True, text=True,
                             env={"TF_CPP_MIN_LOG_LEVEL": "3"})
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not line:
            raise SystemExit(out.stderr[-2000:])
        r = json.loads(line[0])
        rows.append({"images_on_disk": n, "train_images": r["n_train"], "epochs": 2,
                     "train_seconds": round(r["seconds"], 1), "peak_rss_mb": round(r["peak_rss_mb"], 1)})
        print(rows[-1], f"(wall {time.perf_counter() - start:.0f}s)", flush=True)
    ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    write("memory", rows, notes=(
        f"Unsplit folder of 256x256 JPEGs, model input {args.size} px, 1 head epoch + 1 fine-tuning epoch (conv5), "
        f"streaming (data.cache=none, no feature cache). Peak RSS ratio {rows[-1]['images_on_disk']}/"
        f"{rows[0]['images_on_disk']} images: {ratio:.2f}."))


if __name__ == "__main__":
    main()
