"""``keras.applications`` families whose layers follow EfficientNet's naming (stem, block1a..., top).

Their preprocessing is inside the Keras model (inputs are pixels in 0..255); ImageNet weights come
from Keras' own download, so they need internet once (Keras caches them in ~/.keras/models).
"""

from __future__ import annotations

import keras

from deepfake.backbones.efficientnet_lite import stage_of  # noqa: F401  (same layer naming)
from deepfake.backbones import WeightsUnavailable


def build(spec, input_shape, pooling, weights=None) -> keras.Model:
    app = getattr(keras.applications, spec.extra["application"])
    return app(include_top=False, weights=weights, input_shape=input_shape, pooling=pooling, name=spec.name)


def load_imagenet(spec, input_shape, pooling) -> tuple[keras.Model, str]:
    try:
        return build(spec, input_shape, pooling, "imagenet"), "imagenet"
    except Exception as exc:
        raise WeightsUnavailable(f"could not download ImageNet weights ({type(exc).__name__})") from None
