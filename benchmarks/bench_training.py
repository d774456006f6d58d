"""Training-step throughput: float32 vs mixed bfloat16, with and without XLA, at 224 px and 64 px.

Full fine-tuning step (all ResNet50 stages trainable, BatchNorm frozen) on random pixels,
after warm-up; images/s of `train_on_batch`. Each variant runs in a fresh subprocess so the
precision policy and compiled graphs do not leak between them.

    python benchmarks/bench_training.py [--steps 8] [--sizes 224 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import write

CHILD = r"""
import json, sys, time, numpy as np, keras
from deepfake import config as C, model as M, training as T
size, precision, jit, steps, batch = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cfg = C.resolve(set_args=[f"data.image_size={size}", "model.weights=none", f"train.mixed_precision={precision}",
                          f"train.jit_compile={jit}"])
runtime = T.configure_runtime(cfg)
model = M.build_model(cfg)
M.set_fine_tune(model, 5)
T.compile_model(model, 1e-4, runtime["jit_compile"])
x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 2, (batch, 1)).astype("float32")
for _ in range(2):
    loss0 = model.train_on_batch(x, y)
start = time.perf_counter()
for _ in range(steps):
    loss = model.train_on_batch(x, y)
elapsed = time.perf_counter() - start
loss = float(loss[0] if isinstance(loss, (list, tuple)) else loss)
print(json.dumps({"img_per_s": steps * batch / elapsed, "finite_loss": bool(np.isfinite(loss)),
                  "policy": runtime["precision_policy"], "jit": runtime["jit_compile"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        base = None
        for precision, jit in (("off", "off"), ("bfloat16", "off"), ("off", "on"), ("bfloat16", "on")):
            out = subprocess.run([sys.executable, "-c", CHILD, str(size), precision, jit, str(args.steps),
                                  str(args.batch)], capture_output=True, text=True, env={"TF_CPP_MIN_LOG_LEVEL": "3",
                                                                                         "PATH": ""})
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if not line:
                rows.append({"size": size, "precision": precision, "xla": jit, "img_per_s": float("nan"),
                             "vs_float32": float("nan"), "ok": f"failed: {out.stderr.strip().splitlines()[-1][:80]}"})
                continue
            r = json.loads(line[0])
            base = base or r["img_per_s"]
            rows.append({"size": size, "precision": r["policy"], "xla": r["jit"], "img_per_s": round(r["img_per_s"], 1),
                         "vs_float32": round(r["img_per_s"] / base, 2),
                         "ok": "finite loss" if r["finite_loss"] else "NaN"})
    write("training_throughput", rows, notes=(
        f"Batch {args.batch}, {args.steps} timed steps after 2 warm-up steps, whole backbone trainable. "
        "`train.mixed_precision=auto` and `train.jit_compile=auto` pick the fastest *correct* row for the "
        "hardware found (deepfake/training.py: configure_runtime), logged as run tags runtime.*. On CPU that is "
        "float32 without XLA: mixed bfloat16 is 1.5-1.6x faster here, but the same demo training "
        "(the shipped demo config, seed 42) reached test ROC-AUC 0.832 / accuracy 0.767 with it against "
        "1.000 / 1.000 in float32, so bfloat16 stays opt-in (--set train.mixed_precision=bfloat16). "
        "XLA was 2-5x slower on this CPU."))


if __name__ == "__main__":
    main()
