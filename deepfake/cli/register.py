"""``deepfake register``: a run's model into the Model Registry, promoted to @champion if it wins."""

from __future__ import annotations

import click

from deepfake.cli.app import main


@main.command()
@click.option("--run-id", required=True, help="MLflow run whose logged model to register (e.g. a trial run).")
@click.option("--data", required=True, type=click.Path(), help="Dataset whose test split decides the champion.")
@click.option("--name", default="deepfake-detector", show_default=True, help="Registered model name.")
@click.option("--force", is_flag=True, help="Promote even if it does not beat the champion.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
def register(run_id: str, data: str, name: str, force: bool, tracking_uri: str | None) -> None:
    """Register a run's model and promote it to @champion if it beats the current champion."""
    from deepfake import data as D
    from deepfake import registry, tracking
    from deepfake.config import resolve

    cfg = resolve(overrides={"data": {"path": data},
                             "tracking": {"tracking_uri": tracking_uri, "registered_model": name}})
    tracking.setup(cfg.tracking)
    tracking.run_info(run_id)  # an unknown run stops here, before the dataset is scanned
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
    registry.register_run(run_id, cfg, info, force=force, echo=click.echo)
