"""``keras.applications`` families, built by name (``extra["application"]``); ImageNet weights by Keras' download.

The module's own ``stage_of`` serves the families whose layers follow EfficientNet's naming (stem,
block1a..., top); ResNet50 (:mod:`deepfake.backbones.resnet`) brings its own. EfficientNet's
preprocessing is inside the Keras model (inputs are pixels in 0..255); ImageNet weights come
from Keras' own download, so they need internet once (Keras caches them in ~/.keras/models).
"""

from __future__ import annotations

import keras

from deepfake.backbones import Backbone, WeightsUnavailable
from deepfake.backbones.efficientnet_lite import stage_of  # noqa: F401  (same layer naming)


def build(spec: Backbone, input_shape: tuple[int, int, int], pooling: str | None,
          weights: str | None = None) -> keras.Model:
    app = getattr(keras.applications, spec.extra["application"])
    return app(include_top=False, weights=weights, input_shape=input_shape, pooling=pooling, name=spec.name)


def load_imagenet(spec: Backbone, input_shape: tuple[int, int, int], pooling: str | None) -> tuple[keras.Model, str]:
    try:
        return build(spec, input_shape, pooling, "imagenet"), "keras.applications download"
    except Exception as exc:  # noqa: BLE001 - no network, blocked host, corrupt cache: get_file raises bare Exception
        raise WeightsUnavailable(f"could not download ImageNet weights ({type(exc).__name__})") from None
