"""Mixed bfloat16 against float32 training, side by side: test ROC-AUC, wall time and CPU time of `deepfake train`.

Each case (a shipped config and a seed) is trained once with `--set train.mixed_precision=off` and once with
`=bfloat16`, each `deepfake train` in a fresh process with its own output folder, MLflow store and feature
cache (so that no run reads features another precision computed). The test ROC-AUC is the run's own
(outputs/evaluation/test_metrics.json). CPU time (user + system of the run) is reported beside wall time:
other jobs on a shared machine stretch the wall time much more than the CPU time; the load average before
and after each run says how contended it was. A case whose result is already in --work is not run again.

    python benchmarks/bench_precision.py                        # demo seeds 42, 7, 1; ai_vs_real seed 42
    python benchmarks/bench_precision.py --cases demo:42 ai_vs_real:42 --work benchmarks/_work/precision

`demo` trains on `deepfake demo-data` (300 images per class, 64 px, seed 0: what `mlflow run .` makes),
`ai_vs_real` on --data (default ../shared/datasets/ai-vs-real).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_DATA, write

CLI = "from deepfake.cli import main; main()"
PRECISIONS = ("off", "bfloat16")


def run_case(work: Path, config: str, data: Path, seed: int, precision: str) -> dict:
    out = work / f"{config}_s{seed}_{precision}"
    result = out / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["deepfake", "train", "--data", data.name, "--config", config, "--seed", str(seed),
           "--set", f"train.mixed_precision={precision}"]
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(out / "train.log", "w") as log:
        proc = subprocess.run([sys.executable, "-c", CLI, *cmd[1:3], str(data), *cmd[4:], "--output-dir",
                               str(out / "outputs"),
                               "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"], cwd=out, stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {"config": config, "seed": seed, "precision": "float32" if precision == "off" else "mixed_bfloat16",
           "test_roc_auc": float("nan"), "test_accuracy": float("nan"), "epochs": 0, "wall_s": round(wall, 1),
           "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
           "command": " ".join(cmd)}
    if proc.returncode == 0:
        metrics = json.loads((out / "outputs" / "evaluation" / "test_metrics.json").read_text())["at_threshold"]
        state = json.loads((out / "outputs" / "checkpoints" / "state.json").read_text())
        row.update(test_roc_auc=round(metrics["roc_auc"], 4), test_accuracy=round(metrics["accuracy"], 4),
                   epochs=int(state["epochs_done"]))
        result.write_text(json.dumps(row, indent=2))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["demo:42", "demo:7", "demo:1", "ai_vs_real:42"],
                        help="CONFIG:SEED, a shipped config (demo or ai_vs_real) and a seed")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset of the ai_vs_real cases")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work" / "precision")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    demo = args.work / "demo_data"
    if any(c.startswith("demo:") for c in args.cases) and not demo.is_dir():
        subprocess.run([sys.executable, "-c", CLI, "demo-data", str(demo), "--per-class", "300", "--size", "64",
                        "--seed", "0"], check=True)
    rows = []
    for case in args.cases:
        config, seed = case.split(":")
        for precision in PRECISIONS:
            rows.append(run_case(args.work, config, demo if config == "demo" else args.data, int(seed), precision))
            print(json.dumps(rows[-1]), flush=True)
    write("precision", rows, notes=(
        "`deepfake train --config CONFIG --seed SEED --set train.mixed_precision=off|bfloat16`, each in a fresh "
        "process; mixed_bfloat16 keeps the stem convolution, the pooled features and the head in float32. wall_s "
        "and cpu_s are the whole command (data checks, training, evaluation, logging); load_before/after: the "
        "1-minute load average of the 2-core machine (other jobs ran beside these, so compare cpu_s)."))


if __name__ == "__main__":
    main()
