"""The numeric precision and XLA choices of a training run, per device.

``train.mixed_precision=auto`` picks a Keras dtype policy for the devices TensorFlow would train on
(:func:`choose_precision`: GPUs by compute capability, a CPU by its bfloat16 flags and the backbone);
:func:`configure_runtime` applies it and returns what was used and why, logged as run tags ``runtime.*``.
The choice itself is pure (devices are given), so it is tested without a GPU.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfake import backbones as B
from deepfake.config import Config

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bfloat16 arithmetic
TENSOR_CORES = (7, 0)  # the first NVIDIA compute capability with tensor cores (Volta)
POLICIES = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# TensorFlow's CPU runtime settings that only take effect when set before TensorFlow is imported
# (:func:`backend_defaults`); measured in benchmarks/results/fine_tune_speed.md on a 2-core AVX2 CPU.
BACKEND_DEFAULTS = {
    # oneDNN kernels for convolutions: TensorFlow turns them on by itself only on CPUs with AVX512_VNNI,
    # AVX512_BF16 or AMX. On AVX2 they fine-tune EfficientNet-Lite0 about 1.6x faster per CPU second.
    "TF_ENABLE_ONEDNN_OPTS": "1",
    # One op at a time, each on every core: two concurrent ops on two cores only took the cores from each other.
    "TF_NUM_INTEROP_THREADS": "1",
}


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
    """The GPUs the Keras backend sees (name and compute capability), else this machine's CPU."""
    from deepfake import backend

    devices = [Device("gpu", name, cc) for name, cc in backend.gpus(backend.current())]
    if devices:
        return devices
    try:
        return [parse_cpuinfo(Path("/proc/cpuinfo").read_text())]
    except OSError:  # not Linux
        import platform

        return [Device("cpu", platform.processor() or platform.machine() or "unknown CPU")]


def backend_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the :data:`BACKEND_DEFAULTS` that ``environ`` (default: this process's environment) does not set
    already, and return them; the user's own values win. TensorFlow reads them when it is imported, so the command
    line calls this first, and a program using :mod:`deepfake` as a library sets them itself (or calls this
    before importing Keras). Does nothing once TensorFlow is imported into this process."""
    environ = os.environ if environ is None else environ
    if environ is os.environ and "tensorflow" in sys.modules:
        return {}
    applied = {k: v for k, v in BACKEND_DEFAULTS.items() if k not in environ}
    environ.update(applied)
    return applied


def backend_settings() -> dict[str, Any]:
    """How the backend's CPU runtime runs in this process (logged as run tags ``runtime.*``): for TensorFlow oneDNN
    kernels on or off and the inter- and intra-op thread counts (``default``: TensorFlow's own choice, one per
    core); see :func:`deepfake.backend.settings`."""
    from deepfake import backend

    return backend.settings(backend.current())


def configure_runtime(cfg: Config, devices: Sequence[Device] | None = None) -> dict[str, Any]:
    """Apply the numeric precision and XLA choices for ``devices`` (default: :func:`local_devices`); return
    what was used and why, logged as run tags ``runtime.*``.

    ``train.mixed_precision=auto`` is :func:`choose_precision`; ``off``, ``bfloat16`` and ``float16`` force
    a policy. ``train.jit_compile=auto``: :func:`deepfake.backend.jit_default` (TensorFlow: XLA only on GPUs, 2-5x
    slower on CPU in ``benchmarks/bench_training.py``; JAX: always; PyTorch: never). The CPU runtime's
    settings (:func:`backend_settings`: oneDNN, threads) are recorded with them.
    """
    import keras

    from deepfake import backend

    devices = list(local_devices() if devices is None else devices)
    gpu = any(d.kind == "gpu" for d in devices)
    precision = cfg.train.mixed_precision
    if precision == "auto":
        policy, reason = choose_precision(devices, cfg.model.backbone)
    else:
        policy, reason = POLICIES[precision], f"train.mixed_precision={precision}"
    keras.mixed_precision.set_global_policy(policy)
    jit = cfg.train.jit_compile
    name = backend.current()
    jit_compile = backend.jit_default(name, gpu) if jit == "auto" else jit == "on"
    used = [d for d in devices if d.kind == ("gpu" if gpu else "cpu")] or devices
    runtime = {**backend.describe(), "device": "gpu" if gpu else "cpu", "device_name": "; ".join(d.name for d in used),
               "precision_policy": policy, "precision_reason": reason, "jit_compile": jit_compile}
    if gpu:
        runtime["compute_capability"] = ", ".join(_capability(d.compute_capability) for d in used)
    else:
        runtime["cpu_flags"] = ",".join(sorted(set().union(*(d.flags for d in used)))) or "none"
        runtime.update(backend_settings())
    log.info("training on %s (%s); precision %s: %s", runtime["device"], runtime["device_name"], policy, reason)
    clash = tensorflow_clash(_installed(["tensorflow", "tensorflow-cpu"]))
    if clash:
        log.warning(clash)
    return runtime
