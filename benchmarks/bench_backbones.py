"""Backbones side by side at their native input size on this CPU.

For each backbone (random weights where speed is all that is measured):
1. work per image: GMACs of the backbone's convolutions and dense layers, counted from the Keras graph;
2. inference: Keras ``predict`` and the ONNX Runtime export, images/s at batch 32 and latency at batch 1;
3. training step: images/s of a full fine-tuning step (every stage trainable, BatchNorm frozen), batch 32;
4. head-only trial from the feature cache: wall time of ``deepfake train`` with ``--fine-tune-epochs 0`` on
   ``--data`` once the cache is warm (a second, identical run), the ImageNet weights as shipped;
5. with ``--quality``: test ROC-AUC on ``--data`` after ``deepfake train --config ai_vs_real
   --backbone NAME`` (the shipped configuration, the backbone swapped), with its wall time.

Each backbone runs in a fresh subprocess so graphs and memory do not leak between them.

    python benchmarks/bench_backbones.py [--backbones resnet50 efficientnet_lite0 ...] [--quality]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, write

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, tempfile, numpy as np, keras
from pathlib import Path
from deepfake import config as C, model as M, training as T, backbones as B
from deepfake.export import export
from deepfake.inference import ModelMeta, OnnxModel, Predictor, save_detector
from common import gmacs as count_gmacs

name, repeats = sys.argv[1], int(sys.argv[2])
spec = B.get(name)
size = spec.native_size
cfg = C.resolve(set_args=[f"model.backbone={name}", "model.weights=none", f"data.image_size={size}"])
model = M.build_model(cfg)

gmacs = count_gmacs(M.backbone_of(model))

def best(fn, n):
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

work = Path(tempfile.mkdtemp())
save_detector(model, ModelMeta(image_size=size, backbone=name), work / "keras")
export(Predictor.from_dir(work / "keras"), work / "onnx", check_images=32)
onnx = OnnxModel(work / "onnx" / "model.onnx")
x = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype("float32")
k32 = best(lambda: model.predict(x, batch_size=32, verbose=0), repeats)
o32 = best(lambda: onnx.predict(x), repeats)
k1 = best(lambda: model.predict(x[:1], verbose=0), repeats * 3)
o1 = best(lambda: onnx.predict(x[:1]), repeats * 3)

M.set_fine_tune(model, spec.stages)
T.compile_model(model, 1e-4)
y = np.random.default_rng(1).integers(0, 2, (32, 1)).astype("float32")
for _ in range(2):
    model.train_on_batch(x, y)
steps = 4
t = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(x, y)
train_ips = steps * 32 / (time.perf_counter() - t)
print(json.dumps({"size": size, "gmacs": gmacs, "feature_dim": spec.feature_dim,
                  "keras_b32": 32 / k32, "onnx_b32": 32 / o32, "keras_b1_ms": k1 * 1000, "onnx_b1_ms": o1 * 1000,
                  "train_ips": train_ips}))
"""


def deepfake_train(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "from deepfake.cli import main; main()", "train", *args],
                         capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"deepfake train failed:\n{out.stderr[-2000:]}")
    return time.perf_counter() - start, out.stdout


def test_auc(stdout: str) -> float:
    match = re.search(r"Test metrics.*?roc_auc\s+([0-9.]+)", stdout, re.S)
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+",
                        default=["resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality", action="store_true", help="also train the shipped ai_vs_real configuration")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    for name in args.backbones:
        out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.repeats)], capture_output=True, text=True,
                             env=env, cwd=Path(__file__).resolve().parent)  # the child imports common
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not line:
            raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
        r = json.loads(line[0])
        work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        common = ["--data", str(args.data), "--backbone", name, "--image-size", str(r["size"]),
                  "--tracking-uri", f"sqlite:///{work}/mlflow.db", "--output-dir", str(work / "out"),
                  "--set", f"train.feature_cache_dir={work}/cache", "--epochs", "10", "--fine-tune-epochs", "0"]
        deepfake_train(common, env)  # fills the feature cache
        head_s, _ = deepfake_train(common, env)
        row = {"backbone": name, "px": r["size"], "GMACs/img": round(r["gmacs"], 2), "features": r["feature_dim"],
               "keras b32 img/s": round(r["keras_b32"], 1), "onnx b32 img/s": round(r["onnx_b32"], 1),
               "keras b1 ms": round(r["keras_b1_ms"], 1), "onnx b1 ms": round(r["onnx_b1_ms"], 1),
               "train img/s": round(r["train_ips"], 1),
               "train GMAC/s (x3 fwd)": round(3 * r["gmacs"] * r["train_ips"], 1),
               "head-only trial s (cache warm)": round(head_s, 1)}
        if args.quality:
            seconds, stdout = deepfake_train([
                "--data", str(args.data), "--config", "ai_vs_real",
                "--backbone", name, "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                "--output-dir", str(work / "quality"), "--set", f"train.feature_cache_dir={work}/cache"], env)
            row |= {"ai_vs_real test ROC-AUC": test_auc(stdout), "training run s": round(seconds)}
        print(row, flush=True)
        rows.append(row)
    write("backbones", rows, notes=(
        "Each backbone at its native input size, random weights for the speed columns. GMACs/img counts the "
        "backbone's multiply-accumulates (convolutions and dense layers) per image; a training step costs about "
        "3x the forward pass (forward, input gradients, weight gradients). Inference is best of "
        f"{args.repeats} after warm-up; the head-only trial is the wall time of a whole `deepfake train "
        "--fine-tune-epochs 0` run (start-up, data scan and audit, 10 head epochs on cached features, "
        "evaluation, model save and MLflow logging) with a warm feature cache. "
        + ("The quality columns train the shipped `ai_vs_real` configuration with only the backbone "
           "swapped; offline, ResNet50 starts from random initialisation." if args.quality else "")))


if __name__ == "__main__":
    main()
