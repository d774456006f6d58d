"""This CPU's achievable FP32 multiply-accumulate rate: a large matrix product (the best case for
any convolution), to put the backbones' GMAC/s in proportion.

    python benchmarks/bench_peak.py [--n 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tensorflow as tf

    n = args.n
    a = tf.random.uniform((n, n), dtype=tf.float32)
    b = tf.random.uniform((n, n), dtype=tf.float32)
    tf.linalg.matmul(a, b).numpy()  # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    gmacs = n ** 3 / 1e9
    na, nb = np.asarray(a), np.asarray(b)
    np_best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        na @ nb
        np_best = min(np_best, time.perf_counter() - start)
    write("peak", [{"measure": f"FP32 matmul {n}x{n}", "tensorflow GMAC/s": round(gmacs / best, 1),
                    "numpy GMAC/s": round(gmacs / np_best, 1)}],
          notes="Best of the runs after warm-up; an upper bound for what a convolution reaches on this CPU.")


if __name__ == "__main__":
    main()
