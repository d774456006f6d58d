"""Grad-CAM: which regions of an image drove the detector's fake probability.

Gradients of the fake probability with respect to the backbone's last convolutional feature
map (each backbone names it: ``conv5_block3_out`` in ResNet50, ``top_activation`` in
EfficientNet) are averaged into channel weights; the weighted, rectified sum of that map's
activations is the heat map, upsampled to the image (Selvaraju et al., 2017).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np

from deepfake.errors import DeepfakeError
from deepfake.model import backbone_of, backbone_spec, head_of, input_layer_of
from deepfake.pixels import resize_bilinear


class Detector(Protocol):
    """What Grad-CAM needs of a detector (a :class:`deepfake.inference.Predictor`, one layer up)."""

    model: keras.Model

    def calibrate(self, raw: Any) -> np.ndarray: ...


def grad_cam(predictor: Detector, image: np.ndarray) -> tuple[np.ndarray, float]:
    """``(heat map in [0, 1] with the image's height and width, fake probability)`` for a
    :class:`deepfake.inference.Predictor` with a Keras model; the probability is the calibrated
    one every other prediction path reports (the heat map does not depend on calibration).

    The same on every Keras backend: the backbone's pooled features end in the global average of the feature map
    (its last ``C`` values; ``model.pooling: multi`` puts the earlier stages' first), so the gradient of the
    probability with respect to the map, averaged over its positions (Grad-CAM's channel weights), is the head's
    gradient with respect to those ``C`` features divided by the map's ``H * W``. Only that small gradient needs the
    backend's automatic differentiation (:func:`head_gradient`).
    """
    model = predictor.model
    backbone = backbone_of(model)
    layer = backbone_spec(model).gradcam_layer
    # One pass gives both the feature map and the pooled features computed from it (as in keras-io's Grad-CAM).
    inner = keras.Model(backbone.inputs, [backbone.get_layer(layer).output, backbone.output])
    x = np.asarray(image, dtype="float32")[None]
    conv, pooled = (keras.ops.convert_to_numpy(t).astype("float32")
                    for t in inner(input_layer_of(model)(x), training=False))
    conv = conv[0]
    channels = conv.shape[-1]
    mean = conv.mean(axis=(0, 1))
    if pooled.shape[-1] < channels or not np.allclose(pooled[0, -channels:], mean, rtol=1e-3,
                                                       atol=1e-4 * (1 + float(np.abs(mean).max()))):
        raise DeepfakeError(f"Grad-CAM needs the backbone's pooled features to end in the average of {layer}, "
                            "and this model's do not")
    grads, prob = head_gradient(head_of(model), pooled)
    weights = grads[0, -channels:] / (conv.shape[0] * conv.shape[1])
    cam = np.maximum((conv * weights).sum(axis=-1), 0.0)
    cam = cam / (cam.max() + 1e-8)
    h, w = image.shape[:2]
    cam = resize_bilinear(cam[..., None], h, w)[..., 0]
    return np.clip(cam, 0, 1), float(predictor.calibrate(prob)[0])


def head_gradient(head: keras.Model, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(gradient of the head's fake probability with respect to its input features, the probabilities)`` for
    ``features`` ``(N, D)``, by the Keras backend's own automatic differentiation."""
    name = keras.backend.backend()
    features = np.asarray(features, dtype="float32")
    if name == "tensorflow":
        import tensorflow as tf

        z = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(z)
            prob = head(z, training=False)[:, 0]
        return tape.gradient(prob, z).numpy(), prob.numpy()
    if name == "jax":
        import jax

        def total(z):
            prob = head(z, training=False)[:, 0]
            return prob.sum(), prob

        (_, prob), grads = jax.value_and_grad(total, has_aux=True)(jax.numpy.asarray(features))
        return np.asarray(grads), np.asarray(prob)
    if name == "torch":
        import torch

        z = keras.ops.convert_to_tensor(features)
        z.requires_grad_(True)
        prob = head(z, training=False)[:, 0]
        (grads,) = torch.autograd.grad(prob.sum(), z)
        return grads.detach().cpu().numpy(), prob.detach().cpu().numpy()
    raise DeepfakeError(f"Grad-CAM does not know the {name} backend; use tensorflow, jax or torch")


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heat map (jet colours) laid over the image, as uint8 RGB."""
    from matplotlib import colormaps

    img = np.clip(image, 0, 255).astype(np.uint8)
    return (0.55 * img + 0.45 * 255 * colormaps["jet"](heat)[..., :3]).astype(np.uint8)


def save_explanation(image: np.ndarray, heat: np.ndarray, label: str, probability: float, path: str | Path,
                     title: str = "") -> Path:
    """The image, the heat map over it, and the prediction, side by side."""
    from matplotlib.figure import Figure

    img = np.clip(image, 0, 255).astype(np.uint8)
    fig = Figure(figsize=(8, 4.4), dpi=110)
    axes = fig.subplots(1, 2)
    axes[0].imshow(img)
    axes[0].set_title(title or "image", fontsize=9)
    axes[1].imshow(overlay(img, heat))
    axes[1].set_title(f"Grad-CAM: predicted {label} (fake probability {probability:.3f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path
