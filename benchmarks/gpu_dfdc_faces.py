"""The ``dfdc_faces`` recipe trained on a GPU with the JAX and then the PyTorch backend (issue 22), on a device machine.

For each backend, in a process of its own: ``deepfake --backend B train --config dfdc_faces --data DATA --epochs E
--fine-tune-epochs F`` (the command line users run; MLflow in a temporary SQLite store), with one addition made by
the wrapper below, never by the project: a Keras callback appended to the run's callbacks that times every training
epoch (first step apart: tracing and XLA compilation) and counts its steps. Recorded per backend: images/s
(steady: the steps after each ``fit``'s first; whole epochs too), the validation and test ROC-AUC of the run (from
its MLflow store), and the device tags (the run's ``runtime.*`` tags: backend and version, Keras, device name,
precision, jit; plus ``nvidia-smi``'s GPU name and driver). Everything goes to ``OUT/gpu_dfdc_faces.log`` as it
happens (a timed-out command returns nothing else) and the results to ``OUT/gpu_dfdc_faces.json`` and ``.md``.

On the device machine (benchmarks/results/gpu.md): ``bash benchmarks/gpu_dfdc_faces.sh --epochs 1
--fine-tune-epochs 3`` with ``carry=[".gpu"]`` after ``tools/gpu_wheels.sh`` (wheels, the deepfake wheel and a copy of
the dataset in the ignored folder ``.gpu/``). Rehearsal here, without CUDA and without TensorFlow (hidden from the
children, as on the device machine): ``python benchmarks/gpu_dfdc_faces.py --cpu-rehearsal``: 20 images per class
and split, 1 + 1 epochs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (REPO / ".gpu" / "dfdc-faces-dev", REPO.parent / "shared" / "datasets" / "dfdc-faces-dev")
NAME = "gpu_dfdc_faces"

# Runs ``deepfake`` in the child: appends the epoch timer to pipeline.run's callbacks, optionally hides TensorFlow
# (as on the device machine), and writes the distributions imported (what the device machine needs as wheels).
WRAPPER = r"""
import atexit, json, os, sys, time
times_file, imports_file = os.environ["GPU_BENCH_TIMES"], os.environ.get("GPU_BENCH_IMPORTS")
if os.environ.get("GPU_BENCH_HIDE_TF") == "1":  # as if not installed: find_spec gives None, import fails
    import importlib.machinery as _M
    class _NoTF(_M.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.partition(".")[0] in ("tensorflow", "tf_keras", "tf2onnx", "tensorflow_hub"):
                return None
            return _M.PathFinder.find_spec(name, path, target)
    sys.meta_path[:] = [_NoTF if f is _M.PathFinder else f for f in sys.meta_path]
epochs = []

def _dump():
    with open(times_file, "w") as f:
        json.dump(epochs, f)
    if imports_file:
        from importlib import metadata
        dists = metadata.packages_distributions()
        used = sorted({d for m in list(sys.modules) for d in dists.get(m.partition(".")[0], [])})
        with open(imports_file, "w") as f:
            json.dump({d: metadata.version(d) for d in used}, f, indent=1)
atexit.register(_dump)

from deepfake import pipeline
_run = pipeline.run

def run(cfg, **kw):
    import keras
    batch = cfg.data.batch_size

    class EpochTimer(keras.callbacks.Callback):
        fit_no = 0
        def on_train_begin(self, logs=None):
            EpochTimer.fit_no += 1
            self.first_of_fit = True
        def on_epoch_begin(self, epoch, logs=None):
            self.e = {"epoch": epoch, "fit": EpochTimer.fit_no, "first_of_fit": self.first_of_fit, "steps": 0,
                      "batch": batch, "start": time.perf_counter()}
            self.first_of_fit = False
        def on_train_batch_end(self, step, logs=None):
            now = time.perf_counter()
            self.e["steps"] += 1
            if self.e["steps"] == 1:
                self.e["first_step_s"] = now - self.e["start"]
                self.e["after_first"] = now
            self.e["last"] = now
        def on_test_begin(self, logs=None):
            if getattr(self, "e", None) is not None and "train_s" not in self.e and "last" in self.e:
                self.e["train_s"] = self.e["last"] - self.e["start"]
        def on_epoch_end(self, epoch, logs=None):
            e = self.e
            e["epoch_s"] = time.perf_counter() - e["start"]
            e.setdefault("train_s", e.get("last", e["start"]) - e["start"])
            e["steady_s"] = e.get("last", 0) - e.get("after_first", 0)
            for k in ("start", "after_first", "last"):
                e.pop(k, None)
            e["logs"] = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            epochs.append(e)
            print("EPOCH " + json.dumps(e), flush=True)
            _dump()

    kw["callbacks"] = [*kw.get("callbacks", ()), EpochTimer()]
    return _run(cfg, **kw)

pipeline.run = run
from deepfake.cli import main
sys.argv[0] = "deepfake"
main()
"""


class Log:
    """Print and append to the log file at once (a timed-out command returns only what is under OUT)."""

    def __init__(self, path: Path):
        self.file = path.open("a", buffering=1)

    def __call__(self, *parts: object) -> None:
        text = " ".join(str(p) for p in parts)
        print(text, flush=True)
        self.file.write(text + "\n")


def find_data(given: Path | None) -> Path:
    for path in ([given] if given else DATA_CANDIDATES):
        if path and (path / "train").is_dir():
            return path
    sys.exit(f"no dfdc-faces-dev at {given or ' or '.join(map(str, DATA_CANDIDATES))} (tools/gpu_wheels.sh copies it "
             "into .gpu/)")


def subset(data: Path, per_class: int, into: Path) -> Path:
    """A small copy: the first ``per_class`` images of each split and class (symbolic links), metadata kept."""
    rows = []
    with (data / "metadata.csv").open() as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        taken: dict[tuple[str, str], int] = {}
        for row in reader:
            key = (row["split"], row["label"])
            if taken.get(key, 0) >= per_class:
                continue
            taken[key] = taken.get(key, 0) + 1
            (into / row["path"]).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(data / row["path"], into / row["path"])
            rows.append(row)
    with (into / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return into


def gpu_info() -> dict[str, str]:
    if not shutil.which("nvidia-smi"):
        return {"nvidia_smi": "absent (no NVIDIA driver)"}
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=60)
    return {"nvidia_smi": out.stdout.strip() or out.stderr.strip()}


def from_store(db: Path, run_name: str) -> dict:
    """The run's metrics and runtime tags, read from its MLflow SQLite store (no mlflow import needed)."""
    if not db.exists():
        return {"store_error": f"no {db}"}
    con = sqlite3.connect(db)
    try:
        found = con.execute("SELECT run_uuid FROM runs WHERE name = ? ORDER BY start_time DESC", (run_name,)).fetchone()
        if not found:
            return {"store_error": f"no run named {run_name}"}
        run = found[0]
        latest = dict(con.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run,)).fetchall())
        val_auc = [v for (v,) in con.execute("SELECT value FROM metrics WHERE run_uuid = ? AND key = 'val_auc' "
                                             "ORDER BY step", (run,)).fetchall()]
        tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ? "
                                "AND (key LIKE 'runtime.%' OR key LIKE 'weights.%')", (run,)).fetchall())
        status = con.execute("SELECT status FROM runs WHERE run_uuid = ?", (run,)).fetchone()[0]
    finally:
        con.close()
    auc = {k: round(v, 4) for k, v in latest.items() if "roc_auc" in k or k in ("val_auc", "test_auc")}
    return {"run_id": run, "status": status, "val_auc_per_epoch": [round(v, 4) for v in val_auc], "metrics": auc,
            "runtime_tags": tags}


