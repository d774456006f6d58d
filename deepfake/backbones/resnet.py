"""ResNet50 from ``keras.applications`` (He et al. 2016); ImageNet weights by Keras' own download.

Built and loaded like the other ``keras.applications`` families (:mod:`deepfake.backbones.keras_apps`);
only its stages are named its own way.
"""

from __future__ import annotations

from deepfake.backbones import Backbone
from deepfake.backbones.keras_apps import build, load_imagenet  # noqa: F401  (the registry calls them here)


def stage_of(spec: Backbone, layer_name: str) -> int | None:
    """conv1/pool1 -> 1, conv2_* -> 2, ... conv5_* -> 5 (top); None for layers outside the stages."""
    if layer_name.startswith(("conv1", "pool1")):
        return 1
    if layer_name.startswith("conv") and len(layer_name) > 4 and layer_name[4].isdigit():
        return int(layer_name[4])
    return None
