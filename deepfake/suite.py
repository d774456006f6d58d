"""The whole experiment suite (``deepfake suite``, the MLproject's ``main`` entry point).

1. the synthetic demo dataset, when asked and not there yet;
2. an Optuna study (:mod:`deepfake.tuning`), every trial a nested MLflow run;
3. its best model registered and promoted to ``@champion`` if it wins (:mod:`deepfake.registry`);
4. the champion evaluated on the test split and a sample prediction figure, both logged to the
   study's parent run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepfake import data as D
from deepfake import evaluation, plots, registry, tracking, tuning
from deepfake.config import Config
from deepfake.demo import make_demo_dataset
from deepfake.errors import DeepfakeError
from deepfake.inference import load_predictor, sample_predictions


class NoChampion(DeepfakeError):
    """No trial of the study completed, so there is no model to register."""

    exit_code = 1


def run_suite(cfg: Config, *, study_name: str, storage: str, n_trials: int, search_space: str,
              demo_data: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite on ``cfg.data.path`` (written there first with ``demo_data`` when it holds no ``train/``)."""
    started = time.time()
    if demo_data and not (Path(cfg.data.path) / "train").is_dir():
        echo(f"Writing the synthetic demo dataset to {cfg.data.path}/ ...")
        make_demo_dataset(cfg.data.path, seed=0)
    space = tuning.load_search_space(search_space)  # a mistake in it stops before anything is recorded
    tracking.setup(cfg.tracking)
    result = tuning.tune(cfg, study_name=study_name, storage=storage, n_trials=n_trials, timeout=None,
                         search_space=space, metric="val_auc", heartbeat_interval=30, echo=echo)
    if registry.register_study_best(result, cfg, echo=echo) is None:
        raise NoChampion("no trial completed, so there is no model to register")

    champion_uri = f"models:/{cfg.tracking.registered_model}@{tracking.CHAMPION_ALIAS}"
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
    out = Path(cfg.train.output_dir) / study_name / "champion"
    predictor = load_predictor(tracking.local_model(champion_uri))
    champion = evaluation.evaluate_predictor(predictor, info, out, model_ref=champion_uri, echo=echo)
    pick = sample_predictions(predictor, info.splits["test"], info.class_names, n=1, seed=cfg.train.seed)[0]
    figure = plots.plot_sample(pick["image"], pick["true_label"], pick["predicted_label"], pick["fake_probability"],
                               out / "sample_prediction.png", title=pick["name"])
    echo(f"Sample: {pick['path']}: true {pick['true_label']}, predicted {pick['predicted_label']} "
         f"(fake probability {pick['fake_probability']:.3f})")
    with tracking.start_run(run_id=result.parent_run_id):
        tracking.log_metrics(champion["metrics"], prefix="champion_test_")
        tracking.log_artifacts([out], "champion")
    echo(f"\nDone in {(time.time() - started) / 60:.1f} min. Champion: {champion_uri} "
         f"(test ROC-AUC {champion['metrics']['roc_auc']:.4f}). Sample figure: {figure}")
    echo(f"Look at it: mlflow ui --backend-store-uri {tracking.active_tracking_uri()}")
    return {"study": result, "champion_uri": champion_uri, "metrics": champion["metrics"], "figure": figure}
