"""``deepfake evaluate``: any detector on any dataset, or on several for a cross-dataset table, one MLflow run
(see :mod:`deepfake.evaluation_run`)."""

from __future__ import annotations

import click

from deepfake.cli.app import DEFAULT_MODEL_URI, main
from deepfake.data import SPLITS
from deepfake.errors import DeepfakeError


@main.command()
@click.option("--model", "model_ref", default=DEFAULT_MODEL_URI, show_default=True,
              help="Model folder, .keras file or MLflow URI.")
@click.option("--data", "datasets", required=True, multiple=True, type=click.Path(),
              help="Dataset root (either layout) to evaluate on. Repeat it (--data A --data B) for one "
                   "cross-dataset table with a row per dataset and per source.")
@click.option("--split", default="auto", show_default=True, type=click.Choice(["auto", "all", *SPLITS]),
              help="Which images: auto = all of a dataset without train/ (e.g. DATA/{real,fake}/ or only "
                   "DATA/test/), the test split of a training dataset (with train/); all = every image; "
                   "train/val/test = that split as training made it.")
@click.option("--metadata", multiple=True, type=click.Path(dir_okay=False),
              help="CSV with columns path,source: adds a per-source table (which generator fools the model). "
                   "With several --data give one per dataset, in order; without it each dataset's own "
                   "metadata.csv is used when present.")
@click.option("--robustness", is_flag=True,
              help="Also evaluate under JPEG q95/75/50/30, Gaussian blur sigma 1/2 and 50% downscaling "
                   "(one --data only).")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write a self-contained HTML report (one --data only).")
@click.option("--output-dir", default="outputs/evaluate", show_default=True, type=click.Path(),
              help="Where figures, tables and the report go.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI.")
@click.option("--experiment", default="deepfake-evaluation", show_default=True, help="MLflow experiment for the run.")
def evaluate(model_ref: str, datasets: tuple[str, ...], split: str, metadata: tuple[str, ...], robustness: bool,
             report: bool, output_dir: str, tracking_uri: str | None, experiment: str) -> None:
    """Evaluate any model on any dataset (cross-dataset evaluation), logged as an MLflow run.

    A held-out dataset is evaluated whole: an unsplit folder (DATA/real/, DATA/fake/) or one
    holding only some split folders (say DATA/test/{real,fake}/) gives every image; a training
    dataset (with DATA/train/) gives its test split (--split chooses).

    Prints how many images were used and the metrics table (threshold stored with the model),
    and with --metadata a per-source table, with --robustness a metric-versus-damage table; all
    tables, figures (ROC, PR, confusion matrix, reliability diagram) and the HTML report are
    logged to the run.

    With several --data: one run and one table, a row per dataset and per source (n, ROC-AUC, AP,
    accuracy at the model's threshold; a source of fakes only is ranked against the dataset's
    reals), with a bar chart, e.g.

        deepfake evaluate --model models:/deepfake-detector@champion --data ai-vs-real --data dfdc-faces
    """
    from deepfake import evaluation_run, tracking
    from deepfake.config import resolve

    if len(datasets) > 1 and robustness:
        raise DeepfakeError("--robustness takes one --data; run it per dataset")
    if len(datasets) == 1 and len(metadata) > 1:
        raise DeepfakeError("--metadata: give one CSV for the one --data")
    cfg = resolve(overrides={"data": {"path": datasets[0]},
                             "tracking": {"tracking_uri": tracking_uri, "experiment": experiment}})
    tracking.setup(cfg.tracking)
    if len(datasets) > 1:
        evaluation_run.run_many(cfg, model_ref, datasets, split=split, metadata=metadata, out_dir=output_dir,
                                echo=click.echo)
        return
    evaluation_run.run(cfg, model_ref, split=split, metadata=metadata[0] if metadata else None,
                       robustness=robustness, report=report, out_dir=output_dir, echo=click.echo)
