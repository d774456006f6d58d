"""Two-phase transfer learning, resumable from its checkpoints (:mod:`deepfake.checkpoints`).

Phase 1 trains the head on the frozen backbone; phase 2 unfreezes the top
``train.fine_tune_stages`` backbone stages (BatchNorm stays frozen) at a lower learning
rate, continuing the epoch count (``initial_epoch``) so per-epoch metrics and pruning
steps run on one axis. Both phases use EarlyStopping and keep the best model so far in
``checkpoints/best.keras``; ``resume=True`` continues where a killed run stopped. The precision and XLA
choices come from :mod:`deepfake.precision`.

Phase 2's speed options (``train.*``, benchmarks/results/fine_tune_speed.md) change how it learns, never the
model: a warm-up and cosine learning-rate schedule (:class:`deepfake.model.WarmupCosine`), staged unfreezing
(the first ``fine_tune_warmup_epochs`` train only the top ``fine_tune_warmup_stages``), frozen depthwise kernels
and validation every ``validation_freq`` epochs.

This module knows nothing of MLflow or Optuna: trackers and pruners come in as Keras callbacks.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from deepfake import atomic
from deepfake import model as M
from deepfake.checkpoints import (
    BEST_FILE,
    HEAD_FILE,
    LAST_FILE,
    STATE_FILE,
    Checkpoints,
    read_state,
    restore_best,
    resume_point,
    save_checkpoint,
    write_state,
)
from deepfake.config import Config, TrainConfig
from deepfake.errors import DeepfakeError
from deepfake.precision import configure_runtime

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy, Keras and the backend in one call (``keras.utils.set_random_seed``). Keras seeds
    TensorFlow too whenever it is installed, importing it; on the JAX and PyTorch backends, which train without
    TensorFlow, the import is refused for that call so that Keras skips it (and never tries again)."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    hide = keras.backend.backend() != "tensorflow" and "tensorflow" not in sys.modules
    if hide:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import fails: Keras' TF seeding is skipped
    try:
        keras.utils.set_random_seed(seed)
    finally:
        if hide:
            del sys.modules["tensorflow"]


SCHEDULES = ("constant", "cosine")  # train.fine_tune_schedule
SWITCH_KEY = "fine_tune_switch"  # state.json: the epoch staged unfreezing went from the top stages to all of them


def compile_model(model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                  jit_compile: bool = False) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
        jit_compile=jit_compile,
    )


def check_speed_options(t: TrainConfig) -> None:
    """A one-line :class:`~deepfake.errors.DeepfakeError` for a bad phase-2 speed option."""
    if t.fine_tune_schedule not in SCHEDULES:
        raise DeepfakeError(f"train.fine_tune_schedule must be one of {', '.join(SCHEDULES)}, "
                            f"not {t.fine_tune_schedule!r}")
    for name in ("fine_tune_lr_warmup_epochs", "fine_tune_warmup_stages", "fine_tune_warmup_epochs"):
        if getattr(t, name) < 0:
            raise DeepfakeError(f"train.{name} must be zero or more")
    if t.validation_freq < 1:
        raise DeepfakeError("train.validation_freq must be 1 or more")


def steps_per_epoch(dataset: tf.data.Dataset) -> int:
    """Batches in one epoch of ``dataset``: its cardinality, else counted once (a warning: that reads it all)."""
    if isinstance(dataset, keras.utils.PyDataset):  # the JAX and PyTorch backends' pipeline
        return len(dataset)
    n = int(dataset.cardinality())
    if n >= 0:
        return n
    log.warning("the training dataset does not know its length; reading it once to count its batches")
    return int(dataset.reduce(0, lambda count, *_: count + 1))


def fine_tune_learning_rate(t: TrainConfig, steps: int, start: int) -> float | M.WarmupCosine:
    """The learning rate of a phase-2 fit that starts ``start`` epochs into the phase, ``steps`` batches an epoch."""
    if t.fine_tune_schedule == "constant":
        return t.fine_tune_learning_rate
    return M.WarmupCosine(t.fine_tune_learning_rate, t.fine_tune_epochs * steps,
                        min(t.fine_tune_lr_warmup_epochs, t.fine_tune_epochs) * steps, start * steps)


def staged(t: TrainConfig) -> bool:
    """Whether phase 2 starts with fewer stages (staged unfreezing): ``0 < fine_tune_warmup_stages <
    fine_tune_stages`` and ``fine_tune_warmup_epochs > 0``."""
    return 0 < t.fine_tune_warmup_stages < t.fine_tune_stages and t.fine_tune_warmup_epochs > 0


def validation_epochs(start: int, stop: int, freq: int) -> int | list[int]:
    """Keras' ``validation_freq`` for a fit of epochs ``start .. stop - 1``: every epoch when ``freq`` is 1, else
    every ``freq``-th counted back from the last (one-based epoch numbers), so the fit's last epoch is validated."""
    if freq <= 1:
        return 1
    return [e for e in range(start + 1, stop + 1) if (stop - e) % freq == 0]


