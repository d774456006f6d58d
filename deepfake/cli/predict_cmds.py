"""``deepfake predict`` and ``deepfake explain``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deepfake.cli.app import main
from deepfake.inference import DEFAULT_MODEL_URI


def _predictor(model_ref: str, tracking_uri: str | None):
    from deepfake import tracking
    from deepfake.config import TrackingConfig
    from deepfake.inference import load_predictor

    if tracking.is_model_uri(model_ref):
        tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    return load_predictor(model_ref)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file, exported model folder or MLflow URI.")
@click.option("--output", "output", default=None, type=click.Path(dir_okay=False),
              help="Write results to a .csv or .json file instead of a table on the terminal.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per batch.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def predict(paths, model_ref, output, batch_size, tracking_uri) -> None:
    """Predict whether images are fake. PATHS are files, folders (searched recursively) or globs.

    Exit code 0 when every image was answered, 1 when some could not be read (they are listed
    with their error), 2 for usage errors.
    """
    import pandas as pd
    from tqdm import tqdm

    from deepfake.data import IMAGE_EXTENSIONS
    from deepfake.errors import DeepfakeError
    from deepfake.inference import iter_image_files

    if output and Path(output).suffix.lower() not in (".csv", ".json"):
        raise DeepfakeError(f"--output {output}: use a .csv or .json file name")
    files = iter_image_files(paths)
    if not files:
        raise DeepfakeError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {' '.join(paths)}")
    predictor = _predictor(model_ref, tracking_uri)
    rows = []
    with tqdm(total=len(files), unit="img", desc="predicting", disable=len(files) < 64 or None, file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            for path, row in zip(chunk, predictor.predict_values([str(p) for p in chunk], batch_size=batch_size)):
                rows.append({"path": str(path), **row})
            bar.update(len(chunk))
    frame = pd.DataFrame(rows, columns=["path", "fake_probability", "label", "error"])
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        if output.lower().endswith(".csv"):
            frame.to_csv(output, index=False)
        else:
            frame.to_json(output, orient="records", indent=2)
        click.echo(f"Wrote {len(frame)} predictions to {output}")
    else:
        for r in rows:
            if r["error"]:
                click.echo(f"{r['path']}\tERROR: {r['error']}")
            else:
                click.echo(f"{r['path']}\t{r['label']}\t{r['fake_probability']:.4f}")
    failed = int(frame["error"].notna().sum())
    n_fake = int((frame["label"] == predictor.meta.class_names[1]).sum())
    click.echo(f"{len(frame) - failed} answered ({n_fake} {predictor.meta.class_names[1]}), {failed} unreadable; "
               f"threshold {predictor.meta.threshold:.3f}", err=True)
    sys.exit(1 if failed else 0)


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file or MLflow URI.")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Where to save the figure [default: IMAGE_gradcam.png in the working directory].")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def explain(image, model_ref, out_path, tracking_uri) -> None:
    """Save a Grad-CAM heat map over IMAGE next to the model's prediction."""
    from deepfake.errors import DeepfakeError
    from deepfake.explain import grad_cam, save_explanation

    predictor = _predictor(model_ref, tracking_uri)
    try:
        pixels = predictor.decode(image)
    except (ValueError, OSError) as exc:
        raise DeepfakeError(f"{image}: {exc}") from None
    heat, prob = grad_cam(predictor, pixels)
    label = predictor.label_of(prob)
    out = Path(out_path or f"{Path(image).stem}_gradcam.png")
    save_explanation(pixels, heat, label, prob, out, title=Path(image).name)
    click.echo(f"{image}: {label} (fake probability {prob:.4f}); Grad-CAM saved to {out}")


@main.command("export")
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file or MLflow URI to export.")
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(["onnx"]),
              help="Target runtime format.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for model.onnx and model.meta.json (use it with `deepfake predict --model`).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def export_cmd(model_ref, fmt, out_dir, tracking_uri) -> None:
    """Export a detector to ONNX for faster CPU inference, checked against Keras on 100 images."""
    from deepfake import tracking
    from deepfake.config import TrackingConfig
    from deepfake.export import export

    if tracking.is_model_uri(model_ref):
        tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    info = export(model_ref, out_dir, fmt)
    click.echo(f"Exported to {info['path']} (max abs difference from Keras {info['max_abs_diff']:.1e} "
               f"on {info['n_checked']} images). Use: deepfake predict --model {out_dir} IMAGES...")
