"""Two-phase transfer learning with checkpoints that survive interruption.

Phase 1 trains the head on the frozen backbone; phase 2 unfreezes the top
``train.fine_tune_stages`` ResNet50 stages (BatchNorm stays frozen) at a lower learning
rate, continuing the epoch count (``initial_epoch``) so per-epoch metrics and pruning
steps run on one axis. Both phases use EarlyStopping and keep the best model so far in
``checkpoints/best.keras``. After every epoch ``checkpoints/last.keras`` and
``checkpoints/state.json`` are written, so ``resume=True`` continues where a killed run stopped.
Every checkpoint is written atomically (:mod:`deepfake.atomic`): a kill or a full disk leaves the
previous files whole. Should ``last.keras`` still be missing or unreadable, resuming falls back to
``best.keras`` with a warning and trains the epochs after it again.

This module knows nothing of MLflow or Optuna: trackers and pruners come in as Keras callbacks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from deepfake import atomic
from deepfake import backbones as B
from deepfake import model as M
from deepfake.config import Config
from deepfake.errors import DeepfakeError

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
BEST_FILE = "best.keras"
LAST_FILE = "last.keras"
HEAD_FILE = "head.keras"  # the trained head of a head-only run (train_head)
RESUME_HINT = "the previous checkpoints there are intact: free space, then run again (deepfake train: with --resume)"


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and the backend (TensorFlow) in one call."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    keras.utils.set_random_seed(seed)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 arithmetic
TENSOR_CORES = (7, 0)  # the first NVIDIA compute capability with tensor cores (Volta)
POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@dataclass(frozen=True)
class Device:
    """A device training can run on: ``kind`` "gpu" or "cpu", its name (GPU or CPU model), a GPU's CUDA
    compute capability and a CPU's bfloat16 flags (:data:`BF16_CPU_FLAGS` found in /proc/cpuinfo)."""

    kind: str
    name: str
    compute_capability: tuple[int, int] | None = None
    flags: frozenset[str] = frozenset()


def parse_cpuinfo(text: str) -> Device:
    """The CPU described by the text of /proc/cpuinfo (its first processor's model name and flags)."""
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split()) & frozenset(BF16_CPU_FLAGS)
    return Device("cpu", name or "unknown CPU", flags=flags)


def choose_precision(devices: Sequence[Device], backbone: str = B.DEFAULT) -> tuple[str, str]:
    """``(Keras dtype policy, reason)`` that ``train.mixed_precision=auto`` picks for the devices training
    would use (TensorFlow trains on its GPUs when it sees any, else on the CPU) and the backbone.

    * GPUs whose compute capability is at least 7.0 (tensor cores): ``mixed_float16``;
    * older GPUs: ``float32`` (float16 brings them no speed);
    * a CPU with bfloat16 arithmetic (AVX512_BF16 or AMX) and a backbone that trains faster in it there
      (:attr:`deepfake.backbones.Backbone.cpu_bfloat16`):
      ``mixed_bfloat16``, which trained ResNet50 faster than float32 on an AVX512_BF16 CPU and reached at least
      float32's test ROC-AUC on three seeds of the demo (benchmarks/results/precision.md), the stem, the pooled
      features and the head kept float32 (:func:`deepfake.model.keep_float32_islands`);
    * any other CPU or backbone: ``float32``.
    """
    gpus = [d for d in devices if d.kind == "gpu"]
    if gpus:
        names = ", ".join(sorted({d.name for d in gpus}))
        ccs = [d.compute_capability for d in gpus]
        if all(cc is not None and cc >= TENSOR_CORES for cc in ccs):
            return "mixed_float16", f"GPU with tensor cores (compute capability >= 7.0): {names}"
        shown = ", ".join(_capability(cc) for cc in ccs)
        return "float32", f"GPU without tensor cores (compute capability {shown} < 7.0): {names}"
    cpus = [d for d in devices if d.kind == "cpu"] or [Device("cpu", "unknown CPU")]
    flags = sorted(set().union(*(d.flags for d in cpus)) & set(BF16_CPU_FLAGS))
    if not flags:
        return "float32", f"CPU without bfloat16 arithmetic (no {' or '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo)"
    if not B.get(backbone).cpu_bfloat16:
        return "float32", (f"CPU with bfloat16 arithmetic ({', '.join(flags)}), but {backbone} trains slower in "
                           "bfloat16 on a CPU (depthwise convolutions)")
    return "mixed_bfloat16", f"CPU with bfloat16 arithmetic ({', '.join(flags)}), {backbone} trains faster in it"


def tensorflow_clash(installed: Sequence[str]) -> str | None:
    """A warning when both TensorFlow builds are installed (say, ``deepfake[gpu]`` added to an install that had
    ``tensorflow-cpu``): they write the same ``tensorflow`` module, so which one runs is an accident."""
    if {"tensorflow", "tensorflow-cpu"} <= set(installed):
        return ("both tensorflow and tensorflow-cpu are installed and overwrite each other's files: "
                "pip uninstall -y tensorflow tensorflow-cpu, then pip install 'deepfake[gpu]' (NVIDIA GPU) "
                "or 'deepfake[cpu]'")
    return None


def _installed(names: Sequence[str]) -> list[str]:
    from importlib import metadata

    found = []
    for name in names:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _capability(cc: tuple[int, int] | None) -> str:
    return "unknown" if cc is None else f"{cc[0]}.{cc[1]}"


