"""``deepfake explain``: a Grad-CAM heat map over one image."""

from __future__ import annotations

from pathlib import Path

import click

from deepfake.cli.app import DEFAULT_MODEL_URI, MODEL_HELP, load_detector, main


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True, help=MODEL_HELP)
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Where to save the figure [default: IMAGE_gradcam.png in the working directory].")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def explain(image: str, model_ref: str, out_path: str | None, tracking_uri: str | None) -> None:
    """Save a Grad-CAM heat map over IMAGE next to the model's prediction.

    For a model trained on face crops the heat map covers the face it scores; for a video, its middle sampled
    frame (or face).
    """
    from deepfake.errors import DeepfakeError
    from deepfake.explain import grad_cam, save_explanation

    predictor = load_detector(model_ref, tracking_uri)
    if predictor.is_exported:
        raise DeepfakeError(f"--model {model_ref}: an exported ({predictor.meta.format}) model has no gradients to "
                            "explain; give the Keras model it was exported from")
    try:
        pictures = predictor.decode_all(image)  # the image, its face (face-crop model) or a video's frames
    except (ValueError, OSError) as exc:
        raise DeepfakeError(f"{image}: {exc}") from None
    pixels = pictures[len(pictures) // 2]
    if len(pictures) > 1:
        click.echo(f"{image}: explaining picture {len(pictures) // 2 + 1} of the {len(pictures)} it is scored from")
    heat, prob = grad_cam(predictor, pixels)
    label = predictor.label_of(prob)
    out = Path(out_path or f"{Path(image).stem}_gradcam.png")
    save_explanation(pixels, heat, label, prob, out, title=Path(image).name)
    click.echo(f"{image}: {label} (fake probability {prob:.4f}); Grad-CAM saved to {out}")
