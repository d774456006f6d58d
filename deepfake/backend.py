"""Which Keras backend runs the detector: TensorFlow (the default), JAX or PyTorch.

Keras 3 picks its backend once, when it is first imported, from ``KERAS_BACKEND``. :func:`use` sets that
variable from ``train.backend`` (or ``deepfake --backend``) before anything imports Keras, and refuses clearly
when Keras already runs on another one or the backend's package is missing. The rest of the project asks
:func:`current` where it must do something per backend: the input pipeline (``tf.data`` on TensorFlow, NumPy and
Pillow workers elsewhere: :mod:`deepfake.input_pipeline`), gradients for Grad-CAM (:mod:`deepfake.explain`), the
devices and XLA choice (:mod:`deepfake.precision`) and the ONNX export (:mod:`deepfake.export`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import MutableMapping
from importlib import metadata

from deepfake.errors import DeepfakeError

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"
AUTO = "auto"  # train.backend: $KERAS_BACKEND when set, else DEFAULT
# What to install for each backend (the one-line hints of a missing package).
INSTALL = {
    "tensorflow": "pip install 'deepfake[cpu]' (or 'deepfake[gpu]' on Linux with an NVIDIA GPU)",
    "jax": "pip install 'deepfake[jax]' (NVIDIA GPU: pip install 'jax[cuda13]')",
    "torch": "install PyTorch (https://pytorch.org/get-started/locally/, e.g. pip install torch)",
}
# The distribution whose version is logged for each backend (tensorflow-cpu installs the tensorflow module).
DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",), "torch": ("torch",)}


def requested(setting: str | None = AUTO, environ: MutableMapping[str, str] | None = None) -> str:
    """The backend a setting names: itself, or for ``auto`` (or nothing) ``$KERAS_BACKEND``, else TensorFlow."""
    environ = os.environ if environ is None else environ
    name = (setting or AUTO).strip().lower()
    if name == AUTO:
        name = environ.get("KERAS_BACKEND", "").strip().lower() or DEFAULT
        where = "KERAS_BACKEND"
    else:
        where = "train.backend"
    if name not in BACKENDS:
        raise DeepfakeError(f"{where} must be one of {', '.join(BACKENDS)} (or auto), not {name!r}")
    return name


def use(setting: str | None = AUTO, environ: MutableMapping[str, str] | None = None) -> str:
    """Make ``setting`` (see :func:`requested`) the backend Keras will run on and return its name: sets
    ``KERAS_BACKEND`` before Keras is imported. A one-line :class:`~deepfake.errors.DeepfakeError` when the
    backend's package is not installed, or when Keras already runs in this process on another backend (a library
    user sets ``KERAS_BACKEND`` before importing Keras)."""
    environ = os.environ if environ is None else environ
    name = requested(setting, environ)
    if "keras" in sys.modules:
        running = current()
        if running != name:
            raise DeepfakeError(f"Keras already runs on {running} in this process, not {name}: set "
                                f"KERAS_BACKEND={name} before Python imports Keras (or give deepfake --backend)")
        return name
    if importlib.util.find_spec(name) is None:
        raise DeepfakeError(f"the {name} backend needs the {name} package: {INSTALL[name]}")
    environ["KERAS_BACKEND"] = name
    return name


def current() -> str:
    """The backend Keras runs on in this process (imports Keras)."""
    import keras

    return keras.backend.backend()


def version(name: str) -> str:
    """The installed version of a backend's package, or ``unknown``."""
    for dist in DISTRIBUTIONS[name]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def jit_default(name: str, gpu: bool) -> bool:
    """``train.jit_compile: auto`` per backend: JAX always compiles with XLA (Keras on JAX without it runs every op
    alone, many times slower); TensorFlow on GPUs only (XLA was 2-5x slower on CPUs in
    benchmarks/bench_training.py); PyTorch never (``torch.compile`` takes minutes and is the user's choice)."""
    if name == "jax":
        return True
    if name == "tensorflow":
        return gpu
    return False


def gpus(name: str) -> list[tuple[str, tuple[int, int] | None]]:
    """The NVIDIA GPUs the backend ``name`` sees: ``(name, compute capability)``; empty on a CPU-only install."""
    found: list[tuple[str, tuple[int, int] | None]] = []
    if name == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                details = tf.config.experimental.get_device_details(gpu)
            except (ValueError, RuntimeError):  # pragma: no cover - a GPU TensorFlow cannot describe
                details = {}
            cc = details.get("compute_capability")
            found.append((details.get("device_name") or gpu.name, tuple(cc) if cc else None))
    elif name == "jax":
        import jax

        for dev in jax.devices():
            if dev.platform == "gpu":  # pragma: no cover - needs a GPU
                cc = getattr(dev, "compute_capability", None)
                found.append((dev.device_kind, tuple(int(p) for p in str(cc).split(".")[:2]) if cc else None))
    elif name == "torch":
        import torch

        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):  # pragma: no cover - GPU
            found.append((torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i))))
    return found


def settings(name: str) -> dict[str, str]:
    """How the backend's CPU runtime runs in this process (run tags ``runtime.*``). TensorFlow: oneDNN and its
    thread pools; PyTorch: its thread count; JAX: the XLA flags given (XLA picks its own threads)."""
    if name == "tensorflow":
        import tensorflow as tf

        try:
            from tensorflow.python.util import _pywrap_util_port

            onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
        except (ImportError, AttributeError):  # pragma: no cover - a TensorFlow build without the probe
            onednn = "unknown"
        threading = tf.config.threading

        def threads(configured: int, variable: str) -> str:
            return str(configured or os.environ.get(variable) or "default")

        return {"onednn": onednn,
                "inter_op_threads": threads(threading.get_inter_op_parallelism_threads(), "TF_NUM_INTEROP_THREADS"),
                "intra_op_threads": threads(threading.get_intra_op_parallelism_threads(), "TF_NUM_INTRAOP_THREADS")}
    if name == "torch":
        import torch

        return {"intra_op_threads": str(torch.get_num_threads()),
                "inter_op_threads": str(torch.get_num_interop_threads())}
    return {"xla_flags": os.environ.get("XLA_FLAGS", "") or "default"}


def describe() -> dict[str, str]:
    """The run tags of the backend in use: ``backend``, ``backend_version`` (and Keras')."""
    import keras

    name = current()
    return {"backend": name, "backend_version": version(name), "keras_version": keras.__version__}