class _Unvalidated(keras.callbacks.Callback):
    """With ``validation_freq`` > 1: NaN in the state's validation histories for the epochs without validation
    (before :class:`~deepfake.checkpoints.Checkpoints` adds this epoch's values), so every history keeps one value
    per epoch."""

    def __init__(self, state: dict[str, Any]):
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs, history = logs or {}, self.state["history"]
        before = len(history.get("loss", []))  # epochs recorded so far
        for key in logs:
            if key.startswith("val_") and key not in history:  # the first validation of a run
                history[key] = [float("nan")] * before
        for key, values in history.items():
            if key.startswith("val_") and key not in logs:
                values.append(float("nan"))


class _EarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that passes over epochs without validation (``validation_freq`` > 1) quietly: patience then
    counts validations."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None and not any(key.startswith("val_") for key in logs):
            return
        super().on_epoch_end(epoch, logs)


def _restore_best(model: keras.Model, ckpt_dir: Path, state: dict[str, Any]) -> None:
    """:func:`~deepfake.checkpoints.restore_best` after a phase-2 fit, unless its last epoch was the best so far:
    then the model holds those weights already (EarlyStopping restored the fit's best; a resumed run loaded
    ``last.keras``), and reading ``best.keras`` again is skipped."""
    if state.get("best_epoch") != state["epochs_done"]:
        restore_best(model, ckpt_dir)


@dataclass
class TrainResult:
    model: keras.Model  # with the best weights found
    history: dict[str, list[float]]
    phase_boundary: int  # epochs run in phase 1; phase 2 starts at this epoch index
    best_path: Path
    checkpoint_dir: Path
    weights_info: M.WeightsInfo | None
    runtime: dict[str, Any] = field(default_factory=dict)
    resumed_from_epoch: int = 0


def _phase_callbacks(
    cfg: Config, ckpt_dir: Path, phase: int, state: dict[str, Any], extra: Sequence[keras.callbacks.Callback],
    target: keras.Model | None = None,
    defer_saves: bool = False,
) -> list[keras.callbacks.Callback]:
    monitor = cfg.train.monitor
    mode = "min" if "loss" in monitor else "max"
    sparse = phase == 2 and cfg.train.validation_freq > 1  # epochs without validation
    return [
        *([_Unvalidated(state)] if sparse else []),
        Checkpoints(ckpt_dir, phase, state, monitor, mode, target, defer_saves),
        (_EarlyStopping if sparse else keras.callbacks.EarlyStopping)(
            monitor=monitor, mode=mode, patience=cfg.train.patience, restore_best_weights=True
        ),
        *extra,
    ]


