"""The detector: Keras 3 ResNet50 backbone plus a small classification head.

The model takes RGB pixels in 0..255 (``float32``, shape ``(S, S, 3)``); ResNet50's own
preprocessing (RGB->BGR, ImageNet mean subtraction) is a layer inside the graph, so a saved
model can be fed the same decoded pixels at training and inference time.

Layout of the functional model::

    image (0..255) -> representation layer -> "resnet50" (pooled features) -> "head" -> fake probability

The backbone and the head are sub-models, so the head can also be trained on cached
backbone features (see :mod:`deepfake.features`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers, ops

from deepfake.config import Config, ModelConfig
from deepfake.errors import DeepfakeError

log = logging.getLogger(__name__)

FEATURE_DIM = 2048  # ResNet50 pooled feature width
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
RANDOM_INIT_WARNING = (
    "ImageNet weights could not be downloaded, so the ResNet50 backbone starts from RANDOM "
    "initialisation. Expect much weaker results than with pretrained weights. "
    "Pass --weights PATH to a local resnet50 'notop' weights file, or run once with internet "
    "access so Keras caches the weights in ~/.keras/models."
)


@keras.saving.register_keras_serializable(package="deepfake")
class ResNetPreprocess(layers.Layer):
    """``keras.applications.resnet50.preprocess_input`` as a layer: RGB->BGR, minus ImageNet mean."""

    def call(self, inputs):
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=bgr.dtype)


@keras.saving.register_keras_serializable(package="deepfake")
class NPRResidual(layers.Layer):
    """Neighbouring-pixel residual (NPR, Tan et al. 2024) computed inside the graph.

    ``x - up(down(x))`` with nearest-neighbour 2x down- and up-sampling: it removes image
    content and keeps the local pixel correlations that generators' upsampling leaves.
    The residual (roughly -255..255) is scaled to the magnitude ResNet50 inputs usually have.
    """

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        down = inputs[:, ::2, ::2, :]
        up = ops.repeat(ops.repeat(down, 2, axis=1), 2, axis=2)
        up = up[:, : ops.shape(inputs)[1], : ops.shape(inputs)[2], :]
        return (inputs - up) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@dataclass
class WeightsInfo:
    """Where the backbone's initial weights came from, for logging on the run."""

    requested: str
    source: str  # "imagenet", "random" or "file:<path>"
    warning: str | None = None


def _resnet(input_shape: tuple[int, int, int], weights: str | None, pooling: str) -> keras.Model:
    return keras.applications.ResNet50(
        include_top=False, weights=weights, input_shape=input_shape, pooling=pooling, name="resnet50"
    )


def build_backbone(cfg: Config) -> tuple[keras.Model, WeightsInfo]:
    """ResNet50 without its top, initialised as ``cfg.model.weights`` asks.

    ``auto`` tries ImageNet and falls back to random initialisation with a loud warning;
    ``imagenet`` fails with a clear error when the weights cannot be had; ``none`` is random;
    anything else is a path to a weights file for ResNet50 ``include_top=False``.
    """
    m = cfg.model
    size = cfg.data.image_size
    shape = (size, size, 3)
    requested = m.weights
    choice = requested.strip()
    if choice.lower() == "none":
        return _resnet(shape, None, m.pooling), WeightsInfo(requested, "random")
    if choice.lower() in ("auto", "imagenet"):
        try:
            return _resnet(shape, "imagenet", m.pooling), WeightsInfo(requested, "imagenet")
        except Exception as exc:  # no network, blocked host, corrupt cache...
            if choice.lower() == "imagenet":
                raise DeepfakeError(
                    f"--weights imagenet: could not download ImageNet weights ({type(exc).__name__}); "
                    "check internet access, or pass --weights PATH to a local weights file, or --weights none"
                ) from None
            warnings.warn(RANDOM_INIT_WARNING, stacklevel=2)
            log.warning("!" * 80)
            log.warning(RANDOM_INIT_WARNING)
            log.warning("!" * 80)
            return _resnet(shape, None, m.pooling), WeightsInfo(requested, "random", RANDOM_INIT_WARNING)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise DeepfakeError(
            f"--weights {choice}: no such file; give auto, imagenet, none or the path to a ResNet50 weights file"
        )
    backbone = _resnet(shape, None, m.pooling)
    try:
        backbone.load_weights(str(path))
    except Exception as exc:
        raise DeepfakeError(
            f"--weights {path}: could not load it into ResNet50 (include_top=False): {str(exc).splitlines()[0][:200]}"
        ) from None
    return backbone, WeightsInfo(requested, f"file:{path}")


