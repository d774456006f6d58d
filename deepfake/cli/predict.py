"""``deepfake predict``: predictions for image and video files, folders and globs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from deepfake.cli.app import DEFAULT_MODEL_URI, load_detector, main

OUTPUT_SUFFIXES = (".csv", ".json")


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file, exported model folder or MLflow URI.")
@click.option("--output", "output", default=None, type=click.Path(dir_okay=False),
              help="Write results to a .csv or .json file instead of a table on the terminal.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per batch.")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Frames sampled uniformly per video [default: as the model was trained, data.video.frames].")
@click.option("--aggregate", type=click.Choice(["mean", "max", "topk"]), default=None,
              help="How frame probabilities make a video's: mean, max, or mean of the --top-k highest "
                   "[default: as the model was trained].")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Frames averaged by --aggregate topk.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def predict(paths: tuple[str, ...], model_ref: str, output: str | None, batch_size: int, frames: int | None,
            aggregate: str | None, top_k: int | None, tracking_uri: str | None) -> None:
    """Predict whether images and videos are fake. PATHS are files, folders (searched recursively) or globs.

    A video (mp4, mov, avi, webm, mkv) is scored from frames sampled uniformly (and, for a model trained on
    face crops, from the faces in them): one row per video with the number of frames used and its aggregate
    probability; --output keeps every frame's probability. Exit code 0 when every input was answered, 1 when
    some could not be used (listed with their error: unreadable, no frames, no face), 2 for usage errors.
    """
    import pandas as pd
    from tqdm import tqdm

    from deepfake.data import MEDIA_EXTENSIONS, find_image_files
    from deepfake.errors import DeepfakeError

    if output and Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise DeepfakeError(f"--output {output}: use a .csv or .json file name")
    files = find_image_files(paths)
    if not files:
        raise DeepfakeError(f"no image or video files ({', '.join(MEDIA_EXTENSIONS)}) found in {' '.join(paths)}")
    predictor = load_detector(model_ref, tracking_uri)
    changes = {k: v for k, v in (("frames", frames), ("aggregate", aggregate), ("top_k", top_k)) if v is not None}
    predictor.video = dataclasses.replace(predictor.video, **changes)
    rows = []
    with tqdm(total=len(files), unit="img", desc="predicting", disable=len(files) < 64 or None, file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            answers = predictor.predict_values([str(p) for p in chunk], batch_size=batch_size)
            for path, row in zip(chunk, answers, strict=True):
                rows.append({"path": str(path), **row})
            bar.update(len(chunk))
    frame = pd.DataFrame(rows, columns=["path", "fake_probability", "label", "error", "frames", "frame_probabilities",
                                        "note"])
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
                many = f"\t{r['frames']} frames" if r["frames"] and r["frames"] > 1 else ""
                note = f"\t({r['note']})" if r["note"] else ""
                click.echo(f"{r['path']}\t{r['label']}\t{r['fake_probability']:.4f}{many}{note}")
    failed = int(frame["error"].notna().sum())
    n_fake = int((frame["label"] == predictor.meta.class_names[1]).sum())
    click.echo(f"{len(frame) - failed} answered ({n_fake} {predictor.meta.class_names[1]}), {failed} unreadable; "
               f"threshold {predictor.meta.threshold:.3f}", err=True)
    sys.exit(1 if failed else 0)