def train(
    cfg: Config,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    checkpoint_dir: str | Path,
    *,
    class_weight: dict[int, float] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    resume: bool = False,
    state_extra: dict[str, Any] | None = None,
    features: Callable[[keras.Model], tuple] | None = None,
    on_model_built: Callable[[M.WeightsInfo], None] | None = None,
    verbose: int = 2,
) -> TrainResult:
    """Run both phases and return the model with the best validation weights.

    ``features(model) -> (x_train, y_train, x_val, y_val)`` gives pooled backbone features
    (see :mod:`deepfake.features`); phase 1 then trains the head on them instead of running the
    frozen backbone every epoch. The head's per-epoch logs and callbacks are the same.
    ``state_extra`` (e.g. the MLflow run id) is stored in ``state.json`` for resuming.
    ``on_model_built(weights_info)`` is called as soon as a new model exists (to record, say,
    the random-initialisation fallback before any long training starts).
    """
    check_speed_options(cfg.train)
    set_seeds(cfg.train.seed)
    runtime = configure_runtime(cfg)
    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.train

    atomic.remove_stale_temporaries(ckpt_dir)  # left by a writer that was killed mid-save
    state = read_state(ckpt_dir) if resume else None
    weights_info = None
    resumed_from = 0
    if state and ((ckpt_dir / LAST_FILE).is_file() or int(state.get("epochs_done", 0)) > 0):
        if state.get("finished"):
            resumed_from = int(state.get("epochs_done", 0))
            log.info("checkpoint in %s is already finished; loading its best model", ckpt_dir)
            model = M.load_keras_model(ckpt_dir / BEST_FILE)
            return TrainResult(model, state["history"], state.get("phase_boundary", 0), ckpt_dir / BEST_FILE,
                               ckpt_dir, None, runtime, resumed_from)
        model, state = resume_point(ckpt_dir, state, t.monitor)
        resumed_from = int(state["epochs_done"])
        log.info("resuming from %s (phase %s, %d epochs done)", ckpt_dir, state["phase"], resumed_from)
    else:
        if resume:
            log.info("nothing to resume in %s; starting a new training run", ckpt_dir)
        for name in (STATE_FILE, LAST_FILE, BEST_FILE):
            (ckpt_dir / name).unlink(missing_ok=True)
        model, weights_info = M.build_model(cfg, with_info=True)
        if on_model_built is not None:
            on_model_built(weights_info)
        state = {"phase": 1, "epochs_done": 0, "history": {}, "best": None, "finished": False,
                 "weights_source": weights_info.source}
    state.update(state_extra or {})
    write_state(ckpt_dir, state)

    # Phase 1: the head on the frozen backbone.
    if state["phase"] == 1 and state["epochs_done"] < t.epochs:
        M.set_fine_tune(model, 0)
        compile_model(model, t.learning_rate, runtime["jit_compile"])
        if features is not None:
            x_train, y_train, x_val, y_val = features(model)
            head = M.head_of(model)
            compile_model(head, t.learning_rate, runtime["jit_compile"])
            head.fit(
                x_train,
                y_train,
                validation_data=(x_val, y_val),
                batch_size=cfg.data.batch_size,
                epochs=t.epochs,
                initial_epoch=state["epochs_done"],
                class_weight=class_weight,
                shuffle=True,
                callbacks=_phase_callbacks(cfg, ckpt_dir, 1, state, callbacks, target=model, defer_saves=True),
                verbose=verbose,
            )
            # EarlyStopping restored the head's best epoch: save the detector once, as best and last.
            save_checkpoint(model, ckpt_dir / BEST_FILE)
            save_checkpoint(model, ckpt_dir / LAST_FILE)
            state["epochs_done"] = len(state["history"].get("loss", []))  # phase-1 epochs run (early stop too)
            write_state(ckpt_dir, state)
        else:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=t.epochs,
                initial_epoch=state["epochs_done"],
                class_weight=class_weight,
                callbacks=_phase_callbacks(cfg, ckpt_dir, 1, state, callbacks),
                verbose=verbose,
            )
            restore_best(model, ckpt_dir)
    if state["phase"] == 1:
        state.update(phase=2, phase_boundary=state["epochs_done"])
        write_state(ckpt_dir, state)
    boundary = int(state.get("phase_boundary", state["epochs_done"]))

    # Phase 2: fine-tune the top stages with BatchNorm frozen, at a lower learning rate. With staged unfreezing
    # the first epochs train fewer stages; the rest start from the best model so far (as phase 2 itself does),
    # at the epoch recorded in the state, so a resumed run lands in the right half.
    end = boundary + (t.fine_tune_epochs if t.fine_tune_stages > 0 else 0)
    if state["epochs_done"] < end:
        steps = steps_per_epoch(train_ds) if t.fine_tune_schedule != "constant" else 0

        def fine_tune(stages: int, stop: int) -> None:
            start = int(state["epochs_done"])
            n = M.set_fine_tune(model, stages, depthwise=t.fine_tune_depthwise)
            log.info("fine-tuning %d backbone layers (top %d stages), BatchNorm frozen%s, epochs %d-%d", n, stages,
                     "" if t.fine_tune_depthwise else ", depthwise kernels frozen", start + 1, stop)
            compile_model(model, fine_tune_learning_rate(t, steps, start - boundary), runtime["jit_compile"])
            model.fit(
                train_ds,
                validation_data=val_ds,
                validation_freq=validation_epochs(start, stop, t.validation_freq),
                epochs=stop,
                initial_epoch=start,
                class_weight=class_weight,
                callbacks=_phase_callbacks(cfg, ckpt_dir, 2, state, callbacks),
                verbose=verbose,
            )

        if staged(t) and SWITCH_KEY not in state:
            warm_end = min(boundary + t.fine_tune_warmup_epochs, end)
            if state["epochs_done"] < warm_end:
                fine_tune(t.fine_tune_warmup_stages, warm_end)  # EarlyStopping may end it sooner
            _restore_best(model, ckpt_dir, state)
            state[SWITCH_KEY] = state["epochs_done"]
            write_state(ckpt_dir, state)
        if state["epochs_done"] < end:
            fine_tune(t.fine_tune_stages, end)
        _restore_best(model, ckpt_dir, state)

    state["finished"] = True
    write_state(ckpt_dir, state)
    return TrainResult(model, state["history"], boundary, ckpt_dir / BEST_FILE, ckpt_dir, weights_info,
                       runtime, resumed_from)