def speed(epochs: list[dict]) -> dict:
    """Images/s: steady (every step after each fit's first, i.e. no compilation) and whole (every training step)."""
    steady_imgs = sum((e["steps"] - 1) * e["batch"] for e in epochs if e["steps"] > 1)
    steady_s = sum(e["steady_s"] for e in epochs if e["steps"] > 1)
    all_imgs = sum(e["steps"] * e["batch"] for e in epochs)
    all_s = sum(e["train_s"] for e in epochs)
    return {"steady_images_per_s": round(steady_imgs / steady_s, 1) if steady_s > 0 else None,
            "whole_images_per_s": round(all_imgs / all_s, 1) if all_s > 0 else None,
            "first_step_s": [round(e.get("first_step_s", 0), 1) for e in epochs],
            "epoch_s": [round(e["epoch_s"], 1) for e in epochs], "steps": [e["steps"] for e in epochs],
            "train_s_total": round(all_s, 1)}


def train(backend: str, args, data: Path, work: Path, out: Path, log: Log) -> dict:
    times, imports = work / f"{backend}_epochs.json", out / f"{NAME}_imports_{backend}.json"
    db = work / "mlflow.db"
    cmd = [sys.executable, "-c", WRAPPER, "--backend", backend, "train", "--data", str(data),
           "--config", "dfdc_faces", "--epochs", str(args.epochs), "--fine-tune-epochs", str(args.fine_tune_epochs),
           "--tracking-uri", f"sqlite:///{db}", "--experiment", "gpu-dfdc-faces", "--output-dir", str(work / backend),
           "--set", f"train.feature_cache_dir={work / 'features'}", "--set", f"tracking.run_name={backend}",
           "--set", "tracking.log_model=false", *[x for s in args.set for x in ("--set", s)]]
    env = {**os.environ, "GPU_BENCH_TIMES": str(times), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "KERAS_BACKEND": backend, "MPLBACKEND": "Agg"}
    if args.imports:
        env["GPU_BENCH_IMPORTS"] = str(imports)
    if args.hide_tensorflow:
        env["GPU_BENCH_HIDE_TF"] = "1"
    if backend == "jax":
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the GPU is shared with nothing, but be polite
    log(f"== {backend}: deepfake --backend {backend} train --config dfdc_faces --data {data} --epochs {args.epochs} "
        f"--fine-tune-epochs {args.fine_tune_epochs} {' '.join('--set ' + s for s in args.set)}")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = start + args.timeout
    assert proc.stdout is not None
    for line in proc.stdout:  # streamed into the log as it comes
        log(f"[{backend} {time.perf_counter() - start:6.0f}s] {line.rstrip()}")
        if time.perf_counter() > deadline:
            proc.kill()
            log(f"[{backend}] killed after {args.timeout} s")
            break
    code = proc.wait()
    wall = time.perf_counter() - start
    epochs = json.loads(times.read_text()) if times.exists() else []
    result = {"backend": backend, "exit": code, "wall_s": round(wall, 1), **speed(epochs),
              **from_store(db, backend), "epochs": epochs}
    log(f"== {backend}: " + json.dumps({k: v for k, v in result.items() if k != "epochs"}))
    return result


