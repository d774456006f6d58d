"""Whole-backbone EfficientNet-Lite0 fine-tuning at 224 px on a CPU: today's settings against each speed option.

Part 1, throughput: the phase-2 training step of ``experiments/configs/dfdc_faces.yaml`` (Lite0, multi-stage pooling,
head [256], all 8 stages trainable, BatchNorm frozen, float32, batch 32) on random pixels, each variant in a fresh
subprocess with its own environment (oneDNN and thread settings are read when TensorFlow is imported). Images/s
per wall-clock second and per CPU second of the process (steadier when other jobs share the cores), the 1-minute
load average at each measurement, and the arithmetic rate reached (a forward pass is ``gmacs`` multiply-adds, a
training step about 3x that). Today's settings and the recommended ones run twice, first and last.

Part 2 (``--train-minutes M``, 0 to skip), learning per minute: ``deepfake train --config dfdc_faces`` on
dfdc-faces-dev (third-party, read-only, never copied) twice, today's recipe against the recommended one, each
with as many fine-tuning epochs as part 1's speed fits in about M minutes; the validation and test ROC-AUC and the
fine-tuning wall time, from the MLflow runs (in a temporary folder).

    nice -n 5 python benchmarks/bench_fine_tune_speed.py [--steps 5] [--train-minutes 4] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine, write

REPO = Path(__file__).resolve().parents[1]
DFDC = REPO.parent / "shared" / "datasets" / "dfdc-faces-dev"
TODAY_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTEROP_THREADS": "0"}  # TensorFlow's own defaults on this CPU
ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "1"}
FAST_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_NUM_INTEROP_THREADS": "1"}  # deepfake.precision.BACKEND_DEFAULTS
RECOMMENDED = "oneDNN, 1 inter-op thread, depthwise frozen"
# (name, environment, child options): stages, batch, depthwise trainable, uint8 input, jit.
VARIANTS = [
    ("today", TODAY_ENV, {}),
    ("oneDNN", {**TODAY_ENV, **ONEDNN}, {}),
    ("oneDNN, 1 inter-op thread", FAST_ENV, {}),
    ("oneDNN, 1 inter-op thread, batch 64", FAST_ENV, {"batch": 64}),
    ("oneDNN, 1 inter-op thread, uint8 input", FAST_ENV, {"uint8": True}),
    ("oneDNN, 1 inter-op thread, stem frozen (7 stages)", FAST_ENV, {"stages": 7}),
    (RECOMMENDED, FAST_ENV, {"depthwise": False}),
    ("recommended, top 3 stages only (staged unfreezing's first epochs)", FAST_ENV, {"depthwise": False, "stages": 3}),
]
XLA = ("today + XLA (jit_compile on)", TODAY_ENV, {"jit": "on"})

CHILD = r"""
import json, os, sys, time
import numpy as np
o = json.loads(sys.argv[1])
from deepfake import config as C, model as M, precision as P, training as T
sys.path.insert(0, o["bench"])
from common import gmacs
size, batch = 224, o.get("batch", 32)
cfg = C.resolve(config_files=["dfdc_faces"], set_args=["model.weights=none", "train.mixed_precision=off",
                                                        f"train.jit_compile={o.get('jit', 'off')}"])
runtime = P.configure_runtime(cfg)
model = M.build_model(cfg)
trainable = M.set_fine_tune(model, o.get("stages", 8), depthwise=o.get("depthwise", True))
T.compile_model(model, 5e-5, runtime["jit_compile"])
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (batch, size, size, 3)).astype("uint8" if o.get("uint8") else "float32")
y = rng.integers(0, 2, (batch, 1)).astype("float32")
for _ in range(2):
    model.train_on_batch(x, y)
start, cpu = time.perf_counter(), time.process_time()
for _ in range(o["steps"]):
    loss = model.train_on_batch(x, y)
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
loss = float(loss[0] if isinstance(loss, (list, tuple)) else loss)
print(json.dumps({"img_per_s": o["steps"] * batch / wall, "img_per_cpu_s": o["steps"] * batch / cpu,
                  "load1": os.getloadavg()[0], "gmacs": gmacs(model), "trainable_layers": trainable,
                  "finite": bool(np.isfinite(loss)), "onednn": runtime.get("onednn"),
                  "inter_op": runtime.get("inter_op_threads")}))
