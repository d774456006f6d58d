"""Helpers shared by several test modules (test modules never import each other)."""

import struct
import zlib
from pathlib import Path


def png_bomb(path: Path, width: int = 50000, height: int = 50000) -> Path:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
    path.write_bytes(body)
    return path


# The tiny model every test builds or trains unless it tests a size or backbone: 32 px, random weights, an 8-unit
# head, no feature cache. `tiny_config(*sets)` is it as a Config; later KEY=VALUE settings win.
TINY = ("data.image_size=32", "data.batch_size=8", "model.weights=none", "model.head_units=[8]",
        "train.feature_cache=false")
# The same as `deepfake train`/`tune` options, for tests that run the command line.
TINY_ARGS = ("--image-size", "32", "--batch-size", "8", "--weights", "none", "--set", "model.head_units=[8]",
             "--set", "train.feature_cache=false")


def tiny_config(*sets: str, data: object = None, out: object = None):
    """The tiny configuration (:data:`TINY`), on dataset ``data`` with outputs under ``out``, then ``sets``."""
    from deepfake import config as C

    where = [f"data.path={data}"] * (data is not None) + [f"train.output_dir={out}"] * (out is not None)
    return C.resolve(set_args=[*TINY, *where, *sets])


def copy_detector(source: Path, folder: Path, **meta: object) -> Path:
    """A copy of the saved detector in ``source`` at ``folder``, with the given ModelMeta fields changed."""
    import shutil

    from deepfake.inference import META_FILE, ModelMeta

    folder = Path(folder)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    ModelMeta(**{**vars(ModelMeta.load(Path(source) / META_FILE)), **meta}).save(folder / META_FILE)
    return folder


# The MLflow experiment of the tuning tests' studies (:func:`tune_args`).
TUNE_EXPERIMENT = "tune-test"
# A small search space for tuning tests, ``SEARCH_SPACE % sampler``: dropout and learning rate, no pruner.
SEARCH_SPACE = ("params:\n"
                "  model.dropout: {type: float, low: 0.0, high: 0.5}\n"
                "  train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                "sampler: {type: %s}\n"
                "pruner: {type: none}\n")


def tune_args(env, study: str, n: int, *extra: str, space: object = None, storage: str | None = None,
              uri: str | None = None, register: bool = False) -> list[str]:
    """``deepfake tune`` arguments for ``n`` trials of ``study`` in the ``env`` fixture (its dataset, Optuna storage,
    MLflow store and search space; or the ``space``, ``storage`` and ``uri`` given), in the experiment
    :data:`TUNE_EXPERIMENT`, outputs under ``env.tmp / "out"``, registering the best trial's model only with
    ``register``; then ``extra``."""
    return ["tune", "--data", env.data, "--study-name", study, "--storage", storage or env.storage,
            "--n-trials", str(n), "--search-space", str(space or env.space), "--tracking-uri", uri or env.uri,
            "--experiment", TUNE_EXPERIMENT, "--output-dir", str(env.tmp / "out"),
            *(() if register else ("--no-register",)), *extra]


class RunningServer:
    """An ASGI app served by uvicorn in a thread on a free loopback port (``url``), for tests that need real HTTP:
    concurrent clients, streamed bodies, a browser. ``with RunningServer(app) as server: ...``."""

    def __init__(self, app: object, host: str = "127.0.0.1"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on"))
        self.url = ""

    def __enter__(self) -> "RunningServer":
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
