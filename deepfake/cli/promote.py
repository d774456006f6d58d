"""``deepfake promote``: move @champion to a registered version if it wins (or when forced)."""

from __future__ import annotations

import click

from deepfake.cli.app import main


@main.command()
@click.option("--version", "version", required=True, help="Registered model version to promote.")
@click.option("--data", required=True, type=click.Path(), help="Dataset whose test split decides the champion.")
@click.option("--name", default="deepfake-detector", show_default=True, help="Registered model name.")
@click.option("--force", is_flag=True, help="Move @champion even if the version does not win.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
def promote(version: str, data: str, name: str, force: bool, tracking_uri: str | None) -> None:
    """Move @champion to VERSION if it beats the current champion on the test split."""
    from deepfake import data as D
    from deepfake import registry, tracking
    from deepfake.config import resolve

    cfg = resolve(overrides={"data": {"path": data}, "tracking": {"tracking_uri": tracking_uri}})
    tracking.setup(cfg.tracking)
    tracking.version_info(name, version)  # an unknown version stops here, before the dataset is scanned
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed)
    registry.promote(name, version, info, force=force, echo=click.echo)
