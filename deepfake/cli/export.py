"""``deepfake export``: a detector for ONNX Runtime or OpenVINO (float32, bfloat16, int8)."""

from __future__ import annotations

import click

from deepfake.cli.app import DEFAULT_MODEL_URI, load_detector, main
from deepfake.export import FORMATS


@main.command("export")
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file or MLflow URI to export.")
@click.option("--format", "fmt", default=FORMATS[0], show_default=True, type=click.Choice(FORMATS),
              help="onnx: ONNX Runtime. openvino: OpenVINO float32; openvino-bf16: bfloat16 on CPUs with "
                   "AVX512_BF16/AMX; openvino-int8: int8, calibrated on --data's validation images (fastest).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the exported model and model.meta.json (use it with `deepfake predict --model`).")
@click.option("--data", default=None, type=click.Path(),
              help="Dataset whose validation split checks the export (and calibrates int8; required for it). "
                   "Without it the check uses random images.")
@click.option("--tolerance", default=None, type=float,
              help="Largest max abs difference of probabilities from Keras that passes [default: 1e-3 for "
                   "float32, 0.05 for bf16; int8 is judged by validation ROC-AUC, within 0.005 of Keras].")
@click.option("--register", "register_name", default=None, metavar="NAME",
              help="Also log the export to MLflow and register it as a version of NAME (e.g. deepfake-detector), "
                   "tagged with its format; exporting models:/NAME@ALIAS sets the alias ALIAS-FORMAT on it.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def export_cmd(model_ref: str, fmt: str, out_dir: str, data: str | None, tolerance: float | None,
               register_name: str | None, tracking_uri: str | None) -> None:
    """Export a detector for fast CPU inference, checked against Keras before anything is written.

    \b
    deepfake export --format openvino-int8 --data DATA --out exported/
    deepfake predict --model exported/ IMAGES...
    """
    from deepfake.export import export

    split = None
    predictor = load_detector(model_ref, tracking_uri)
    if data is not None:
        from deepfake import data as D

        split = D.scan_dataset(predictor.data_config(data), progress=False).splits["val"]
        if len(split) == 0:
            raise click.UsageError(f"--data {data}: no validation images; give a dataset with a val split")
    info = export(predictor, out_dir, fmt, split=split, tolerance=tolerance,
                  echo=click.echo)
    auc = (f"; validation ROC-AUC {info['roc_auc_export']:.4f} (Keras {info['roc_auc_keras']:.4f})"
           if info["roc_auc_keras"] is not None else "")
    crops = f" ({info['n_inputs']} crops)" if info["n_inputs"] != info["n_checked"] else ""
    click.echo(f"Exported to {info['path']}: max abs difference from Keras {info['max_abs_diff']:.1e} on "
               f"{info['n_checked']} images{crops}, {info['same_decisions']:.1%} same decisions{auc}.")
    if register_name:
        from deepfake import registry, tracking
        from deepfake.config import TrackingConfig

        tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
        version, alias = registry.register_export(out_dir, register_name, model_ref, info)
        click.echo(f"Registered as {register_name} v{version}" + (f" (alias @{alias})" if alias else ""))
    click.echo(f"Use: deepfake predict --model {out_dir} IMAGES...")
