"""`deepfake serve` against `mlflow models serve`, the same model, the same uploads, side by side; then a soak.

For each case, both servers are started on free loopback ports with the same registered model; a bounded local
load generator (``-c`` threads, one HTTP session each) sends ``-n`` image uploads after a warm-up: to MLflow as its
users call it (one base64 image per JSON ``dataframe_split`` POST to /invocations), to `deepfake serve` as a
multipart upload to /api/predict. Recorded: requests per second, p50/p95 latency, non-2xx answers and the peak
resident memory of the server's whole process tree (sampled every 0.2 s). The soak sends ``--soak`` requests to
`deepfake serve`, 10 % of them malformed (random bytes, a cut JPEG, text, an empty body, a PNG signature before
garbage): no 5xx, the server up at the end, and its memory after warm-up against its memory at the end.

    python benchmarks/bench_serve.py             # after `make demo`: the demo champion, and a 224 px ResNet50
    python benchmarks/bench_serve.py --image-size 64 224 --no-champion   # only random-weight ResNet50s
    python benchmarks/bench_serve.py -n 24 --soak 60 --image-size 64 --no-champion   # a quick check

The demo champion is read from the working directory's tracking store (sqlite:///mlflow.db); each ``--image-size``
case builds a ResNet50 with random weights (``model.weights=none``, no download; the speed does not depend on them)
and registers it in a temporary store, so that both servers load the same ``models:/bench-serve-SIZE/1``. The soak
runs on the first case's model. The exit status is 1 when the soak saw a 5xx (or a failed request) or the server
was down at its end.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
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
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"{kind} server exited with code {server.returncode}: {' '.join(cmd)}")
            try:
                if requests.get(url + health, timeout=2).status_code == 200:
                    return server, url
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{kind} server did not answer within 600 s: {' '.join(cmd)}")
    except BaseException:  # not started (or interrupted): never leave it running
        stop(server)
        raise


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


def random_resnet50(folder: Path, size: int) -> tuple[str, str, float]:
    """A ``size`` px ResNet50 detector (random weights) registered in the store under ``folder``: (URI, tracking URI,
    GMACs per image)."""
    from deepfake import config as C
    from deepfake import tracking
    from deepfake.inference import ModelMeta, example_frames, pip_requirements, pyfunc_artifacts, save_detector
    from deepfake.model import build_model

    uri_store = f"sqlite:///{folder}/mlflow.db"
    cfg = C.resolve(set_args=[f"data.image_size={size}", "model.weights=none", f"tracking.tracking_uri={uri_store}",
                              "tracking.experiment=bench-serve"])
    model = build_model(cfg)
    meta = ModelMeta(image_size=size)
    saved = save_detector(model, meta, folder / f"model-{size}")
    tracking.setup(cfg.tracking)
    with tracking.start_run(f"bench-serve-{size}"):
        logged = tracking.log_model(pyfunc_artifacts(saved), *example_frames(meta), pip_requirements(meta))
    version = tracking.register_model(logged, f"bench-serve-{size}")
    return f"models:/bench-serve-{size}/{version}", uri_store, gmacs(model)


def absolute_store(uri: str) -> str:
    """A relative SQLite store (``sqlite:///mlflow.db``) as an absolute one, so that it means the same from any
    working directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def champion_gmacs(uri: str, tracking_uri: str) -> float:
    from deepfake import tracking
    from deepfake.config import TrackingConfig
    from deepfake.inference import load_predictor

    tracking.setup(TrackingConfig(tracking_uri=tracking_uri))
    try:
        local = tracking.local_model(uri)
    except Exception as exc:  # noqa: BLE001 - any failure to resolve it means the same to the user
        sys.exit(f"--champion {uri}: not found in {tracking_uri} ({type(exc).__name__}: {exc}); run `make demo` "
                 "first, or pass --no-champion")
    return gmacs(load_predictor(local).model)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="timed uploads per server")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--soak", type=int, default=2000, help="soak requests against deepfake serve (0: none)")
    parser.add_argument("--images", type=Path, default=DEFAULT_DATA, help="folder of JPEGs to upload")
    parser.add_argument("--champion", default="models:/deepfake-detector@champion")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--no-champion", action="store_true", help="skip the demo champion case")
    parser.add_argument("--image-size", type=int, nargs="*", default=[224], metavar="S",
                        help="a random-weight ResNet50 case per size (none: only the champion)")
    args = parser.parse_args()

    if not args.images.is_dir():
        sys.exit(f"--images {args.images}: no such folder; give a folder of JPEG pictures (searched recursively)")
    files = sorted(args.images.rglob("*.jpg"))[:50]
    if not files:
        sys.exit(f"--images {args.images}: no .jpg files there; give a folder of JPEG pictures")
    if args.no_champion and not args.image_size:
        sys.exit("nothing to measure: --no-champion and no --image-size")
    args.tracking_uri = absolute_store(args.tracking_uri)  # the servers run in a temporary folder
    temp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        soak = run(args, files, temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    if soak and (soak["server_errors"] or not soak["up_at_end"]):
        sys.exit(f"soak failed: {soak['server_errors']} 5xx or failed requests, up at the end: {soak['up_at_end']}")


def run(args: argparse.Namespace, files: list[Path], temp: Path) -> dict:
    """Measure every case, soak, write the results; return the soak's figures."""
    bodies = [p.read_bytes() for p in files]
    timed = [bodies[i % len(bodies)] for i in range(args.n)]
    warm = bodies[: 2 * args.concurrency]
    cases = []
    if not args.no_champion:
        cases.append((f"demo champion, {args.champion}", args.champion, args.tracking_uri,
                      champion_gmacs(args.champion, args.tracking_uri)))
    for size in args.image_size:
        cases.append((f"ResNet50, {size} px (random weights)", *random_resnet50(temp, size)))
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
                _, warm_statuses, _ = load(send, requests_[:warm_n], args.concurrency)
                time.sleep(0.5)
                after_warm_up = tree_rss_mib(server.pid)
                memory.reset_peak()
                latencies, statuses, wall = load(send, requests_[warm_n:], args.concurrency)
                time.sleep(0.5)
                at_end = tree_rss_mib(server.pid)
            import requests

            try:
                up = requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
            except (requests.RequestException, ValueError, KeyError):
                up = False
        finally:
            stop(server)
        statuses += warm_statuses  # every answer counts, the warm-up's too
        fives = sum(v for k, v in statuses.items() if not isinstance(k, int) or k >= 500)
        soak = {"model": soak_model, "requests": args.soak,
                "malformed": sum(1 for i in range(args.soak) if i % 10 == 9),
                "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}, "server_errors": fives,
                "up_at_end": up, "rss_after_warm_up_mib": round(after_warm_up), "rss_at_end_mib": round(at_end),
                "rss_growth_mib": round(at_end - after_warm_up, 1),
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
                  f"up at the end: {soak['up_at_end']}; resident memory after the first {warm_n} "
                  f"requests {soak['rss_after_warm_up_mib']} MiB, peak after that "
                  f"{soak['peak_after_warm_up_mib']} MiB, at the end {soak['rss_at_end_mib']} MiB (growth "
                  f"{soak['rss_growth_mib']} MiB); "
                  f"{soak['requests_per_s']} requests/s.")
    write("serve", rows, notes=notes, extra={"soak": soak})
    return soak


if __name__ == "__main__":
    main()
