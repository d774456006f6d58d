"""``deepfake serve``: a web page and JSON API over a detector (:mod:`deepfake.server`)."""

from __future__ import annotations

from pathlib import Path

import click

from deepfake.cli.app import DEFAULT_MODEL_URI, load_detector, main
from deepfake.runtimes import SERVE_RUNTIMES


@main.command()
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file, exported model folder or MLflow URI.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any other than the loopback needs --token (or --no-auth).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--token", envvar="DEEPFAKE_SERVE_TOKEN", default=None, show_envvar=True,
              help="Bearer token every API request must send ('Authorization: Bearer TOKEN'); the page asks for it. "
                   "Prefer the environment variable: a command line is visible to other users.")
@click.option("--no-auth", is_flag=True, help="Serve on a non-loopback --host without a token (anyone can use it).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Pictures scored in one call of the model (concurrent uploads are batched together).")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="How long a picture waits for others to fill its batch.")
@click.option("--queue", default=64, show_default=True, type=click.IntRange(min=1),
              help="Files held at once (decoding, waiting, scoring); more are answered 503 with Retry-After.")
@click.option("--workers", "decode_workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Threads decoding uploads (0: one per CPU core).")
@click.option("--max-files", default=16, show_default=True, type=click.IntRange(min=1), help="Files per request.")
@click.option("--max-image-mb", default=50.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest image upload (larger: 413).")
@click.option("--max-video-mb", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Largest video upload (larger: 413) [default: the model's data.video.max_bytes, 100 MB].")
@click.option("--runtime", type=click.Choice(SERVE_RUNTIMES), default="auto", show_default=True,
              help="What scores the pictures: auto converts a Keras model to OpenVINO float32 once (checked against "
                   "Keras, kept in .cache/serve/ for the next start; Keras if that fails); keras scores with Keras; "
                   "openvino insists on the conversion; openvino-bf16 runs it in bfloat16 on CPUs with AVX512_BF16 "
                   "or AMX (about twice as fast, probabilities within the export check's tolerance). An exported "
                   "model always runs as it is.")
@click.option("--no-explain", is_flag=True, help="Never compute Grad-CAM heat maps (they cost a second pass).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI used to resolve models:/ URIs.")
def serve(model_ref: str, host: str, port: int, token: str | None, no_auth: bool, max_batch: int,
          max_wait_ms: float, queue: int, decode_workers: int, max_files: int, max_image_mb: float,
          max_video_mb: float | None, runtime: str, no_explain: bool, tracking_uri: str | None) -> None:
    """Serve a detector: a web page at http://HOST:PORT/ where anyone can drop pictures or videos and read the
    verdict (with a Grad-CAM heat map), over a JSON API.

    \b
    POST /api/predict   multipart field 'file' (one or several), or the raw file as the body; ?explain=true
                        adds an image's heat map. 413 too large, 415 not an image or video, 422 unusable,
                        503 busy (with Retry-After), 401 without the token.
    GET  /api/model     what is served: name, version, threshold, what it was trained on, limits
    GET  /healthz       liveness and load
    \b
    Example:
      curl -F file=@photo.jpg http://127.0.0.1:8000/api/predict
    """
    from deepfake import tracking
    from deepfake.server import ServeConfig, openvino_scorer, serve_forever

    cfg = ServeConfig(host=host, port=port, token=token, no_auth=no_auth, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, queue=queue, decode_workers=decode_workers, max_files=max_files,
                      max_image_bytes=int(max_image_mb * 1e6),
                      max_video_bytes=int(max_video_mb * 1e6) if max_video_mb else 0, explain=not no_explain,
                      runtime=runtime)
    cfg.check()  # before the model loads: a refused --host costs nothing
    predictor = load_detector(model_ref, tracking_uri)
    info = (tracking.describe_model(model_ref) if tracking.is_model_uri(model_ref)
            else {"name": Path(model_ref).name or model_ref})
    scorer = openvino_scorer(predictor, cfg, echo=lambda line: click.echo(line, err=True))
    runtime = "keras" if scorer is None else scorer.meta.format
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    click.echo(f"Serving {info.get('name') or model_ref}"
               + (f" v{info['version']}" if info.get("version") else "")
               + f" (threshold {predictor.meta.threshold:.3f}, scored by {runtime}) on "
               + f"http://{shown}:{port}/"
               + (" (token required)" if token else "") + "; Ctrl+C to stop", err=True)
    serve_forever(predictor, cfg, info, scorer)
