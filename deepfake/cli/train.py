"""``deepfake train``: one tracked training run."""

from __future__ import annotations

from typing import Any

import click

from deepfake.cli.app import config_from_options, main, require, training_options


@main.command()
@training_options
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --output-dir (same MLflow run).")
@click.option("--register/--no-register", default=False, show_default=True,
              help="Register the trained model in the MLflow Model Registry.")
def train(resume: bool, register: bool, **options: Any) -> None:
    """Train, evaluate and log one detector as one MLflow run.

    Phase 1 trains the head on the frozen backbone (--backbone, ResNet50 by default); phase 2
    fine-tunes its top stages with BatchNorm frozen. The test split is evaluated at a threshold chosen on
    validation and at 0.5; figures, reports, the dataset summary and the model are logged to the run.
    """
    from deepfake import pipeline, tracking

    cfg = config_from_options(**options)
    require(cfg.data.path, "--data", "give the dataset folder (or set data.path in a --config file)")
    tracking.setup(cfg.tracking)
    result = pipeline.run(cfg, resume=resume, echo=click.echo)
    click.echo(f"Model saved to {result.model_dir}")
    if register and result.model_uri:
        version = tracking.register_model(result.model_uri, cfg.tracking.registered_model)
        click.echo(f"Registered {cfg.tracking.registered_model} version {version}")