def local_devices() -> list[Device]:
    """The GPUs TensorFlow sees (name and compute capability), else this machine's CPU."""
    import tensorflow as tf

    devices = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (ValueError, RuntimeError):  # pragma: no cover - a GPU TensorFlow cannot describe
            details = {}
        cc = details.get("compute_capability")
        devices.append(Device("gpu", details.get("device_name") or gpu.name, tuple(cc) if cc else None))
    if devices:
        return devices
    try:
        return [parse_cpuinfo(Path("/proc/cpuinfo").read_text())]
    except OSError:  # not Linux
        import platform

        return [Device("cpu", platform.processor() or platform.machine() or "unknown CPU")]


def configure_runtime(cfg: Config, devices: Sequence[Device] | None = None) -> dict[str, Any]:
    """Apply the numeric precision and XLA choices for ``devices`` (default: :func:`local_devices`); return
    what was used and why, logged as run tags ``runtime.*``.

    ``train.mixed_precision=auto`` is :func:`choose_precision`; ``off``, ``bfloat16`` and ``float16`` force
    a policy. XLA only on GPUs (2-5x slower on CPU in ``benchmarks/bench_training.py``).
    """
    devices = list(local_devices() if devices is None else devices)
    gpu = any(d.kind == "gpu" for d in devices)
    precision = cfg.train.mixed_precision
    if precision == "auto":
        policy, reason = choose_precision(devices, cfg.model.backbone)
    else:
        policy, reason = POLICIES[precision], f"train.mixed_precision={precision}"
    keras.mixed_precision.set_global_policy(policy)
    jit = cfg.train.jit_compile
    jit_compile = gpu if jit == "auto" else jit == "on"
    used = [d for d in devices if d.kind == ("gpu" if gpu else "cpu")] or devices
    runtime = {"device": "gpu" if gpu else "cpu", "device_name": "; ".join(d.name for d in used),
               "precision_policy": policy, "precision_reason": reason, "jit_compile": jit_compile}
    if gpu:
        runtime["compute_capability"] = ", ".join(_capability(d.compute_capability) for d in used)
    else:
        runtime["cpu_flags"] = ",".join(sorted(set().union(*(d.flags for d in used)))) or "none"
    log.info("training on %s (%s); precision %s: %s", runtime["device"], runtime["device_name"], policy, reason)
    clash = tensorflow_clash(_installed(["tensorflow", "tensorflow-cpu"]))
    if clash:
        log.warning(clash)
    return runtime


def compile_model(model: keras.Model, learning_rate: float, jit_compile: bool = False) -> None:
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


class _Checkpoints(keras.callbacks.Callback):
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


def _phase_callbacks(
    cfg: Config, ckpt_dir: Path, phase: int, state: dict[str, Any], extra: Sequence[keras.callbacks.Callback],
    target: keras.Model | None = None,
    defer_saves: bool = False,
) -> list[keras.callbacks.Callback]:
    monitor = cfg.train.monitor
    mode = "min" if "loss" in monitor else "max"
    return [
        _Checkpoints(ckpt_dir, phase, state, monitor, mode, target, defer_saves),
        keras.callbacks.EarlyStopping(
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
        model, state = _resume_point(ckpt_dir, state, t.monitor)
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
            _restore_best(model, ckpt_dir)
    if state["phase"] == 1:
        state.update(phase=2, phase_boundary=state["epochs_done"])
        write_state(ckpt_dir, state)
    boundary = int(state.get("phase_boundary", state["epochs_done"]))

    # Phase 2: fine-tune the top stages with BatchNorm frozen, at a lower learning rate.
    end = boundary + (t.fine_tune_epochs if t.fine_tune_stages > 0 else 0)
    if state["epochs_done"] < end:
        n = M.set_fine_tune(model, t.fine_tune_stages)
        log.info("fine-tuning %d backbone layers (top %d stages), BatchNorm frozen", n, t.fine_tune_stages)
        compile_model(model, t.fine_tune_learning_rate, runtime["jit_compile"])
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=end,
            initial_epoch=state["epochs_done"],
            class_weight=class_weight,
            callbacks=_phase_callbacks(cfg, ckpt_dir, 2, state, callbacks),
            verbose=verbose,
        )
        _restore_best(model, ckpt_dir)

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


def _resume_point(ckpt_dir: Path, state: dict[str, Any], monitor: str) -> tuple[keras.Model, dict[str, Any]]:
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


def _restore_best(model: keras.Model, ckpt_dir: Path) -> None:
    """Load the weights of ``best.keras`` (the best over all phases so far) into ``model``."""
    best = ckpt_dir / BEST_FILE
    if best.is_file():
        model.set_weights(M.load_keras_model(best).get_weights())


def predict_probabilities(model: keras.Model, dataset: tf.data.Dataset, verbose: int = 0) -> np.ndarray:
    """Fake probabilities for every image of a (non-shuffled) dataset, as a 1-D float array."""
    return np.asarray(model.predict(dataset, verbose=verbose), dtype="float64").reshape(-1)


def predict_features(head: keras.Model, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Fake probabilities of the head on pooled backbone features, as a 1-D float array: on features of the
    float32 backbone in inference mode (what the feature cache holds), the detector's own on those images."""
    chunks = [keras.ops.convert_to_numpy(head(features[i : i + batch_size], training=False))
              for i in range(0, len(features), batch_size)]
    return np.concatenate(chunks).astype("float64").reshape(-1) if chunks else np.zeros((0,))
