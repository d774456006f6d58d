"""End to end: the default `deepfake suite` (what `mlflow run .` runs) and a study on a real
dataset with and without the frozen-backbone feature cache. Wall time and peak RSS of each
command (fresh working directory, fresh stores).

    python benchmarks/bench_end_to_end.py [--data DIR] [--trials 20] [--skip-suite]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import DEFAULT_DATA, run_deepfake, write

HEAD_ONLY_SPACE = """params:
  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.5}
  model.head_units: {type: categorical, choices: [64, 128, 256, 512]}
sampler: {type: tpe}  # seeded per trial from train.seed and the study name
pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 2}
"""


def run(args: list[str], cwd: Path) -> dict:
    """Run a deepfake command in its own process: seconds, that process's own peak RSS (wait4), exit
    code, and the study summary lines it printed (trial counts, best value)."""
    output, seconds, code, usage = run_deepfake(args, cwd)
    if code:
        print(output[-2000:])
    summary = [line.strip() for line in output.splitlines() if line.startswith(("Study '", "Best trial"))]
    best = next((line.split(" value ")[1].split()[0] for line in summary if line.startswith("Best trial")), "")
    counts = next((line.split(": ", 1)[1].split(";")[0] for line in summary if line.startswith("Study '")
                   and "complete" in line), "")
    return {"seconds": round(seconds), "peak_rss_mb": round(usage.ru_maxrss / 1024), "exit": code,
            "trials": counts, "best_val_auc": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--skip-suite", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.skip_suite:
        work = Path(tempfile.mkdtemp(prefix="bench-suite-"))
        rows.append({"job": "deepfake suite (= mlflow run . main), demo data", **run(["suite"], work)})
    work = Path(tempfile.mkdtemp(prefix="bench-study-"))
    (work / "space.yaml").write_text(HEAD_ONLY_SPACE)
    for cache in ("false", "true"):
        result = run([
            "tune", "--data", args.data, "--study-name", f"cache-{cache}", "--n-trials", str(args.trials),
            "--search-space", "space.yaml", "--image-size", str(args.size), "--weights", "none", "--epochs", "5",
            "--fine-tune-epochs", "0", "--no-register", "--set", f"train.feature_cache={cache}",
            "--set", "data.augment.flip=false", "--experiment", "bench-e2e"], work)
        rows.append({"job": f"{args.trials}-trial study, {Path(args.data).name} at {args.size} px, "
                            f"feature_cache={cache}", **result})
    write("end_to_end", rows, notes=(
        "Peak RSS is each command's own peak resident set (wait4). Both studies use the same sampler seed. The study "
        "trains the head on the frozen (random-init, offline) backbone for 5 epochs per trial, i.e. the trials "
        "the feature cache serves; fine-tuning trials gain only their phase 1."))


if __name__ == "__main__":
    main()
