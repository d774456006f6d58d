"""``deepfake demo-data``: the synthetic dataset."""

from __future__ import annotations

import click

from deepfake.cli.app import main


@main.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--per-class", default=300, show_default=True, type=click.IntRange(min=10),
              help="Images per class over all splits (split 70/15/15).")
@click.option("--size", default=64, show_default=True, type=click.IntRange(min=32), help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed; the same seed writes the same bytes.")
def demo_data(out: str, per_class: int, size: int, seed: int) -> None:
    """Write a deterministic synthetic dataset to OUT/{train,val,test}/{real,fake}/.

    "Real" images follow natural-image statistics with camera noise and JPEG compression;
    "fake" ones carry generator traces (low-resolution synthesis plus upsampling, which leaves
    periodic spectral peaks). Good for trying the whole pipeline on any machine, offline.
    """
    from deepfake.demo import make_demo_dataset

    counts = make_demo_dataset(out, per_class=per_class, size=size, seed=seed)
    click.echo(f"Wrote demo dataset to {out}: {counts}")
