"""``deepfake suite`` (the MLproject's ``main``): the whole experiment suite, see :mod:`deepfake.suite`."""

from __future__ import annotations

import click

from deepfake.cli.app import SEARCH_SPACE_HELP, config_from_options, main


@main.command()
@click.option("--data", default="", help="Dataset root; empty = make the synthetic demo dataset in --demo-dir.")
@click.option("--demo-dir", default="demo_data", show_default=True, type=click.Path(), help="Where demo data goes.")
@click.option("--config", "config_files", multiple=True, default=("demo",), show_default=True,
              type=click.Path(), help="YAML config file(s), or shipped config(s) by name (default, demo, ai_vs_real).")
@click.option("--study-name", default="demo", show_default=True, help="Optuna study name.")
@click.option("--storage", default="sqlite:///optuna.db", show_default=True, help="Optuna storage URL.")
@click.option("--n-trials", default=3, show_default=True, type=click.IntRange(min=1), help="Finished trials wanted.")
@click.option("--search-space", default="search_space_demo", show_default=True, type=click.Path(),
              help=SEARCH_SPACE_HELP)
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
@click.option("--experiment", default=None, help="MLflow experiment name.")
@click.option("--seed", default=None, type=int, help="Random seed.")
def suite(data: str, demo_dir: str, config_files: tuple[str, ...], study_name: str, storage: str, n_trials: int,
          search_space: str, tracking_uri: str | None, experiment: str | None, seed: int | None) -> None:
    """The whole experiment suite (MLproject 'main'): demo data, study, champion, evaluation, sample.

    \b
    1. makes the synthetic demo dataset when --data is empty,
    2. runs a small Optuna study (every trial a nested MLflow run),
    3. registers the best model and promotes it to @champion if it wins on the test split,
    4. evaluates the champion on the test split and saves a sample prediction figure,
       both logged to the study's parent run.
    """
    from deepfake.suite import run_suite

    cfg = config_from_options(config_files=config_files, data=data or demo_dir, tracking_uri=tracking_uri,
                              experiment=experiment, seed=seed)
    run_suite(cfg, study_name=study_name, storage=storage, n_trials=n_trials, search_space=search_space,
              demo_data=not data, echo=click.echo)