def train_head(
    cfg: Config,
    features: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    checkpoint_dir: str | Path,
    *,
    class_weight: dict[int, float] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    state_extra: dict[str, Any] | None = None,
    verbose: int = 2,
) -> TrainResult:
    """Phase 1 alone, on cached features, without the backbone: the training of a head-only tuning trial.

    ``features() -> (x_train, y_train, x_val, y_val)`` is called once the runtime is configured. The head is
    built, compiled and fitted with the same callbacks (per-epoch logs, early stopping, pruning) as phase 1
    of :func:`train`; the returned ``model`` is the head with its best weights, saved once at the end as
    ``head.keras`` (``best_path``) beside ``state.json`` (the history). No detector checkpoint is written: a
    trial is never resumed, and its detector is assembled from the head and the shared backbone when it is
    needed (:func:`deepfake.pipeline.assemble`).
    """
    set_seeds(cfg.train.seed)
    runtime = configure_runtime(cfg)
    ckpt_dir = Path(checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(ckpt_dir)
    for name in (STATE_FILE, LAST_FILE, BEST_FILE, HEAD_FILE):
        (ckpt_dir / name).unlink(missing_ok=True)
    x_train, y_train, x_val, y_val = features()
    set_seeds(cfg.train.seed)  # the head starts the same whether or not features() built the backbone
    head = M.build_head(cfg.model, int(x_train.shape[1]))
    state: dict[str, Any] = {"phase": 1, "epochs_done": 0, "history": {}, "best": None, "finished": False,
                             "head_only": True, **(state_extra or {})}
    compile_model(head, cfg.train.learning_rate, runtime["jit_compile"])
    head.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        batch_size=cfg.data.batch_size,
        epochs=cfg.train.epochs,
        class_weight=class_weight,
        shuffle=True,
        callbacks=_phase_callbacks(cfg, ckpt_dir, 1, state, callbacks, defer_saves=True),
        verbose=verbose,
    )
    trained = keras.models.clone_model(head)  # uncompiled: saved without its optimizer state (3x the weights)
    trained.set_weights(head.get_weights())
    save_checkpoint(trained, ckpt_dir / HEAD_FILE)
    done = len(state["history"].get("loss", []))
    state.update(phase=2, epochs_done=done, phase_boundary=done, finished=True)
    write_state(ckpt_dir, state)
    return TrainResult(head, state["history"], done, ckpt_dir / HEAD_FILE, ckpt_dir, None, runtime)


def predict_probabilities(model: keras.Model, dataset: tf.data.Dataset, verbose: int = 0) -> np.ndarray:
    """Fake probabilities for every image of a (non-shuffled) dataset, as a 1-D float array."""
    return np.asarray(model.predict(dataset, verbose=verbose), dtype="float64").reshape(-1)


def predict_features(head: keras.Model, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Fake probabilities of the head on pooled backbone features, as a 1-D float array: on features of the
    float32 backbone in inference mode (what the feature cache holds), the detector's own on those images."""
    chunks = [keras.ops.convert_to_numpy(head(features[i : i + batch_size], training=False))
              for i in range(0, len(features), batch_size)]
    return np.concatenate(chunks).astype("float64").reshape(-1) if chunks else np.zeros((0,))