"""


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTEROP_THREADS")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def throughput(name: str, env: dict[str, str], opts: dict, steps: int, timeout: int) -> dict:
    options = {"steps": steps, "bench": str(Path(__file__).resolve().parent), **opts}
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(options)], capture_output=True, text=True,
                             env=child_env(env), cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": name, "error": f"not done in {timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"variant": name, "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:120]}
    return {"variant": name, "batch": opts.get("batch", 32), **json.loads(lines[0])}


def part1(steps: int, xla: bool) -> list[dict]:
    runs = []
    variants = VARIANTS + ([XLA] if xla else [])
    order = [VARIANTS[0], *variants[1:], VARIANTS[0], next(v for v in VARIANTS if v[0] == RECOMMENDED)]
    for name, env, opts in order:
        r = throughput(name, env, opts, steps, 900 if opts.get("jit") else 300)
        print(json.dumps(r), flush=True)
        runs.append(r)
    return runs


def summarise(runs: list[dict]) -> list[dict]:
    ok = [r for r in runs if "error" not in r]
    today = [r for r in ok if r["variant"] == "today"]
    base = sum(r["img_per_s"] for r in today) / max(len(today), 1)
    base_cpu = sum(r["img_per_cpu_s"] for r in today) / max(len(today), 1)
    rows, seen = [], []
    for r in runs:
        if r["variant"] in seen:
            continue
        seen.append(r["variant"])
        same = [x for x in ok if x["variant"] == r["variant"]]
        if not same:
            rows.append({"variant": r["variant"], "img_per_s": float("nan"), "vs_today": float("nan"),
                         "img_per_cpu_s": float("nan"), "cpu_vs_today": float("nan"), "gflops_per_cpu_s": float("nan"),
                         "load1": "", "runs": 0, "note": r["error"]})
            continue
        wall = sum(x["img_per_s"] for x in same) / len(same)
        cpu = sum(x["img_per_cpu_s"] for x in same) / len(same)
        rows.append({"variant": r["variant"], "img_per_s": round(wall, 1), "vs_today": round(wall / base, 2),
                     "img_per_cpu_s": round(cpu, 1), "cpu_vs_today": round(cpu / base_cpu, 2),
                     # a training step ~ 3 forward passes; 2 FLOPs per multiply-add (full backbone's forward)
                     "gflops_per_cpu_s": round(cpu * 3 * 2 * same[0]["gmacs"], 1),
                     "load1": " / ".join(f"{x['load1']:.1f}" for x in same), "runs": len(same),
                     "note": f"oneDNN {same[0]['onednn']}, inter-op {same[0]['inter_op']}, "
                             f"{same[0]['trainable_layers']} trainable layers"
                             + ("" if all(x["finite"] for x in same) else ", NaN loss")})
    return rows


# --- part 2: a real training comparison -----------------------------------------------------------------------------

RECIPES = {
    "today": (TODAY_ENV, []),
    "recommended": (FAST_ENV, ["train.fine_tune_depthwise=false", "train.fine_tune_schedule=cosine",
                               "train.fine_tune_lr_warmup_epochs=1"]),
}


def train_run(name: str, data: Path, epochs: int, folder: Path, timeout: int) -> dict:
    env, sets = RECIPES[name]
    uri = f"sqlite:///{folder}/mlflow.db"
    args = ["train", "--data", str(data), "--config", "dfdc_faces", "--fine-tune-epochs", str(epochs),
            "--tracking-uri", uri, "--experiment", "fine-tune-speed", "--output-dir", str(folder / name),
            "--set", f"train.feature_cache_dir={folder}/features", "--set", f"tracking.run_name={name}",
            "--set", "tracking.log_model=false", *[x for s in sets for x in ("--set", s)]]
    start, load = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, "-c", "from deepfake.cli import main; main()", *args], cwd=folder,
                            env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this process's own CPU time, whatever else runs
    timer.cancel()
    wall = time.perf_counter() - start
    row = {"recipe": name, "fine_tune_epochs": epochs, "sets": " ".join(sets) or "-",
           "wall_s": round(wall, 0), "cpu_s": round(usage.ru_utime + usage.ru_stime, 0),
           "load1": f"{load:.1f} / {os.getloadavg()[0]:.1f}", "exit": os.waitstatus_to_exitcode(status)}
    try:
        import mlflow

        mlflow.set_tracking_uri(uri)
        run = next(r for r in mlflow.search_runs(experiment_names=["fine-tune-speed"], output_format="list")
                   if r.data.tags.get("mlflow.runName") == name)
        client = mlflow.MlflowClient()
        loss = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        val = sorted(client.get_metric_history(run.info.run_id, "val_auc"), key=lambda m: m.step)
        boundary = 2  # dfdc_faces: 2 head epochs
        tuned = [m for m in loss if m.step >= boundary]
        phase2 = (tuned[-1].timestamp - loss[boundary - 1].timestamp) / 1000 if tuned and len(loss) >= boundary else 0
        row.update(fine_tune_s=round(phase2, 0), epochs_run=len(tuned),
                   best_val_auc=round(max(m.value for m in val), 4) if val else float("nan"),
                   val_auc_per_epoch=" ".join(f"{m.value:.3f}" for m in val),
                   test_roc_auc=round(run.data.metrics.get("test_roc_auc", float("nan")), 4),
                   onednn=run.data.tags.get("runtime.onednn", "?"))
    except (StopIteration, ImportError, KeyError, ValueError) as exc:
        last = (output or "").strip().splitlines() or [""]
        row["error"] = f"{type(exc).__name__}: {exc}; {last[-1][:200]}"
    print(json.dumps(row), flush=True)
    return row


def part2(rows: list[dict], minutes: float, data: Path) -> list[dict]:
    # Images/s on the idle machine: per CPU second times the ~1.8 cores a process gets (wall time moves with the load).
    speed = {r["variant"]: r["img_per_cpu_s"] * 0.9 * (os.cpu_count() or 1) for r in rows}
    per_epoch = 1392 + 350  # dfdc-faces-dev's training crops + the self-blended fakes of half its 700 reals
    today, fast = speed.get("today"), speed.get(RECOMMENDED)
    if not (today and fast and math.isfinite(today) and math.isfinite(fast)):
        return []
    epochs = max(1, round(minutes * 60 * today / per_epoch))
    results = []
    with tempfile.TemporaryDirectory(prefix="fine_tune_speed_") as tmp:
        # The recommended recipe gets the epochs that fit in the same CPU time, by part 1's speeds.
        for name, n in (("today", epochs), ("recommended", max(1, round(epochs * fast / today)))):
            results.append(train_run(name, data, n, Path(tmp), int(minutes * 60 * 4 + 600)))
    return results


def table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                      *("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per variant (after 2 warm-up)")
    parser.add_argument("--train-minutes", type=float, default=4.0, help="part 2's fine-tuning budget (0: skip)")
    parser.add_argument("--data", type=Path, default=DFDC, help="part 2's dataset (dfdc-faces-dev)")
    parser.add_argument("--xla", action="store_true", help="add a row with XLA (its compilation takes minutes)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = summarise(part1(args.steps, args.xla))
    training = part2(rows, args.train_minutes, args.data) if args.train_minutes > 0 and args.data.is_dir() else []
    info = machine()
    notes = [
        f"Command: `nice -n 5 python benchmarks/bench_fine_tune_speed.py --steps {args.steps} --train-minutes "
        f"{args.train_minutes:g}` ({(time.perf_counter() - started) / 60:.0f} min). "
        "Part 1: one phase-2 training step of the dfdc_faces recipe (EfficientNet-Lite0, 224 px, multi-stage pooling, "
        f"all 8 stages trainable unless said, BatchNorm frozen, float32, batch 32 unless said), {args.steps} timed "
        "steps after 2 warm-up steps on random pixels, each variant in a fresh process (today's and the recommended "
        "one twice: their mean). img_per_cpu_s: per CPU second of the process, steadier than wall time when other "
        "jobs share the cores (load1: the 1-minute load average after each run; the machine was shared). "
        "gflops_per_cpu_s: 6 x the forward pass's multiply-adds per image (a training step is about 3 forward "
        f"passes) x images per CPU second; {info['cpu']} ({', '.join(info['cpu_flags']) or 'no listed flags'}).",
        "oneDNN: TF_ENABLE_ONEDNN_OPTS=1 (TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI, "
        "AVX512_BF16 or AMX); 1 inter-op thread: TF_NUM_INTEROP_THREADS=1. Both are read when TensorFlow is imported: "
        "deepfake.precision.backend_defaults() sets them (the user's own values win). Depthwise frozen: "
        "train.fine_tune_depthwise=false. Stem frozen: train.fine_tune_stages=7. Top 3 stages: what "
        "train.fine_tune_warmup_stages=3 trains during train.fine_tune_warmup_epochs.",
    ]
    if training:
        notes.append("Part 2 (learning per minute): `deepfake train --data dfdc-faces-dev --config dfdc_faces "
                     "--fine-tune-epochs N --set ...`: today's recipe in today's environment with N epochs for about "
                     f"{args.train_minutes:g} min of fine-tuning on the idle machine (part 1's speed per CPU second x "
                     "1.8 cores), the recommended one with "
                     f"{' '.join(RECIPES['recommended'][1])} and oneDNN, 1 inter-op thread, with the epochs that fit "
                     "in the same CPU time (N x its CPU speed-up in part 1). cpu_s: CPU seconds of the whole run (its "
                     "own, from wait4), load1: the load average at its start and end; fine_tune_s: phase 2's wall time "
                     "(MLflow metric timestamps), which moves with the other jobs' load; best_val_auc: the best "
                     "validation ROC-AUC (the model kept); test_roc_auc: on the test split.\n\n"
                     + table(training))
    write("fine_tune_speed", rows, notes="\n\n".join(notes), extra={"training": training})


if __name__ == "__main__":
    main()
