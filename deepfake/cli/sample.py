"""``deepfake sample``: random images of a dataset with their predictions, as a figure."""

from __future__ import annotations

from pathlib import Path

import click

from deepfake.cli.app import DEFAULT_MODEL_URI, MODEL_HELP, load_detector, main
from deepfake.data import SPLITS


@main.command()
@click.option("--model", "model_ref", default=None, help=f"{MODEL_HELP} [default: {DEFAULT_MODEL_URI}]")
@click.option("--data", required=True, type=click.Path(), help="Dataset root (either layout).")
@click.option("--split", default="test", show_default=True, type=click.Choice(SPLITS), help="Split to draw from.")
@click.option("--seed", default=None, type=int, help="Seed for the random pick (default: a new pick each time).")
@click.option("-n", "--count", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Number of images (>1 draws a grid).")
@click.option("--out", "out_path", default="sample_prediction.png", show_default=True, type=click.Path(dir_okay=False),
              help="Where to save the figure.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def sample(model_ref: str | None, data: str, split: str, seed: int | None, count: int, out_path: str,
           tracking_uri: str | None) -> None:
    """Predict randomly chosen images (or videos) and save a figure with true label, prediction and probability.

    A video is scored from its sampled frames (faces, for a model trained on face crops); its middle frame is shown.
    """
    import secrets

    from deepfake import data as D
    from deepfake import plots
    from deepfake.inference import sample_predictions

    predictor = load_detector(model_ref or DEFAULT_MODEL_URI, tracking_uri)
    seed = secrets.randbelow(2**31) if seed is None else seed
    info = D.scan_dataset(predictor.data_config(data), seed=0, check_images=False)
    picks = sample_predictions(predictor, info.splits[split], predictor.meta.class_names, n=count, seed=seed)
    for p in picks:
        click.echo(f"{p['path']}\n  true: {p['true_label']:<6} predicted: {p['predicted_label']:<6} "
                   f"fake probability: {p['fake_probability']:.4f}  (threshold {predictor.meta.threshold:.3f})")
    if count == 1:
        p = picks[0]
        plots.plot_sample(p["image"], p["true_label"], p["predicted_label"], p["fake_probability"], out_path,
                          title=p["name"])
    else:
        plots.plot_sample_grid(picks, out_path)
    click.echo(f"Saved figure to {Path(out_path).resolve()} (seed {seed})")
