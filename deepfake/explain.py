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

from deepfake.model import backbone_of, backbone_spec, head_of, input_layer_of


class Detector(Protocol):
    """What Grad-CAM needs of a detector (a :class:`deepfake.inference.Predictor`, one layer up)."""

    model: keras.Model

    def calibrate(self, raw: Any) -> np.ndarray: ...


def grad_cam(predictor: Detector, image: np.ndarray) -> tuple[np.ndarray, float]:
    """``(heat map in [0, 1] with the image's height and width, fake probability)`` for a
    :class:`deepfake.inference.Predictor` with a Keras model; the probability is the calibrated
    one every other prediction path reports (the heat map does not depend on calibration).
    """
    import keras
    import tensorflow as tf

    model = predictor.model
    backbone = backbone_of(model)
    last_conv = backbone.get_layer(backbone_spec(model).gradcam_layer)
    # One pass gives both the feature map and the pooled features computed from it (as in keras-io's Grad-CAM).
    inner = keras.Model(backbone.inputs, [last_conv.output, backbone.output])
    x = tf.convert_to_tensor(np.asarray(image, dtype="float32")[None])
    with tf.GradientTape() as tape:
        conv, pooled = inner(input_layer_of(model)(x), training=False)
        prob = head_of(model)(pooled, training=False)[:, 0]
    grads = tape.gradient(prob, conv)[0]
    weights = tf.reduce_mean(grads, axis=[0, 1])
    cam = tf.nn.relu(tf.reduce_sum(conv[0] * weights, axis=-1))
    cam = cam / (tf.reduce_max(cam) + 1e-8)
    h, w = image.shape[:2]
    cam = tf.image.resize(cam[..., None], [h, w], method="bilinear")[..., 0]
    return np.clip(cam.numpy(), 0, 1), float(predictor.calibrate(prob.numpy())[0])


def save_explanation(image: np.ndarray, heat: np.ndarray, label: str, probability: float, path: str | Path,
                     title: str = "") -> Path:
    """The image, the heat map over it, and the prediction, side by side."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    img = np.clip(image, 0, 255).astype(np.uint8)
    overlay = (0.55 * img + 0.45 * 255 * colormaps["jet"](heat)[..., :3]).astype(np.uint8)
    fig = Figure(figsize=(8, 4.4), dpi=110)
    axes = fig.subplots(1, 2)
    axes[0].imshow(img)
    axes[0].set_title(title or "image", fontsize=9)
    axes[1].imshow(overlay)
    axes[1].set_title(f"Grad-CAM: predicted {label} (fake probability {probability:.3f})", fontsize=9)
    for ax in axes:
        ax.axis("off")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path
