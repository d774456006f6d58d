"""`deepfake serve` against `mlflow models serve`, the same model, the same uploads, side by side; then a soak.

For each case, both servers are started on free loopback ports with the same registered model; a bounded local
load generator (``-c`` threads, one HTTP session each) sends ``-n`` image uploads after a warm-up: to MLflow as its
users call it (one base64 image per JSON ``dataframe_split`` POST to /invocations), to `deepfake serve` as a
multipart upload to /api/predict. Recorded: requests per second, p50/p95 latency, non-2xx answers and the peak
resident memory of the server's whole process tree (sampled every 0.2 s). The soak sends ``--soak`` requests to
`deepfake serve`, 10 % of them malformed (random bytes, a cut JPEG, text, an empty body, a PNG signature before
garbage): no 5xx, the server up at the end, and its memory after warm-up against its memory at the end.

    python benchmarks/bench_serve.py                       # after `make demo`: the demo champion, and a 224 px ResNet50
    python benchmarks/bench_serve.py -n 24 --soak 60 --no-224   # a quick check

The demo champion is read from the working directory's tracking store (sqlite:///mlflow.db); the 224 px case builds
a ResNet50 with random weights (the speed does not depend on them) and registers it in a temporary store.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DEFAULT_DATA, gmacs, write

SERVE_ARGS = ("--max-batch", "32", "--max-wait-ms", "5")


# --------------------------------------------------------------------------- memory of a process tree


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB."""
    tree, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class MemorySampler:
    """The peak (and the latest) resident memory of a process tree, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.latest = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.latest = tree_rss_mib(self.pid)
            self.peak = max(self.peak, self.latest)
            self._stop.wait(0.2)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset_peak(self) -> None:
        self.peak = self.latest


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, model: str, tracking_uri: str, extra: tuple[str, ...] = (), cwd: Path | None = None
          ) -> tuple[subprocess.Popen, str]:
    """Start one server for ``model`` (``extra``: more `deepfake serve` options) in ``cwd``; return it and its URL
    once it answers."""
    import requests

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if kind == "mlflow":
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
        health = "/ping"
    else:
        cmd = [sys.executable, "-c", "from deepfake.cli import main; main()", "serve", "--model", model,
               "--tracking-uri", tracking_uri, "--port", str(port), *SERVE_ARGS, *extra]
        health = "/healthz"
    server = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{kind} server exited with code {server.returncode}: {' '.join(cmd)}")
        try:
            if requests.get(url + health, timeout=2).status_code == 200:
                return server, url
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"{kind} server did not answer within 600 s")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


# --------------------------------------------------------------------------- load


def request_function(kind: str, url: str):
    """``send(session, body) -> status``: one upload as each server's users send it."""
    if kind == "mlflow":
        def send(session, body: bytes) -> int:
            payload = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(body).decode()]]}}
            return session.post(f"{url}/invocations", json=payload, timeout=300).status_code
    else:
        def send(session, body: bytes) -> int:
            return session.post(f"{url}/api/predict", files={"file": ("upload", body)}, timeout=300).status_code
    return send


