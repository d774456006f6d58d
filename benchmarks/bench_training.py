"""Training-step throughput: float32 vs mixed bfloat16, with and without XLA, at 224 px and 64 px.

Full fine-tuning step (all ResNet50 stages trainable, BatchNorm frozen) on random pixels,
after warm-up; images/s of `train_on_batch`, per wall-clock second and per CPU second of the process
(the latter hardly moves when other jobs share the cores). Each variant runs in a fresh subprocess so
the precision policy and compiled graphs do not leak between them. Accuracy side by side:
`bench_precision.py`.

    python benchmarks/bench_training.py [--steps 8] [--sizes 224 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import write

CHILD = r"""
import json, sys, time, numpy as np, keras
from deepfake import config as C, model as M, precision as P, training as T
size, precision, jit, steps, batch = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
backbone = sys.argv[6]
cfg = C.resolve(set_args=[f"data.image_size={size}", "model.weights=none", f"train.mixed_precision={precision}",
                          f"train.jit_compile={jit}", f"model.backbone={backbone}"])
runtime = P.configure_runtime(cfg)
model = M.build_model(cfg)
M.set_fine_tune(model, 8)  # every stage (ResNet50 has 5, EfficientNet 8)
T.compile_model(model, 1e-4, runtime["jit_compile"])
x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 2, (batch, 1)).astype("float32")
for _ in range(2):
    loss0 = model.train_on_batch(x, y)
start, cpu = time.perf_counter(), time.process_time()
for _ in range(steps):
    loss = model.train_on_batch(x, y)
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
loss = float(loss[0] if isinstance(loss, (list, tuple)) else loss)
print(json.dumps({"img_per_s": steps * batch / elapsed, "img_per_cpu_s": steps * batch / cpu,
                  "finite_loss": bool(np.isfinite(loss)),
                  "policy": runtime["precision_policy"], "jit": runtime["jit_compile"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--backbone", default="resnet50", help="results/training_throughput[_BACKBONE].md")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA rows")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        base = base_cpu = None
        variants = (("off", "off"), ("bfloat16", "off"), ("off", "on"), ("bfloat16", "on"))
        for precision, jit in variants[:2] if args.no_xla else variants:
            out = subprocess.run([sys.executable, "-c", CHILD, str(size), precision, jit, str(args.steps),
                                  str(args.batch), args.backbone], capture_output=True, text=True,
                                 env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""})
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not line:
                rows.append({"size": size, "precision": precision, "xla": jit, "img_per_s": float("nan"),
                             "vs_float32": float("nan"), "img_per_cpu_s": float("nan"), "cpu_vs_float32": float("nan"),
                             "ok": f"failed: {out.stderr.strip().splitlines()[-1][:80]}"})
                continue
            r = json.loads(line[0])
            base, base_cpu = base or r["img_per_s"], base_cpu or r["img_per_cpu_s"]
            rows.append({"size": size, "precision": r["policy"], "xla": r["jit"], "img_per_s": round(r["img_per_s"], 1),
                         "vs_float32": round(r["img_per_s"] / base, 2), "img_per_cpu_s": round(r["img_per_cpu_s"], 1),
                         "cpu_vs_float32": round(r["img_per_cpu_s"] / base_cpu, 2),
                         "ok": "finite loss" if r["finite_loss"] else "NaN"})
    name = "training_throughput" + ("" if args.backbone == "resnet50" else f"_{args.backbone}")
    write(name, rows, notes=(
        f"{args.backbone}, batch {args.batch}, {args.steps} timed steps after 2 warm-up steps, whole backbone "
        "trainable. "
        "`train.mixed_precision=auto` and `train.jit_compile=auto` pick the fastest *correct* row for the "
        "hardware and backbone found (deepfake/precision.py: choose_precision, configure_runtime), logged as run "
        "tags runtime.*. On this CPU (AVX512_BF16) that is mixed bfloat16 without XLA for ResNet50 (with the stem "
        "convolution, the pooled features and the head kept float32 it matched float32's test ROC-AUC side by side, "
        "results/precision.md) and float32 for the EfficientNets, slower in bfloat16 here "
        "(results/training_throughput_efficientnet_lite1.md). XLA was 2-5x slower on this CPU. img_per_cpu_s: per "
        "CPU second of the process, steadier than wall time when other jobs share the cores (1-minute load "
        f"average at the start: {os.getloadavg()[0]:.1f})."))


if __name__ == "__main__":
    main()
