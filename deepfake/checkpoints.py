"""Training checkpoints that survive interruption: ``best.keras``, ``last.keras`` and ``state.json``.

After every epoch :class:`Checkpoints` writes ``last.keras`` and ``state.json`` (phase, epochs done, history,
best value) and, when the monitored metric improved, ``best.keras``, so a killed run resumes where it stopped
(:func:`resume_point`). Every checkpoint is written atomically (:mod:`deepfake.atomic`): a kill or a full disk
leaves the previous files whole. Should ``last.keras`` still be missing or unreadable, resuming falls back to
``best.keras`` with a warning and trains the epochs after it again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import keras

from deepfake import atomic
from deepfake import model as M
from deepfake.errors import DeepfakeError

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
BEST_FILE = "best.keras"
LAST_FILE = "last.keras"
HEAD_FILE = "head.keras"  # the trained head of a head-only run (training.train_head)
RESUME_HINT = "the previous checkpoints there are intact: free space, then run again (deepfake train: with --resume)"


class Checkpoints(keras.callbacks.Callback):
    """After each epoch: ``best.keras`` when the monitored metric improved, ``last.keras`` and
    ``state.json`` (phase, epochs done, history, best value) always.

    ``target`` is the model to save; it differs from the model being fitted when phase 1
    trains only the head on cached features (the full detector is still what is saved). With
    ``defer_saves`` only the history and state are written per epoch and the caller saves the
    models once at the end: head epochs on cached features take well under a second, while
    saving the full detector takes longer, and a killed phase 1 is cheap to redo.
    """

    def __init__(self, ckpt_dir: Path, phase: int, state: dict[str, Any], monitor: str, mode: str,
                 target: keras.Model | None = None, defer_saves: bool = False):
        super().__init__()
        self.ckpt_dir = ckpt_dir
        self.phase = phase
        self.state = state
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.target = target
        self.defer_saves = defer_saves

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        model = self.target or self.model
        for key, value in logs.items():
            self.state["history"].setdefault(key, []).append(float(value))
        value = logs.get(self.monitor)
        best = self.state.get("best")
        if value is not None and (best is None or self.sign * value > self.sign * best):
            if not self.defer_saves:
                save_checkpoint(model, self.ckpt_dir / BEST_FILE)
            # best.keras and the state's best value change together (epochs_done follows last.keras).
            self.state.update(best=float(value), best_epoch=epoch + 1)
            if not self.defer_saves:
                write_state(self.ckpt_dir, self.state)
        if self.defer_saves:
            return
        save_checkpoint(model, self.ckpt_dir / LAST_FILE)
        self.state.update(phase=self.phase, epochs_done=epoch + 1)
        write_state(self.ckpt_dir, self.state)


def save_checkpoint(model: keras.Model, path: Path) -> None:
    """Save a model checkpoint atomically; a full disk is a one-line :class:`~deepfake.atomic.DiskFullError`
    (size estimated from the checkpoints already there) and leaves the previous checkpoint whole."""
    sizes = [p.stat().st_size for p in (path, path.with_name(LAST_FILE), path.with_name(BEST_FILE)) if p.is_file()]
    atomic.save_model(model, path, needed=max(sizes, default=None), hint=RESUME_HINT)


def write_state(ckpt_dir: Path, state: dict[str, Any]) -> None:
    atomic.write_text(ckpt_dir / STATE_FILE, json.dumps(state, indent=2), hint=RESUME_HINT)


def read_state(ckpt_dir: str | Path) -> dict[str, Any] | None:
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DeepfakeError(f"checkpoint state {path} is corrupt; delete it to start afresh") from None


def resume_point(ckpt_dir: Path, state: dict[str, Any], monitor: str) -> tuple[keras.Model, dict[str, Any]]:
    """The model to continue from and its matching state.

    Normally ``last.keras`` and ``state.json`` as they are. When ``last.keras`` is missing or
    unreadable (say, truncated by a kill in an older version), ``best.keras`` with the state of
    its epoch, with a warning: the epochs after the best one are trained again.
    """
    last, best = ckpt_dir / LAST_FILE, ckpt_dir / BEST_FILE
    try:
        model = M.load_keras_model(last)
    except DeepfakeError as exc:
        problem = str(exc) if last.is_file() else f"checkpoint {last} is missing"
    else:
        state = _truncated(state, int(state.get("epochs_done", 0)))
        _repair_best(model, ckpt_dir, state, monitor)
        return model, state
    try:
        model = M.load_keras_model(best)
    except DeepfakeError as exc:
        raise DeepfakeError(f"cannot resume from {ckpt_dir}: {problem}, and {exc}; "
                            f"run without --resume to start afresh") from None
    phase, done = _best_point(state, monitor)
    log.warning("%s; resuming from %s instead (phase %d, %d epochs done instead of %d): the epochs after it "
                "are trained again", problem, best, phase, done, int(state.get("epochs_done", 0)))
    state = _truncated(state, done)
    state.update(phase=phase, epochs_done=done)
    atomic.copy_file(best, last, hint=RESUME_HINT)  # last.keras matches state.json again
    write_state(ckpt_dir, state)
    return model, state


def _truncated(state: dict[str, Any], epochs: int) -> dict[str, Any]:
    """``state`` with the per-epoch history cut to ``epochs`` entries (it may run one epoch ahead of
    ``last.keras`` when a run stopped between saving ``best.keras`` and ``last.keras``)."""
    return {**state, "history": {k: v[:epochs] for k, v in state.get("history", {}).items()}}


def _best_point(state: dict[str, Any], monitor: str) -> tuple[int, int]:
    """(phase, epochs done) that ``best.keras`` corresponds to."""
    done = state.get("best_epoch")
    if done is None:  # a state written before best_epoch was recorded: the first best value in the history
        values = state.get("history", {}).get(monitor, [])
        sign = -1.0 if "loss" in monitor else 1.0
        done = 1 + max(range(len(values)), key=lambda i: sign * values[i]) if values else 0
    boundary = state.get("phase_boundary")
    if boundary is None:
        return 1, int(done)
    # Phase 2 starts from the best weights of phase 1, which is what best.keras holds then.
    return 2, max(int(done), int(boundary))


def _repair_best(model: keras.Model, ckpt_dir: Path, state: dict[str, Any], monitor: str) -> None:
    """A missing or damaged ``best.keras`` (beside a good ``last.keras``) is replaced by the last model."""
    import zipfile

    best = ckpt_dir / BEST_FILE
    try:
        with zipfile.ZipFile(best) as archive:
            if archive.testzip() is None:
                return
    except (OSError, zipfile.BadZipFile):
        pass
    done = int(state.get("epochs_done", 0))
    log.warning("checkpoint %s is missing or damaged; the last checkpoint (epoch %d) becomes the best so far",
                best, done)
    save_checkpoint(model, best)
    values = state.get("history", {}).get(monitor, [])
    state.update(best=values[done - 1] if 0 < done <= len(values) else None, best_epoch=done)
    write_state(ckpt_dir, state)


def restore_best(model: keras.Model, ckpt_dir: Path) -> None:
    """Load the weights of ``best.keras`` (the best over all phases so far) into ``model``."""
    best = ckpt_dir / BEST_FILE
    if best.is_file():
        model.set_weights(M.load_keras_model(best).get_weights())

