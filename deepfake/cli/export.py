"""``deepfake export``: a detector for ONNX Runtime."""

from __future__ import annotations

import click

from deepfake.cli.app import DEFAULT_MODEL_URI, load_detector, main
from deepfake.export import FORMATS


@main.command("export")
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file or MLflow URI to export.")
@click.option("--format", "fmt", default=FORMATS[0], show_default=True, type=click.Choice(FORMATS),
              help="Target runtime format.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for model.onnx and model.meta.json (use it with `deepfake predict --model`).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def export_cmd(model_ref: str, fmt: str, out_dir: str, tracking_uri: str | None) -> None:
    """Export a detector to ONNX for faster CPU inference, checked against Keras on 100 images."""
    from deepfake.export import export

    info = export(load_detector(model_ref, tracking_uri), out_dir, fmt)
    click.echo(f"Exported to {info['path']} (max abs difference from Keras {info['max_abs_diff']:.1e} "
               f"on {info['n_checked']} images). Use: deepfake predict --model {out_dir} IMAGES...")
