"""A head-only Optuna study with and without the frozen-backbone feature cache: what a trial costs.

Each study runs as `deepfake tune` in its own process, in a fresh working directory with fresh MLflow and
Optuna stores and an empty feature cache (so the cached study pays for computing the features once):
ResNet50 with random initialisation (`--weights none`: offline, and the same backbone in both), 5 head
epochs, no fine-tuning, no flips (the cached head trains on un-augmented features), the same search
space and study name (hence the same sampler seeds). The wall time is the whole command: dataset scan,
leakage check and audit, all trials, the study summary, and in the cached study the assembly of the best
trial's detector (its head-only trials log the head; see deepfake/pipeline.py).

    python benchmarks/bench_study.py [--data DIR] [--size 128] [--trials 20] [--uncached-trials 20]
                                     [--precision off]

With `--uncached-trials N` below `--trials`, the study without the cache runs N trials and its time for
`--trials` is extrapolated from its mean trial time (said so in the results).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import DEFAULT_DATA, run_deepfake, write

HEAD_ONLY_SPACE = """params:
  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.5}
  model.head_units: {type: categorical, choices: [64, 128, 256, 512]}
sampler: {type: tpe}
pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 2}
"""


def study(work: Path, data: str, size: int, trials: int, cache: bool, precision: str) -> dict:
    """One `deepfake tune` in its own process: wall seconds, its peak RSS, and the study's trials."""
    import optuna

    work.mkdir(parents=True)
    (work / "space.yaml").write_text(HEAD_ONLY_SPACE)
    args = ["tune", "--data", data, "--study-name", "bench", "--n-trials", str(trials), "--search-space", "space.yaml",
            "--storage", f"sqlite:///{work}/optuna.db", "--tracking-uri", f"sqlite:///{work}/mlflow.db",
            "--experiment", "bench-study", "--image-size", str(size), "--weights", "none", "--epochs", "5",
            "--fine-tune-epochs", "0", "--no-register", "--set", f"train.feature_cache={str(cache).lower()}",
            "--set", "data.augment.flip=false", "--set", f"train.mixed_precision={precision}"]
    load = os.getloadavg()[0]
    output, seconds, code, usage = run_deepfake(args, work)
    (work / "output.txt").write_text(output)
    if code:
        print(output[-3000:])
        raise SystemExit(f"deepfake tune failed in {work}")
    s = optuna.load_study(study_name="bench", storage=f"sqlite:///{work}/optuna.db")
    done = [t for t in s.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "trials": len(done),
            "pruned": sum(t.state.name == "PRUNED" for t in done),
            "first_trial_s": durations[0], "later_trial_s": sum(durations[1:]) / max(len(durations) - 1, 1),
            "trial_s": durations, "best_val_auc": s.best_value,
            "best_test_auc": s.best_trial.user_attrs.get("test_roc_auc"), "peak_rss_mb": usage.ru_maxrss / 1024,
            "load_before": load, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--uncached-trials", type=int, default=None, help="default: --trials")
    parser.add_argument("--precision", default="off", help="train.mixed_precision of both studies")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--results", default="study", help="name of the results files (results/NAME.md, .json)")
    args = parser.parse_args()
    uncached_n = args.uncached_trials or args.trials
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-study-"))
    cached = study(work / "cache", args.data, args.size, args.trials, True, args.precision)
    runs = {"without cache": study(work / "nocache", args.data, args.size, uncached_n, False, args.precision),
            "with cache": cached}
    base = runs["without cache"]
    extrapolated = uncached_n < args.trials
    if extrapolated:  # the trials not run, at the mean time (and CPU time) of those that were
        missing = (args.trials - uncached_n) / len(base["trial_s"])
        trials_s = sum(base["trial_s"])
        base["cpu_s"] *= 1 + missing * trials_s / base["seconds"]  # CPU time in proportion to wall time
        base["bound_seconds"] = base["seconds"] + missing * trials_s * 3 / 5  # as if all pruned after 3 epochs
        base["seconds"] += missing * trials_s
    rows = []
    for name, r in runs.items():
        rows.append({
            "study": f"{args.trials} trials, {name}" + (f" (extrapolated from {uncached_n})"
                                                         if r is base and extrapolated else ""),
            "seconds": round(r["seconds"], 1), "first_trial_s": round(r["first_trial_s"], 1),
            "later_trial_s": round(r["later_trial_s"], 1), "pruned": f"{r['pruned']}/{r['trials']}",
            "best_val_auc": round(r["best_val_auc"], 4), "best_test_auc": round(r["best_test_auc"] or float("nan"), 4),
            "peak_rss_mb": round(r["peak_rss_mb"]), "load_avg": f"{r['load_before']:.1f}-{r['load_after']:.1f}",
            "speedup": round(base["seconds"] / r["seconds"], 1), "cpu_s": round(r["cpu_s"]),
            "cpu_speedup": round(base["cpu_s"] / r["cpu_s"], 1),
        })
    write(args.results, rows, extra={"runs": runs, "args": vars(args)}, notes=(
        f"`deepfake tune` on {args.data} at {args.size} px, ResNet50 with `--weights none` (random initialisation), "
        f"5 head epochs, no fine-tuning, train.mixed_precision={args.precision}, each study in a fresh process "
        "with fresh stores and an empty feature cache. seconds: the whole command; first/later_trial_s: Optuna's "
        "start-to-end time of the first trial and the mean of the others; load_avg: 1-min load average before and "
        "after (2 cores; above 2 means other jobs shared them); cpu_s: the command's user + system CPU seconds, "
        "which other jobs on the cores inflate less than wall time."
        + (f" Without the cache {uncached_n} trials ran; its {args.trials}-trial time adds the missing trials at "
           f"their mean trial time (CPU time likewise). Later trials of a study are pruned more often: had every "
           f"missing one been pruned after 3 of its 5 epochs, the study would still take "
           f"{base['bound_seconds']:.0f} s, {base['bound_seconds'] / cached['seconds']:.1f}x the cached one."
           if extrapolated else "")))


if __name__ == "__main__":
    main()
