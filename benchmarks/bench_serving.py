"""Serving latency: `mlflow models serve` answering one base64 image per POST /invocations.

For each case, starts the server on a free loopback port for MODEL, sends warm-up requests, then
N timed requests with IMAGE; the model is resolved in the tracking store of the working directory.

    python benchmarks/bench_serving.py --case LABEL MODEL IMAGE [--case ...] [-n 30]
    e.g. --case "demo 64 px" models:/deepfake-detector@champion demo_data/test/fake/fake_00000.jpg
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write


def serve_and_time(model: str, image: str, n: int) -> list[float]:
    """Milliseconds per request for ``n`` requests after 3 warm-ups."""
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(Path(image).read_bytes()).decode()]]}}
        for _ in range(3):
            requests.post(f"{url}/invocations", json=body, timeout=60).raise_for_status()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            requests.post(f"{url}/invocations", json=body, timeout=60).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs=3, action="append", required=True, metavar=("LABEL", "MODEL", "IMAGE"))
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for label, model, image in args.case:
        times = serve_and_time(model, image, args.n)
        rows.append({"case": label, "image": f"{Path(image).name} ({Path(image).stat().st_size // 1024} KB)",
                     "requests": args.n, "median_ms": round(statistics.median(times), 1),
                     "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1), "min_ms": round(times[0], 1)})
    write("serving", rows, notes="One base64 image per request, loopback, after 3 warm-up requests; the "
                                 "latency includes HTTP, JSON, base64 and image decoding, resizing and the model.")


if __name__ == "__main__":
    main()