def table(rows: list[dict]) -> str:
    cols = ["backend", "version", "device", "precision", "weights", "steady img/s", "whole img/s", "val ROC-AUC",
            "test ROC-AUC", "wall s", "first steps s", "exit"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        t, m = r.get("runtime_tags", {}), r.get("metrics", {})
        val = m.get("val_final_roc_auc", max(r.get("val_auc_per_epoch") or [float("nan")]))
        lines.append("| " + " | ".join(str(x) for x in (
            r["backend"], t.get("runtime.backend_version", "?"), t.get("runtime.device_name", "?"),
            t.get("runtime.precision_policy", "?"), t.get("weights.source", "?"),
            r.get("steady_images_per_s"), r.get("whole_images_per_s"), val, m.get("test_roc_auc", "?"),
            r.get("wall_s"), " ".join(map(str, r.get("first_step_s", []))), r.get("exit"))) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"], choices=["jax", "torch", "tensorflow"])
    parser.add_argument("--epochs", type=int, default=1, help="phase-1 epochs (head; the recipe's own: 2)")
    parser.add_argument("--fine-tune-epochs", type=int, default=3,
                        help="phase-2 epochs (the recipe's: 8; its first 2 train the top 3 stages only)")
    parser.add_argument("--data", type=Path, default=None, help="dfdc-faces-dev (default: .gpu/ copy, else ../shared)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks/_work/gpu"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--timeout", type=int, default=420, help="seconds per backend before its run is killed")
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="no GPU needed: 20 images per class and split, 1 + 1 epochs, TensorFlow hidden")
    parser.add_argument("--per-class", type=int, default=20, help="--cpu-rehearsal: images per class and split")
    parser.add_argument("--imports", action="store_true", help="write the distributions each run imported")
    parser.add_argument("--hide-tensorflow", action="store_true", help="refuse TensorFlow imports in the runs")
    args = parser.parse_args()
    if args.cpu_rehearsal:
        args.epochs, args.fine_tune_epochs, args.hide_tensorflow, args.imports = 1, 1, True, True
        args.set = ["train.fine_tune_warmup_epochs=0", *args.set]  # one fine-tune epoch: the whole backbone at once
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / f"{NAME}.log")
    data = find_data(args.data)
    log(f"# {NAME} {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; python {sys.version.split()[0]}; data {data}; "
        f"out {args.out}; {json.dumps(gpu_info())}")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_dfdc_") as tmp:
        work = Path(tmp)
        if args.cpu_rehearsal:
            data = subset(data, args.per_class, work / "subset")
            log(f"rehearsal subset: {args.per_class} images per split and class at {data}")
        for backend in args.backends:
            try:
                results.append(train(backend, args, data, work, args.out, log))
            except Exception as exc:  # noqa: BLE001 - one backend's failure must not lose the other's results
                log(f"== {backend}: failed: {type(exc).__name__}: {exc}")
                results.append({"backend": backend, "error": f"{type(exc).__name__}: {exc}"})
            (args.out / f"{NAME}.json").write_text(json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "gpu": gpu_info(), "results": results}, indent=1))
    text = (f"# {NAME}\n\n{time.strftime('%Y-%m-%d')} · {json.dumps(gpu_info())}\n\n"
            + table([r for r in results if "error" not in r])
            + f"\n\n`deepfake --backend B train --config dfdc_faces --epochs {args.epochs} --fine-tune-epochs "
            f"{args.fine_tune_epochs}`{' ' + ' '.join('--set ' + s for s in args.set) if args.set else ''}"
            + (f" (CPU rehearsal, {args.per_class} images per class and split)" if args.cpu_rehearsal else "")
            + ". steady img/s: training steps after each fit's first (no compilation), batch 32 "
            "(steps x 32: an epoch's last, partial batch counts as full); whole img/s: every training step; first "
            "steps s: each epoch's first step (compilation at each fit); val ROC-AUC: the run's val_final_roc_auc "
            "(the kept model).\n")
    (args.out / f"{NAME}.md").write_text(text)
    log(text)


if __name__ == "__main__":
    main()
