"""Inference speed of every runtime side by side: Keras `predict`, ONNX Runtime and OpenVINO float32, bfloat16
and int8 (`deepfake export --format ...`), on one trained detector, with the work per image and the share of
this CPU's peak.

1. A ResNet50 detector at 224 px is trained on --data (head only on the frozen backbone: ImageNet weights
   for ResNet50 cannot be downloaded offline, so its backbone is random; the head is trained, so decisions
   are real ones), then exported to each format (int8 calibrated on the validation split; every export passes
   its agreement check).
2. images/s at batch 32 and latency at batch 1, the runtimes interleaved, best of --repeats after warm-up.
3. On the test split: ROC-AUC of each runtime and the share of decisions (at the detector's threshold) equal
   to Keras'.
4. GMACs per image (convolutions and dense layers, counted from the Keras graph) -> achieved GMAC/s, and its
   share of the FP32 peak measured by bench_peak.py (results/peak.json).

    python benchmarks/bench_inference.py [--data DIR] [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, RESULTS, cpu_flags, gmacs, write

RUNTIMES = ("keras", "onnx", "openvino", "openvino-bf16", "openvino-int8")
# Multiply-accumulates per cycle of the units each runtime's convolutions use, relative to FP32 FMA: AVX512_BF16's
# dot product does 2 bf16 pairs per 32-bit lane, AVX512_VNNI's 4 int8 pairs (AMX, on Intel Xeons, far more).
UNIT_FACTOR = {"keras": 1, "onnx": 1, "openvino": 1, "openvino-bf16": 2, "openvino-int8": 4}


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
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", default=None, help="Working folder (default: a new temporary one).")
    args = parser.parse_args()

    from deepfake import data as D
    from deepfake.config import DataConfig
    from deepfake.export import export
    from deepfake.inference import Predictor

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-inf-"))
    keras_dir = work / "train" / "model"
    if not (keras_dir / "model.keras").is_file():
        subprocess.run([sys.executable, "-c", "from deepfake.cli import main; main()", "train", "--data", args.data,
                        "--backbone", "resnet50", "--weights", "none", "--image-size", str(args.size),
                        "--epochs", str(args.epochs), "--fine-tune-epochs", "0", "--output-dir", str(work / "train"),
                        "--tracking-uri", f"sqlite:///{work}/mlflow.db", "--set", "tracking.log_model=false"],
                       check=True)
    info = D.scan_dataset(DataConfig(path=args.data, image_size=args.size))
    predictors = {"keras": Predictor.from_dir(keras_dir)}
    checks = {}
    for fmt in RUNTIMES[1:]:
        checks[fmt] = export(Predictor.from_dir(keras_dir), work / fmt, fmt, split=info.splits["val"])
        predictors[fmt] = Predictor.from_dir(work / fmt)

    rng = np.random.default_rng(0)
    x32 = rng.uniform(0, 255, (32, args.size, args.size, 3)).astype("float32")
    b32 = {name: float("inf") for name in RUNTIMES}
    b1 = dict(b32)
    for _ in range(2):  # interleaved rounds: a slow spell of the machine hits every runtime
        for name, p in predictors.items():
            run32 = lambda p=p: p.model.predict(x32, batch_size=32, verbose=0)  # noqa: E731
            run1 = lambda p=p: p.model.predict(x32[:1], batch_size=1, verbose=0)  # noqa: E731
            b32[name] = min(b32[name], timed(run32, args.repeats))
            b1[name] = min(b1[name], timed(run1, args.repeats * 3))

    from sklearn.metrics import roc_auc_score

    test = info.splits["test"]
    probs = {name: p.predict_split(test) for name, p in predictors.items()}
    threshold = predictors["keras"].meta.threshold
    work_per_image = gmacs(predictors["keras"].model)
    peak_file = RESULTS / "peak.json"
    peak = json.loads(peak_file.read_text())["rows"][0]["tensorflow GMAC/s"] if peak_file.is_file() else None
    rows = []
    for name in RUNTIMES:
        ips = 32 / b32[name]
        rows.append({
            "runtime": name,
            "b32 img/s": round(ips, 1), "vs keras b32": round(b32["keras"] / b32[name], 2),
            "b1 ms": round(b1[name] * 1000, 1), "vs keras b1": round(b1["keras"] / b1[name], 2),
            "GMAC/s (b32)": round(ips * work_per_image, 1),
            "% FP32 peak": round(100 * ips * work_per_image / peak, 1) if peak else "-",
            "% of its unit's peak": (round(100 * ips * work_per_image / (peak * UNIT_FACTOR[name]), 1)
                                     if peak else "-"),
            "test ROC-AUC": round(float(roc_auc_score(test.labels, probs[name])), 4),
            "same decisions as keras": round(float(np.mean((probs[name] >= threshold)
                                                           == (probs["keras"] >= threshold))), 4),
            "max abs diff (val)": f"{checks[name]['max_abs_diff']:.1e}" if name in checks else "-",
        })
    write("inference", rows, notes=(
        f"ResNet50 detector at {args.size} px ({work_per_image:.2f} GMACs per image), head trained {args.epochs} "
        f"epochs on {args.data} with a random backbone (ImageNet weights for ResNet50 cannot be downloaded "
        f"offline); {len(test)} test images. Batch 32 and batch 1 on random pixels, best of {args.repeats} "
        "after warm-up, the runtimes interleaved in two rounds. '% FP32 peak' is the achieved multiply-"
        f"accumulate rate over the FP32 matmul peak of results/peak.json ({peak} GMAC/s); '% of its unit's peak' "
        "divides by 2x that for bf16 (AVX512_BF16) and 4x for int8 (AVX512_VNNI), their multiply-accumulates per "
        "cycle relative to FP32 (an estimate: AMX, on Intel Xeons, has far more). "
        f"CPU flags: {' '.join(cpu_flags())}. Int8 is calibrated on {min(300, len(info.splits['val']))} "
        "validation images. Timings on a shared 2-core VM move by 10-20 %; the ratios are what matter."),
        extra={"checks": checks, "gmacs_per_image": work_per_image})


if __name__ == "__main__":
    main()