def build_head(m: ModelConfig, input_dim: int = FEATURE_DIM) -> keras.Model:
    """Dropout and dense layers on pooled backbone features, ending in one sigmoid unit."""
    inputs = keras.Input((input_dim,), name="features")
    x = inputs
    for i, units in enumerate(m.head_units):
        x = layers.Dropout(m.dropout, name=f"head_dropout_{i}")(x)
        x = layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
    x = layers.Dropout(m.dropout, name="head_dropout_out")(x)
    # float32 output keeps the sigmoid and the loss stable under mixed precision.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="fake_probability")(x)
    return keras.Model(inputs, outputs, name="head")


def representation_layer(m: ModelConfig) -> layers.Layer:
    if m.representation == "npr":
        return NPRResidual(scale=4.0, name="npr_residual")
    return ResNetPreprocess(name="resnet_preprocess")


def build_model(cfg: Config, *, with_info: bool = False):
    """The full detector for ``cfg``; with ``with_info=True`` returns ``(model, WeightsInfo)``.

    The backbone starts frozen (phase 1 of transfer learning) and is always called with
    ``training=False``, so its BatchNorm layers stay in inference mode even once unfrozen.
    """
    size = cfg.data.image_size
    backbone, info = build_backbone(cfg)
    backbone.trainable = False
    head = build_head(cfg.model)
    inputs = keras.Input((size, size, 3), name="image")
    x = representation_layer(cfg.model)(inputs)
    features = backbone(x, training=False)
    outputs = head(features)
    model = keras.Model(inputs, outputs, name="deepfake_resnet50")
    return (model, info) if with_info else model


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer("resnet50")


def head_of(model: keras.Model) -> keras.Model:
    return model.get_layer("head")


def feature_extractor(model: keras.Model) -> keras.Model:
    """Pixels -> pooled backbone features (what the feature cache stores), sharing weights."""
    inputs = keras.Input(model.input.shape[1:], name="image")
    representation = model.layers[1]  # ResNetPreprocess or NPRResidual, right after the input
    features = backbone_of(model)(representation(inputs), training=False)
    return keras.Model(inputs, features, name="feature_extractor")


def _stage(layer_name: str) -> int | None:
    """ResNet50 stage of a layer: conv1/pool1 -> 1, conv2_* -> 2, ... conv5_* -> 5."""
    if layer_name.startswith(("conv1", "pool1")):
        return 1
    if layer_name.startswith("conv") and len(layer_name) > 4 and layer_name[4].isdigit():
        return int(layer_name[4])
    return None


def set_fine_tune(model: keras.Model, stages: int) -> int:
    """Unfreeze the top ``stages`` ResNet50 stages, keeping every BatchNorm layer frozen.

    Returns the number of trainable backbone layers (those with weights).
    """
    backbone = backbone_of(model)
    if stages <= 0:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    first = 6 - stages
    n = 0
    for layer in backbone.layers:
        stage = _stage(layer.name)
        trainable = (
            stage is not None
            and stage >= first
            and not isinstance(layer, layers.BatchNormalization)
        )
        layer.trainable = trainable
        n += int(trainable and bool(layer.weights))
    return n


def custom_objects() -> dict:
    return {"ResNetPreprocess": ResNetPreprocess, "NPRResidual": NPRResidual}


def load_keras_model(path: str | Path, compile: bool = False) -> keras.Model:
    path = Path(path)
    if not path.is_file():
        raise DeepfakeError(f"model file {path} does not exist; train a model first or pass another path")
    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), compile=compile)
    except Exception as exc:
        raise DeepfakeError(f"could not load model {path}: {str(exc).splitlines()[0][:200]}") from None


def as_float32(model: keras.Model, cfg: Config) -> keras.Model:
    """A float32 copy of a (possibly mixed-precision) detector, for saving and inference.

    Mixed precision speeds up training; inference and export stay in float32 so that every
    runtime gives the same probabilities.
    """
    if all(w.dtype == "float32" for w in model.weights) and keras.mixed_precision.global_policy().name == "float32":
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_model(Config(data=cfg.data, model=ModelConfig(**{**vars(cfg.model), "weights": "none"}),
                                  train=cfg.train, tracking=cfg.tracking))
        copy.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return copy
