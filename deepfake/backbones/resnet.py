"""ResNet50 from ``keras.applications`` (He et al. 2016); ImageNet weights by Keras' own download."""

from __future__ import annotations

import keras

from deepfake.backbones import Backbone, WeightsUnavailable


def build(spec: Backbone, input_shape: tuple[int, int, int], pooling: str | None,
          weights: str | None = None) -> keras.Model:
    return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape,
                                       pooling=pooling, name=spec.name)


def load_imagenet(spec: Backbone, input_shape: tuple[int, int, int], pooling: str | None) -> tuple[keras.Model, str]:
    try:
        return build(spec, input_shape, pooling, "imagenet"), "keras.applications download"
    except Exception as exc:  # noqa: BLE001 - no network, blocked host, corrupt cache: get_file raises bare Exception
        raise WeightsUnavailable(f"could not download ImageNet weights ({type(exc).__name__})") from None


def stage_of(spec: Backbone, layer_name: str) -> int | None:
    """conv1/pool1 -> 1, conv2_* -> 2, ... conv5_* -> 5 (top); None for layers outside the stages."""
    if layer_name.startswith(("conv1", "pool1")):
        return 1
    if layer_name.startswith("conv") and len(layer_name) > 4 and layer_name[4].isdigit():
        return int(layer_name[4])
    return None
