"""``deepfake tune``: an Optuna study, every trial a nested MLflow run, its best model registered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from deepfake.cli.app import SEARCH_SPACE_HELP, config_from_options, main, require, training_options
from deepfake.objectives import METRICS, OPTIMISE

DEFAULT_SEARCH_SPACE = "search_space"  # shipped in experiments/search_space.yaml (installed as deepfake.experiments)


def tune_options(func: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option("--study-name", required=True, help="Optuna study name; the same name and storage resume it."),
        click.option("--storage", default="sqlite:///optuna.db", show_default=True,
                     help="Optuna storage URL; postgresql://user@host/db lets many workers share the study."),
        click.option("--n-trials", default=10, show_default=True, type=click.IntRange(min=1),
                     help="Run until the study holds this many finished (complete or pruned) trials."),
        click.option("--timeout", default=0, show_default=True, type=click.FloatRange(min=0),
                     help="Stop starting new trials after this many seconds (0 = no limit)."),
        click.option("--search-space", default=DEFAULT_SEARCH_SPACE, show_default=True, type=click.Path(),
                     help=SEARCH_SPACE_HELP),
        click.option("--metric", default="val_auc", show_default=True, type=click.Choice(list(METRICS)),
                     help="Validation metric to optimise and prune on."),
        click.option("--heartbeat", default=30, show_default=True, type=click.IntRange(min=1),
                     help="Seconds between trial heartbeats; a trial silent for 2x this is failed and retried."),
        click.option("--also-data", default=None, type=click.Path(),
                     help="Also score every trial on this dataset (whole, or its test split; never trained on): "
                          "how well each detector does on another kind of fake."),
        click.option("--optimise", default="primary", show_default=True, type=click.Choice(list(OPTIMISE)),
                     help="What the study maximises: primary (--metric; the --also-data score is recorded), also "
                          "(the --also-data ROC-AUC) or both (a multi-objective study: Pareto front plotted; the "
                          "best trial is the Pareto-optimal one with the highest mean of the two)."),
        click.option("--register/--no-register", default=True, show_default=True,
                     help="Register the best trial's model and promote it to @champion if it beats the champion."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command()
@training_options
@tune_options
def tune(study_name: str, storage: str, n_trials: int, timeout: float, search_space: str, metric: str, heartbeat: int,
         also_data: str | None, optimise: str, register: bool, **options: Any) -> None:
    """Run (or resume) an Optuna study of two-phase transfer-learning trainings.

    Every trial is an MLflow run nested under the study's parent run, pruned on the
    validation metric per epoch. Start the same command on several machines with a shared
    --storage (PostgreSQL) and MLFLOW_TRACKING_URI to tune in parallel.

    With --also-data every trial is scored on a second dataset too, and --optimise also|both tunes
    for it (generalisation to another kind of fake).
    """
    from deepfake import registry, tracking, tuning

    cfg = config_from_options(**options)
    require(cfg.data.path, "--data", "give the dataset folder")
    space = tuning.load_search_space(search_space)  # a mistake in it stops before anything is recorded
    tracking.setup(cfg.tracking)
    result = tuning.tune(cfg, study_name=study_name, storage=storage, n_trials=n_trials, timeout=timeout or None,
                         search_space=space, metric=metric, heartbeat_interval=heartbeat, also_data=also_data,
                         optimise=optimise, echo=click.echo)
    if register:
        registry.register_study_best(result, cfg, echo=click.echo)
