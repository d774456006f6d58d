"""Checkpoints survive a kill mid-save and a full disk; resuming falls back past a damaged last.keras."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import mlflow
import pytest
from click.testing import CliRunner

from deepfake import atomic
from deepfake import checkpoints as CK
from deepfake import data as D
from deepfake import model as M
from deepfake import training as T
from deepfake.cli import main
from deepfake.input_pipeline import make_dataset
from tests.helpers import TINY, TINY_ARGS

# The tiny model with a 16-unit head: two head epochs, then two fine-tuning epochs.
CHECKPOINTED = ("model.head_units=[16]", "train.epochs=2", "train.fine_tune_epochs=2", "train.patience=5")


def datasets(cfg):
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed, check_images=False)
    return (make_dataset(info.splits["train"], cfg.data, training=True, seed=1),
            make_dataset(info.splits["val"], cfg.data, training=False, seed=1))


class EpochsRun(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


class Stop(Exception):
    pass


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Stop()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic.write_text(target, "old")

    class Killed(BaseException):
        pass

    with pytest.raises(Killed):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise Killed()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_full_disk_is_a_one_line_error_naming_folder_and_size(tmp_path):
    target = tmp_path / "last.keras"
    target.write_bytes(b"x" * 3_000_000)

    with pytest.raises(atomic.DiskFullError) as raised:
        with atomic.atomic_path(target, hint="free space, then --resume") as tmp:
            tmp.write_bytes(b"y" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(raised.value)
    assert "\n" not in message
    assert f"no space left on device in {tmp_path}: writing last.keras needs about 2.9 MB" in message
    assert message.endswith("free space, then --resume")
    assert target.read_bytes() == b"x" * 3_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    stale = tmp_path / f".last.{dead_pid()}.tmp.keras"
    mine = tmp_path / f".best.{os.getpid()}.tmp.keras"
    keep = tmp_path / "last.keras"
    for p in (stale, mine, keep):
        p.write_bytes(b"x")
    assert atomic.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and keep.exists()


# ----------------------------------------------------------------------------- training checkpoints


KILL_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import keras
    from deepfake import config as C, data as D, training as T
    from deepfake.input_pipeline import make_dataset

    data, out, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
    real_save = keras.Model.save
    saves = []

    def save(self, path, *args, **kwargs):
        if "last" in Path(path).name:
            saves.append(path)
            if len(saves) == 3:  # the third epoch: half a file, then SIGKILL
                real_save(self, path, *args, **kwargs)
                size = os.path.getsize(path)
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(self, path, *args, **kwargs)

    keras.Model.save = save
    cfg = C.resolve(set_args=[f"data.path={data}", *sets])
    info = D.scan_dataset(cfg.data, seed=cfg.train.seed, check_images=False)
    train_ds = make_dataset(info.splits["train"], cfg.data, training=True, seed=1)
    val_ds = make_dataset(info.splits["val"], cfg.data, training=False, seed=1)
    T.train(cfg, train_ds, val_ds, out, verbose=0)
""")


@pytest.mark.slow
def test_kill_mid_save_keeps_the_last_good_checkpoint_and_resume_continues(tiny_split_dataset, tmp_path, tiny_cfg):
    """SIGKILL while last.keras of epoch 3 is half written: epoch 2's checkpoint is whole; --resume runs epochs 3-4."""
    ckpt = tmp_path / "ckpt"
    script = tmp_path / "kill_mid_save.py"
    script.write_text(KILL_MID_SAVE)
    proc = subprocess.run([sys.executable, str(script), str(tiny_split_dataset), str(ckpt),
                           *TINY, *CHECKPOINTED], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = CK.read_state(ckpt)
    assert state["epochs_done"] == 2 and state["phase"] == 2
    M.load_keras_model(ckpt / CK.LAST_FILE)  # whole: epoch 2's checkpoint
    assert list(ckpt.glob(".last.*.tmp.keras")), "the killed writer left its temporary file behind"

    cfg = tiny_cfg(*CHECKPOINTED, data=tiny_split_dataset)
    seen = EpochsRun()
    result = T.train(cfg, *datasets(cfg), ckpt, callbacks=[seen], resume=True, verbose=0)
    assert seen.epochs == [2, 3]
    assert result.resumed_from_epoch == 2
    assert len(result.history["val_loss"]) == 4
    assert CK.read_state(ckpt)["finished"]
    assert not list(ckpt.glob(".*.tmp.*"))


@pytest.mark.slow
def test_unreadable_last_checkpoint_falls_back_to_best_with_a_warning(tiny_split_dataset, tmp_path, tiny_cfg, caplog):
    """A truncated last.keras (as an older version left it) beside a valid state.json: resume from best.keras."""
    cfg = tiny_cfg(*CHECKPOINTED, data=tiny_split_dataset)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        T.train(cfg, *datasets(cfg), ckpt, callbacks=[StopAfter(2)], verbose=0)
    state = CK.read_state(ckpt)
    assert state["epochs_done"] == 3 and state["phase"] == 2
    auc = state["history"]["val_auc"]
    best_epoch = 1 + auc.index(max(auc))
    last = ckpt / CK.LAST_FILE
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])

    seen = EpochsRun()
    with caplog.at_level(logging.WARNING, logger="deepfake.training"):
        result = T.train(cfg, *datasets(cfg), ckpt, callbacks=[seen], resume=True, verbose=0)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"could not load model {last}" in warning and f"resuming from {ckpt / CK.BEST_FILE} instead" in warning
    restart = max(best_epoch, state["phase_boundary"])  # phase 2 starts from phase 1's best weights
    assert seen.epochs == list(range(restart, 4))
    assert result.resumed_from_epoch == restart
    assert len(result.history["val_loss"]) == 4  # the epochs after best are not counted twice
    final = CK.read_state(ckpt)
    assert final["finished"] and final["epochs_done"] == 4
    M.load_keras_model(last)


