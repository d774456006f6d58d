"""``deepfake demo-data``, ``deepfake train`` and ``deepfake sample``."""

from __future__ import annotations

from pathlib import Path

import click

from deepfake.cli.app import config_from_options, main, require, training_options


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


@main.command()
@training_options
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --output-dir (same MLflow run).")
@click.option("--register/--no-register", default=False, show_default=True,
              help="Register the trained model in the MLflow Model Registry.")
def train(resume: bool, register: bool, **options) -> None:
    """Train, evaluate and log one detector as one MLflow run.

    Phase 1 trains the head on the frozen backbone (--backbone, ResNet50 by default); phase 2
    fine-tunes its top stages with BatchNorm frozen. The test split is evaluated at a threshold chosen on validation and at
    0.5; figures, reports, the dataset summary and the model are logged to the run.
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


@main.command()
@click.option("--model", "model_ref", default=None,
              help="Model folder, .keras file or MLflow URI. [default: models:/deepfake-detector@champion]")
@click.option("--data", required=True, type=click.Path(), help="Dataset root (either layout).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
              help="Split to draw from.")
@click.option("--seed", default=None, type=int, help="Seed for the random pick (default: a new pick each time).")
@click.option("-n", "--count", default=1, show_default=True, type=click.IntRange(1, 64), help="Number of images (>1 draws a grid).")
@click.option("--out", "out_path", default="sample_prediction.png", show_default=True, type=click.Path(dir_okay=False),
              help="Where to save the figure.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def sample(model_ref, data, split, seed, count, out_path, tracking_uri) -> None:
    """Predict randomly chosen images and save a figure with true label, prediction and probability."""
    import secrets

    from deepfake import data as D
    from deepfake import plots, tracking
    from deepfake.config import TrackingConfig, resolve
    from deepfake.inference import DEFAULT_MODEL_URI, load_predictor, sample_predictions

    model_ref = model_ref or DEFAULT_MODEL_URI
    if tracking.is_model_uri(model_ref):
        tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    predictor = load_predictor(model_ref)
    cfg = resolve(overrides={"data": {"path": data, "class_names": predictor.meta.class_names,
                                      "image_size": predictor.meta.image_size}})
    seed = secrets.randbelow(2**31) if seed is None else seed
    info = D.scan_dataset(cfg.data, seed=0, check_images=False)
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
