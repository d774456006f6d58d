"""``deepfake crossval``: leave-one-source-out cross-validation (see :mod:`deepfake.crossval`)."""

from __future__ import annotations

from typing import Any

import click

from deepfake.cli.app import config_from_options, main, require, training_options


@main.command()
@training_options
@click.option("--by", default="source", show_default=True,
              help="Metadata column naming each fake's source (generator, manipulation method), or 'dataset': "
                   "with several --data, hold each whole dataset out in turn.")
@click.option("--metadata", default=None, type=click.Path(dir_okay=False),
              help="CSV with columns path and the --by column [default: DATA/metadata.csv].")
@click.option("--source", "only", multiple=True, help="Hold out only this source (repeatable) [default: each].")
def crossval(by: str, metadata: str | None, only: tuple[str, ...], **options: Any) -> None:
    """Leave-one-source-out: how well does a detector catch fakes of a kind it never saw?

    For each source of fakes (e.g. each generator of the dataset's metadata.csv) one detector is trained
    without that source's fakes and scored on them against the test split's real images (the
    CNNDetection / UniversalFakeDetect protocol). One parent MLflow run, a nested run per held-out
    source, and a table (ROC-AUC, AP, accuracy, and the ROC-AUC on the sources trained on) with a bar
    chart, e.g.

    \b
        deepfake crossval --data ai-vs-real --by source --config ai_vs_real --fine-tune-epochs 0

    With --by dataset and several --data, each dataset is held out in turn: trained on the others, tested
    on its test split (the cross-dataset protocol of the face-forgery literature), e.g.

    \b
        deepfake crossval --data ai-vs-real --data dfdc-faces-dev --by dataset --config general
    """
    from deepfake import crossval as CV
    from deepfake import tracking

    cfg = config_from_options(**options)
    require(cfg.data.path, "--data", "give the dataset folder (or set data.path in a --config file)")
    tracking.setup(cfg.tracking)
    CV.run(cfg, by=by, metadata=metadata, only=only, echo=click.echo)
