"""``deepfake report``: one self-contained HTML page for a run, logged to it."""

from __future__ import annotations

from pathlib import Path

import click

from deepfake.cli.app import main


@main.command()
@click.option("--run", "run_id", required=True, help="MLflow run id (a training, trial or evaluation run).")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Where to write the HTML [default: report_<run>.html].")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
def report(run_id: str, out_path: str | None, tracking_uri: str | None) -> None:
    """Write one self-contained HTML page with a run's metrics, tables and figures; log it to the run."""
    from deepfake import tracking
    from deepfake.config import TrackingConfig
    from deepfake.report import build_report

    tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    info = tracking.run_info(run_id)
    folder = tracking.download_run_artifacts(run_id)
    out = Path(out_path or f"report_{run_id[:8]}.html")
    build_report(folder, out, f"deepfake run {run_id}", info["metrics"], info["params"], info["tags"])
    tracking.log_artifact_to_run(run_id, out, "report")
    click.echo(f"Report written to {out} and logged to run {run_id}")
