"""Inference speed: Keras `model.predict` vs the ONNX Runtime export, and `deepfake predict`.

1. images/s at batch 32 and latency at batch 1, Keras vs ONNX Runtime (same model, interleaved);
2. `deepfake predict` on a folder of 200 images (decode + predict + output), Keras and ONNX;
3. agreement: max |p_keras - p_onnx| on 100 images.

    python benchmarks/bench_inference.py [--size 224] [--images 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from deepfake import config as C
    from deepfake import model as M
    from deepfake.demo import make_demo_dataset
    from deepfake.export import export
    from deepfake.inference import ModelMeta, OnnxModel, Predictor, save_detector

    work = Path(tempfile.mkdtemp(prefix="bench-inf-"))
    cfg = C.resolve(set_args=[f"data.image_size={args.size}", "model.weights=none"])
    model = M.build_model(cfg)
    save_detector(model, ModelMeta(image_size=args.size), work / "keras")
    info = export(Predictor.from_dir(work / "keras"), work / "onnx")
    onnx = OnnxModel(work / "onnx" / "model.onnx")
    rng = np.random.default_rng(0)
    x32 = rng.uniform(0, 255, (32, args.size, args.size, 3)).astype("float32")
    rows = []
    keras32 = timed(lambda: model.predict(x32, batch_size=32, verbose=0), args.repeats)
    onnx32 = timed(lambda: onnx.predict(x32), args.repeats)
    keras1 = timed(lambda: model.predict(x32[:1], verbose=0), args.repeats * 3)
    onnx1 = timed(lambda: onnx.predict(x32[:1]), args.repeats * 3)
    rows.append({"measure": f"batch 32 images/s ({args.size} px)", "keras": round(32 / keras32, 1),
                 "onnxruntime": round(32 / onnx32, 1), "ratio": round(keras32 / onnx32, 2)})
    rows.append({"measure": "batch 1 latency ms", "keras": round(keras1 * 1000, 1),
                 "onnxruntime": round(onnx1 * 1000, 1),
                 "ratio": round(keras1 / onnx1, 2)})

    folder = work / "images"
    make_demo_dataset(folder, per_class=args.images // 2, size=256, seed=1, splits=(1.0, 0.0, 0.0))
    cli = [sys.executable, "-c", "from deepfake.cli import main; main()", "predict", str(folder),
           "--output", str(work / "out.csv"), "--model"]
    wall = {}
    for engine in ("keras", "onnx"):
        start = time.perf_counter()
        subprocess.run([*cli, str(work / engine)], check=False, capture_output=True, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
        wall[engine] = time.perf_counter() - start
    rows.append({"measure": f"`deepfake predict` {args.images} JPEGs, images/s incl. start-up and model load",
                 "keras": round(args.images / wall["keras"], 1), "onnxruntime": round(args.images / wall["onnx"], 1),
                 "ratio": round(wall["keras"] / wall["onnx"], 2)})
    write("inference", rows, notes=(
        f"ResNet50 detector at {args.size} px, 2 CPU cores, best of {args.repeats} runs after warm-up. "
        f"ONNX export agrees with Keras to {info['max_abs_diff']:.1e} (max abs difference, 100 images). "
        "`deepfake predict` figures include Python/TensorFlow start-up (several seconds) and decoding."),
        extra={"max_abs_diff": info["max_abs_diff"]})


if __name__ == "__main__":
    main()
