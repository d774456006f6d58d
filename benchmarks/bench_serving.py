"""Serving latency: `mlflow models serve` answering one base64 image per POST /invocations.

Starts the server on a free loopback port for MODEL_URI (default the registered champion in
the tracking store of the working directory), sends warm-up requests, then N timed requests.

    python benchmarks/bench_serving.py [--model models:/deepfake-detector@champion] [--image IMG] [-n 20]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/deepfake-detector@champion")
    parser.add_argument("--image", required=True, help="an image file to send")
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", args.model, "--env-manager",
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
                                    "data": [[base64.b64encode(Path(args.image).read_bytes()).decode()]]}}
        for _ in range(3):
            requests.post(f"{url}/invocations", json=body, timeout=60).raise_for_status()
        times = []
        for _ in range(args.n):
            start = time.perf_counter()
            requests.post(f"{url}/invocations", json=body, timeout=60).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    finally:
        server.terminate()
        server.wait(timeout=30)
    times.sort()
    write("serving", [{"requests": args.n, "median_ms": round(statistics.median(times), 1),
                       "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1), "min_ms": round(times[0], 1)}],
          notes=f"One base64 image ({Path(args.image).name}) per request to {args.model}, loopback, after 3 warm-up requests.")


if __name__ == "__main__":
    main()