def load(send, bodies: list[bytes], concurrency: int) -> tuple[list[float], Counter, float]:
    """Send every body once, ``concurrency`` at a time (each thread its own session): (latencies in ms, status
    counts, wall seconds)."""
    import requests

    local = threading.local()
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()

    def one(body: bytes) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        start = time.perf_counter()
        try:
            status = send(local.session, body)
        except requests.RequestException as exc:
            status = type(exc).__name__
        elapsed = (time.perf_counter() - start) * 1000
        with lock:
            latencies.append(elapsed)
            statuses[status] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    return sorted(latencies), statuses, time.perf_counter() - start


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def malformed(i: int, good: bytes) -> bytes:
    """The ``i``-th kind of bad upload (five kinds in turn)."""
    kinds = [os.urandom(2000), good[: len(good) // 3], b"just some text, not a picture\n" * 20, b"",
             b"\x89PNG\r\n\x1a\n" + os.urandom(500)]
    return kinds[(i // 10) % len(kinds)]


# --------------------------------------------------------------------------- models


def model_224(folder: Path) -> tuple[str, str, float]:
    """A 224 px ResNet50 detector (random weights) registered in a new store under ``folder``: (URI, tracking URI,
    GMACs per image)."""
    from deepfake import config as C
    from deepfake import tracking
    from deepfake.inference import ModelMeta, example_frames, pip_requirements, pyfunc_artifacts, save_detector
    from deepfake.model import build_model

    uri_store = f"sqlite:///{folder}/mlflow.db"
    cfg = C.resolve(set_args=["data.image_size=224", "model.weights=none", f"tracking.tracking_uri={uri_store}",
                              "tracking.experiment=bench-serve"])
    model = build_model(cfg)
    meta = ModelMeta(image_size=224)
    saved = save_detector(model, meta, folder / "model")
    tracking.setup(cfg.tracking)
    with tracking.start_run("bench-serve"):
        logged = tracking.log_model(pyfunc_artifacts(saved), *example_frames(meta), pip_requirements(meta))
    version = tracking.register_model(logged, "bench-serve-224")
    return f"models:/bench-serve-224/{version}", uri_store, gmacs(model)


def champion_gmacs(uri: str, tracking_uri: str) -> float:
    from deepfake import tracking
    from deepfake.config import TrackingConfig
    from deepfake.inference import load_predictor

    tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    return gmacs(load_predictor(tracking.local_model(uri)).model)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="timed uploads per server")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--soak", type=int, default=2000, help="soak requests against deepfake serve (0: none)")
    parser.add_argument("--images", type=Path, default=DEFAULT_DATA, help="folder of JPEGs to upload")
    parser.add_argument("--champion", default="models:/deepfake-detector@champion")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--no-224", action="store_true", help="skip the 224 px ResNet50 case")
    args = parser.parse_args()

    files = sorted(args.images.rglob("*.jpg"))[:50] if args.images.is_dir() else []
    if not files:
        sys.exit(f"--images {args.images}: no .jpg files there; give a folder of JPEG pictures")
    bodies = [p.read_bytes() for p in files]
    timed = [bodies[i % len(bodies)] for i in range(args.n)]
    warm = bodies[: 2 * args.concurrency]
    temp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    cases = [(f"demo champion, {args.champion}", args.champion, args.tracking_uri,
              champion_gmacs(args.champion, args.tracking_uri))]
    if not args.no_224:
        cases.append(("ResNet50, 224 px (random weights)", *model_224(temp)))
    rows = []
    soak_url = soak_model = None
    servers = [("mlflow models serve", "mlflow", ()), ("deepfake serve", "deepfake", ()),
               ("deepfake serve --runtime openvino-bf16", "deepfake", ("--runtime", "openvino-bf16"))]
    for label, model, tracking_uri, work in cases:
        baseline = None
        for name, kind, extra in servers:
            if kind == "deepfake":  # a first start converts the model (kept in .cache/serve); measure the next one
                stop(start(kind, model, tracking_uri, extra, temp)[0])
            server, url = start(kind, model, tracking_uri, extra, temp)
            try:
                send = request_function(kind, url)
                with MemorySampler(server.pid) as memory:
                    load(send, warm, args.concurrency)
                    latencies, statuses, wall = load(send, timed, args.concurrency)
                ok = sum(v for k, v in statuses.items() if isinstance(k, int) and 200 <= k < 300)
                baseline = baseline or args.n / wall
                rows.append({"case": label, "server": name,
                             "requests": args.n, "concurrency": args.concurrency,
                             "requests_per_s": round(args.n / wall, 2),
                             "p50_ms": round(statistics.median(latencies), 1),
                             "p95_ms": round(percentile(latencies, 0.95), 1),
                             "non_2xx": args.n - ok, "peak_rss_mib": round(memory.peak),
                             "gmacs_per_image": round(work, 3),
                             "gmacs_per_s": round(work * args.n / wall, 1),
                             "speed_up": f"{args.n / wall / baseline:.1f}x"})
            finally:
                stop(server)
        if soak_url is None:  # the soak runs on the first case's model
            soak_url, soak_model = (model, tracking_uri), label
    soak = {}
    if args.soak:
        model, tracking_uri = soak_url
        server, url = start("deepfake", model, tracking_uri, (), temp)
        try:
            send = request_function("deepfake", url)
            requests_ = [malformed(i, bodies[i % len(bodies)]) if i % 10 == 9 else bodies[i % len(bodies)]
                         for i in range(args.soak)]
            warm_n = min(200, args.soak // 4)
            with MemorySampler(server.pid) as memory:
                load(send, requests_[:warm_n], args.concurrency)
                time.sleep(0.5)
                after_warm_up = tree_rss_mib(server.pid)
                memory.reset_peak()
                latencies, statuses, wall = load(send, requests_[warm_n:], args.concurrency)
                time.sleep(0.5)
                at_end = tree_rss_mib(server.pid)
            import requests

            up = requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
        finally:
            stop(server)
        fives = sum(v for k, v in statuses.items() if not isinstance(k, int) or k >= 500)
        soak = {"model": soak_model, "requests": args.soak,
                "malformed": sum(1 for i in range(args.soak) if i % 10 == 9),
                "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}, "server_errors": fives,
                "up_at_end": up, "rss_after_warm_up_mib": round(after_warm_up), "rss_at_end_mib": round(at_end),
                "peak_after_warm_up_mib": round(memory.peak), "requests_per_s": round((args.soak - warm_n) / wall, 1)}
    size_kb = sum(map(len, bodies)) / len(bodies) / 1024
    notes = (f"Uploads: {len(files)} JPEGs from {args.images.name} ({size_kb:.0f} KB on average), cycled; "
             f"{2 * args.concurrency} warm-up requests first. MLflow: one base64 image per JSON "
             "request to /invocations, its default workers. deepfake serve: one multipart upload per request, "
             f"{' '.join(SERVE_ARGS)}, the model converted to OpenVINO at its first start (float32 by default: "
             "the Keras probabilities to ~1e-7; bfloat16 on request), measured on its second start. speed_up: "
             "against mlflow models serve. gmacs_per_s: the model's multiply-accumulates per second the server "
             "delivered (its work per image times images per second). Peak RSS: the server's whole process tree.")
    if soak:
        notes += (f"\n\nSoak ({soak['model']}): {soak['requests']} requests at concurrency {args.concurrency}, "
                  f"{soak['malformed']} malformed (random bytes, a cut JPEG, text, an empty body, a PNG signature "
                  f"before garbage). Answers: {soak['statuses']}; 5xx or failed requests: {soak['server_errors']}; "
                  f"up at the end: {soak['up_at_end']}; resident memory after the first {min(200, args.soak // 4)} "
                  f"requests {soak['rss_after_warm_up_mib']} MiB, peak after that "
                  f"{soak['peak_after_warm_up_mib']} MiB, at the end {soak['rss_at_end_mib']} MiB; "
                  f"{soak['requests_per_s']} requests/s.")
    write("serve", rows, notes=notes, extra={"soak": soak})


if __name__ == "__main__":
    main()