def _fill_disk_on_third_last_save(monkeypatch):
    real_save = keras.Model.save
    saves = []

    def save(self, path, *args, **kwargs):
        if "last" in Path(path).name:
            saves.append(path)
            if len(saves) == 3:
                with open(path, "wb") as f:
                    f.write(b"PK\x03\x04 partial")
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)


@pytest.mark.slow
def test_cli_full_disk_exits_2_with_one_line_and_resume_works_once_space_is_freed(tiny_split_dataset, tmp_path,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["train", "--data", str(tiny_split_dataset), *TINY_ARGS, "--set", "model.head_units=[16]",
            "--epochs", "2", "--fine-tune-epochs", "2", "--tracking-uri", uri, "--experiment", "disk",
            "--output-dir", str(tmp_path / "out"), "--set", "tracking.log_model=false"]
    ckpt = tmp_path / "out" / "checkpoints"
    _fill_disk_on_third_last_save(monkeypatch)
    full = CliRunner().invoke(main, args)
    assert full.exit_code == 2, full.output
    size = atomic.human_size(max((ckpt / name).stat().st_size for name in (CK.LAST_FILE, CK.BEST_FILE)))
    lines = full.output.strip().splitlines()
    assert lines[-1].startswith(f"Error: no space left on device in {ckpt}: writing last.keras needs about {size}")
    assert "--resume" in lines[-1] and "Traceback" not in full.output
    state = CK.read_state(ckpt)
    assert state["epochs_done"] == 2
    M.load_keras_model(ckpt / CK.LAST_FILE)
    M.load_keras_model(ckpt / CK.BEST_FILE)
    assert not list(ckpt.glob(".*.tmp.*"))

    monkeypatch.undo()  # space freed
    monkeypatch.chdir(tmp_path)
    resumed = CliRunner().invoke(main, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert CK.read_state(ckpt)["finished"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["disk"], output_format="list")
    assert len(runs) == 1 and runs[0].info.run_id == state["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["resumed"] == "true"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "val_auc")]
    assert steps == [0, 1, 2, 3]


@pytest.mark.slow
def test_full_disk_during_training_keeps_checkpoints_and_resume_works(tiny_split_dataset, tmp_path, tiny_cfg,
                                                                     monkeypatch):
    cfg = tiny_cfg(*CHECKPOINTED, data=tiny_split_dataset)
    ckpt = tmp_path / "ckpt"
    _fill_disk_on_third_last_save(monkeypatch)
    with pytest.raises(atomic.DiskFullError, match=f"in {ckpt}: writing last.keras needs about"):
        T.train(cfg, *datasets(cfg), ckpt, verbose=0)
    assert json.loads((ckpt / CK.STATE_FILE).read_text())["epochs_done"] == 2
    assert sorted(p.name for p in ckpt.iterdir()) == [CK.BEST_FILE, CK.LAST_FILE, CK.STATE_FILE]

    monkeypatch.undo()
    seen = EpochsRun()
    result = T.train(cfg, *datasets(cfg), ckpt, callbacks=[seen], resume=True, verbose=0)
    assert seen.epochs == [2, 3] and len(result.history["loss"]) == 4
