"""A stand-in for training in tuning tests: trials take seconds, not minutes, and touch the same services.

``install()`` replaces :func:`deepfake.pipeline.run` and :func:`deepfake.pipeline.prepare_dataset`. A fake
trial opens a real MLflow run (nested under the study's run, with the trial's tags), logs a metric and
reports to Optuna's pruning callback every "epoch", and returns a value computed from its parameters.
Environment: ``FAKE_EPOCHS`` (default 2) and ``FAKE_EPOCH_SECONDS`` (default 0).

In a worker subprocess: ``python -c "from tests.fake_trials import main; main()" tune ...`` (run from the
repository root, or with it on ``PYTHONPATH``).
"""

import os
import time
from pathlib import Path
from types import SimpleNamespace

from deepfake import pipeline, tracking


def fake_prepare_dataset(cfg, echo=print, progress=True):
    return SimpleNamespace(root=str(cfg.data.path), audit=None)


def fake_run(cfg, *, dataset=None, callbacks=(), parent_run_id=None, run_name=None, tags=None, on_run_start=None,
             also=None, **_):
    epochs = int(os.environ.get("FAKE_EPOCHS", "2"))
    seconds = float(os.environ.get("FAKE_EPOCH_SECONDS", "0"))
    value = 1.0 - abs(cfg.model.dropout - 0.25)
    with tracking.start_run(run_name, parent_run_id=parent_run_id, tags=tags) as run:
        if on_run_start is not None:
            on_run_start(run.info.run_id)
        for epoch in range(epochs):
            time.sleep(seconds)
            tracking.log_metrics({"val_auc": value}, step=epoch)
            for callback in callbacks:
                callback.on_epoch_end(epoch, {"val_auc": value, "val_accuracy": value, "val_loss": 1 - value})
        return pipeline.RunResult(
            run_id=run.info.run_id, model_dir=Path(cfg.train.output_dir), model_uri=None, threshold=0.5,
            test_metrics={"roc_auc": value}, val_metrics={"roc_auc": value, "average_precision": value,
                                                          "accuracy": value, "log_loss": 1 - value},
            history={}, out_dir=Path(cfg.train.output_dir),
            # on a second dataset (--also-data): better with more dropout, a trade-off against the first score
            also_metrics=None if also is None else {"roc_auc": 0.5 + cfg.model.dropout},
        )


def install(monkeypatch=None) -> None:
    """Replace training by fake trials (through ``monkeypatch`` in a test, for good in a worker process)."""
    for name, fake in (("run", fake_run), ("prepare_dataset", fake_prepare_dataset)):
        if monkeypatch is not None:
            monkeypatch.setattr(pipeline, name, fake)
        else:
            setattr(pipeline, name, fake)


def main() -> None:
    """``deepfake`` with fake trials: the worker process of the tuning reliability tests."""
    install()
    from deepfake.cli import main as cli

    cli()
