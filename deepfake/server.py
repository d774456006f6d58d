"""``deepfake serve``: a web page and a JSON API over one detector, micro-batched, bounded and safe by default.

One process serves (FastAPI on uvicorn):

* ``GET /``: a page (its script and style from ``/static/``, nothing from the internet) where one drops pictures or
  videos and reads each verdict, with the Grad-CAM heat map of an image (Keras models) or a video's per-frame chart;
* ``POST /api/predict``: multipart field ``file`` (one or several; or a raw image/video body), answered with one
  result per file: the fields of a ``deepfake predict`` row plus ``threshold`` and ``kind``, and for a bad file an
  ``error`` object ``{"status", "message"}``; ``?explain=true`` adds an image's heat map as a PNG data URL;
* ``GET /api/model`` (what is served), ``GET /healthz`` (liveness, and how busy it is).

Each upload is checked by its signature (never by name; nothing is read from a server path), its size (413), its
kind (415: not an image or video) and its contents (413 over the pixel limit, 422 unusable), decoded in a thread
pool and scored in micro-batches with every other request's (:mod:`deepfake.batching`). The server holds at most
``queue`` inputs: more are answered 503 with ``Retry-After``. Uploads live in memory or in Starlette's temporary
files, removed when the request ends. Bound to anything but the loopback it needs a bearer token (or an explicit
``--no-auth``); every answer carries the usual security headers. The status of a request is that of its file, or
200 when several were sent and at least one was answered (each file's own is in its ``error``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI reads the routes' annotations from its globals
from fastapi.responses import JSONResponse, Response

from deepfake.batching import Admission, Busy, MicroBatcher
from deepfake.errors import DeepfakeError, TooLarge
from deepfake.images import DEFAULT_MAX_PIXELS
from deepfake.inference import empty_row, media_kind
from deepfake.runtimes import SERVE_RUNTIMES

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from deepfake.inference import Predictor, Prepared

log = logging.getLogger(__name__)

TOKEN_ENV = "DEEPFAKE_SERVE_TOKEN"
ASSETS = ("index.html", "app.js", "app.css")
SECURITY_HEADERS = {
    # Only this server's own script, style and data: URLs (the heat maps); no framing, no referrer, no sniffing.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@dataclass
class ServeConfig:
    """How ``deepfake serve`` listens, batches and limits (its command-line options)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token every /api/ request must carry (None: no token)
    no_auth: bool = False  # allow binding a non-loopback address without a token
    max_batch: int = 32  # rows (pictures, or crops) scored in one call of the model
    max_wait_ms: float = 5.0  # how long the first input of a batch waits for others
    queue: int = 64  # inputs held at once (decoding, waiting or scoring); more are answered 503
    decode_workers: int = 0  # threads decoding uploads; 0: one per CPU core
    max_files: int = 16  # files in one request
    max_image_bytes: int = 50_000_000  # an image larger than this is answered 413
    max_video_bytes: int = 0  # a video larger than this is answered 413; 0: the model's data.video.max_bytes
    max_pixels: int = DEFAULT_MAX_PIXELS  # an image (or video frame) with more pixels is answered 413
    explain: bool = True  # heat maps on request (Keras models)
    runtime: str = "auto"  # what scores: auto (OpenVINO f32 for a Keras model), keras, openvino, openvino-bf16
    cache_dir: str = ".cache/serve"  # where a Keras model's OpenVINO conversion is kept for the next start

    def check(self) -> None:
        """Refuse what would serve unsafely or not at all, naming the option."""
        if self.token is not None and not self.token.strip():
            raise DeepfakeError(f"--token: empty; give a long random token (or set {TOKEN_ENV})")
        if not is_loopback(self.host) and self.token is None and not self.no_auth:
            raise DeepfakeError(f"--host {self.host}: anyone who can reach this address could use the model; give "
                                f"--token TOKEN (or set {TOKEN_ENV}) so that clients must send it, or --no-auth to "
                                "serve it openly")
        if self.runtime not in SERVE_RUNTIMES:
            raise DeepfakeError(f"--runtime {self.runtime}: use one of {', '.join(SERVE_RUNTIMES)}")
        for name in ("max_batch", "queue", "max_files", "max_image_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise DeepfakeError(f"--{name.replace('_', '-')}: must be at least 1")

    def request_limit(self, video_bytes: int) -> int:
        """The largest request body accepted: one video, or ``max_files`` images, plus room for the form."""
        return max(video_bytes, min(self.max_files * self.max_image_bytes, 4 * max(video_bytes, 1))) + 1_000_000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestTooLarge(Exception):
    """The request body went over the limit while it was read."""


def openvino_scorer(predictor: Predictor, cfg: ServeConfig,
                    echo: Callable[[str], None] = lambda line: None) -> Predictor | None:
    """What scores a Keras model's pictures when ``cfg.runtime`` asks for speed: the model converted to OpenVINO by
    :func:`deepfake.export.export`, which checks it against Keras first, kept in ``cfg.cache_dir`` keyed by the
    model's architecture, weights and metadata so that the next start reuses it. ``auto`` and ``openvino`` run it in
    float32 (the Keras model's probabilities to about 1e-7), ``openvino-bf16`` in bfloat16 on CPUs that have it
    (about twice as fast, probabilities within the export check's tolerance). ``None``: score with the model itself
    (runtime keras, an exported model, or a conversion that failed under ``auto``)."""
    import hashlib
    import json

    from deepfake.export import export
    from deepfake.inference import Predictor as Loaded

    if cfg.runtime == "keras" or predictor.is_exported:
        if cfg.runtime.startswith("openvino"):
            raise DeepfakeError(f"--runtime openvino: this model is already exported ({predictor.meta.format}); "
                                "serve it as it is (--runtime auto)")
        return None
    model = predictor.model
    digest = hashlib.sha256(json.dumps([model.get_config(), asdict(predictor.meta)], sort_keys=True,
                                       default=str).encode())
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    fmt = "openvino" if cfg.runtime == "auto" else cfg.runtime
    folder = Path(cfg.cache_dir) / f"{fmt}-{digest.hexdigest()[:20]}"
    try:
        if not (folder / "model.xml").is_file():
            echo(f"Converting the model to {fmt} for faster scoring (once; kept in {folder}) ...")
            report = export(predictor, folder, fmt)
            echo(f"Converted: max abs difference from Keras {report['max_abs_diff']:.1e} on "
                 f"{report['n_checked']} images.")
        scorer = Loaded.from_dir(folder)
    except DeepfakeError as exc:
        if cfg.runtime != "auto":
            raise
        echo(f"Warning: scoring with Keras; the OpenVINO conversion failed ({exc})")
        return None
    scorer.video, scorer.faces = predictor.video, predictor.faces
    return scorer


class Service:
    """The served detector and what answers requests: the decode pool, the micro-batcher, the admission.
    ``scorer`` (:func:`openvino_scorer`) scores the pictures when given; ``predictor`` decodes them, answers and
    draws the heat maps."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig, info: dict[str, Any] | None = None,
                 scorer: Predictor | None = None):
        self.predictor = predictor
        self.scorer = scorer or predictor
        predictor.max_pixels = cfg.max_pixels
        self.cfg = cfg
        self.video_bytes = cfg.max_video_bytes or predictor.video.max_bytes
        self.explains = cfg.explain and not predictor.is_exported
        self.info = self._describe(info or {})
        self.admission = Admission(cfg.queue)
        self.decoders = ThreadPoolExecutor(cfg.decode_workers or os.cpu_count() or 1, thread_name_prefix="decode")
        self.explainer = ThreadPoolExecutor(1, thread_name_prefix="gradcam")
        self.batcher = MicroBatcher(lambda units: self.scorer.score_units(units, cfg.max_batch), cfg.max_batch,
                                    cfg.max_wait_ms / 1000)

    def _describe(self, info: dict[str, Any]) -> dict[str, Any]:
        meta = self.predictor.meta
        return {
            "name": info.get("name"), "version": info.get("version"), "uri": info.get("uri"),
            "run_id": info.get("run_id"), "datasets": meta.datasets or info.get("datasets") or [],
            "metrics": info.get("metrics") or {}, "threshold": meta.threshold,
            "threshold_method": meta.threshold_method, "class_names": list(meta.class_names),
            "backbone": meta.backbone, "image_size": meta.image_size, "format": meta.format, "fit": meta.fit,
            "runtime": self.scorer.meta.format if self.scorer is not self.predictor else "keras",
            "faces": bool(self.predictor.faces.enabled),
            "video": {"frames": self.predictor.video.frames, "aggregate": self.predictor.video.aggregate},
            "explains": self.explains,
            "limits": {"max_files": self.cfg.max_files, "max_image_bytes": self.cfg.max_image_bytes,
                       "max_video_bytes": self.video_bytes, "max_pixels": self.cfg.max_pixels,
                       "max_video_seconds": self.predictor.video.max_seconds,
                       "max_video_frames": self.predictor.video.max_frames},
        }

    def close(self) -> None:
        self.batcher.close()
        self.decoders.shutdown(wait=False, cancel_futures=True)
        self.explainer.shutdown(wait=False, cancel_futures=True)

    async def answer(self, raw: bytes, explain: bool = False) -> tuple[int, dict[str, Any]]:
        """One upload -> (HTTP status, its result)."""
        kind = media_kind(raw)
        if kind is None:
            return _failed(415, "not an image or video in a supported format (JPEG, PNG, BMP, GIF, WebP, TIFF; "
                                "MP4, MOV, WebM, MKV, AVI)")
        limit = self.video_bytes if kind == "video" else self.cfg.max_image_bytes
        if len(raw) > limit:
            return _failed(413, f"{kind} too large: {len(raw) / 1e6:.1f} MB exceeds the limit of {limit / 1e6:.1f} MB")
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self.decoders, self.predictor.prepare, raw)
        except TooLarge as exc:
            return _failed(413, str(exc))
        except (ValueError, OSError) as exc:
            return _failed(422, str(exc))
        probabilities = await asyncio.wrap_future(self.batcher.submit(prepared.units))
        row = self.predictor.answer(prepared, probabilities)
        row |= {"threshold": self.predictor.meta.threshold, "kind": prepared.kind}
        if explain and self.explains and prepared.kind == "image":
            row["gradcam"] = await loop.run_in_executor(self.explainer, self._heat_map, raw, prepared)
        return 200, row

    def _heat_map(self, raw: bytes, prepared: Prepared) -> str:
        """The Grad-CAM overlay of the picture an image is scored from, as a PNG data URL."""
        from deepfake.explain import grad_cam, overlay
        from deepfake.media import encode_png

        if prepared.media is not None:  # face crops: the (middle) face
            pictures = self.predictor.decode_pictures(prepared.media)
            pixels = pictures[len(pictures) // 2]
        else:
            pixels = self.predictor.decode_bytes(raw) if self.predictor.crop else prepared.units[0][0]
        heat, _ = grad_cam(self.predictor, pixels)
        return "data:image/png;base64," + base64.b64encode(encode_png(overlay(pixels, heat))).decode("ascii")


def _failed(status: int, message: str) -> tuple[int, dict[str, Any]]:
    row = empty_row()
    row["error"] = {"status": status, "message": message}
    return status, row


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request whose body is (or says it will be) over ``limit`` bytes is answered 413, before
    more of it is read."""

    def __init__(self, app: Callable, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _error(413, too_large_message(self.limit))(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise RequestTooLarge
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every answer, and ``Cache-Control: no-store`` on the API's."""

    def __init__(self, app: Callable):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers + ([(b"cache-control", b"no-store")] if scope["path"].startswith("/api/") else [])

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def too_large_message(limit: int) -> str:
    return f"request too large: over the limit of {limit / 1e6:.0f} MB"


def create_app(predictor: Predictor, cfg: ServeConfig | None = None, info: dict[str, Any] | None = None,
               scorer: Predictor | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor`` (``info``: what the registry says of it, for the page;
    ``scorer``: what scores its pictures, :func:`openvino_scorer`)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    cfg = cfg or ServeConfig()
    cfg.check()
    service = Service(predictor, cfg, info, scorer)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="deepfake", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    assets = {name: resources.files("deepfake").joinpath("assets", "serve", name).read_bytes() for name in ASSETS}
    types = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8",
             "css": "text/css; charset=utf-8"}

    limit = cfg.request_limit(service.video_bytes)
    app.add_middleware(BodyLimit, limit=limit)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so that BodyLimit's answers carry the headers too

    @app.exception_handler(RequestTooLarge)
    async def too_large(_request: Request, _exc: RequestTooLarge) -> JSONResponse:
        return _error(413, too_large_message(limit))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(str(e.get("msg", e)) for e in exc.errors()) or "invalid request")

    def authorised(request: Request) -> bool:
        if cfg.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), cfg.token.encode())

    def unauthorised() -> JSONResponse:
        return _error(401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                      {"WWW-Authenticate": "Bearer"})

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(assets["index.html"], media_type=types["html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets or name == "index.html":
            return _error(404, "no such file")
        return Response(assets[name], media_type=types[name.rsplit(".", 1)[1]])

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "held": service.admission.held, "queue": cfg.queue,
                "batches": service.batcher.batches, "pictures_scored": service.batcher.rows}

    @app.get("/api/model")
    async def model(request: Request) -> Any:
        if not authorised(request):
            return unauthorised()
        return service.info

    @app.post("/api/predict")
    async def predict(request: Request, explain: bool = False) -> Any:
        if not authorised(request):
            return unauthorised()
        busy = {"Retry-After": str(service.admission.retry_after)}
        if service.admission.full():
            return _error(503, "busy: too many pictures waiting; try again shortly", busy)
        uploads = await _read_uploads(request, cfg.max_files)
        if isinstance(uploads, str):
            return _error(422, uploads)
        try:
            service.admission.acquire(len(uploads))
        except Busy:
            return _error(503, "busy: too many pictures waiting; try again shortly", busy)
        try:
            answers = await asyncio.gather(*(service.answer(raw, explain) for raw in uploads))
        finally:
            service.admission.release(len(uploads))
        statuses = [status for status, _ in answers]
        status = 200 if 200 in statuses else statuses[0]
        body = {"model": {k: service.info[k] for k in ("name", "version", "threshold")},
                "results": [row for _, row in answers]}
        return JSONResponse(body, status_code=status)

    return app


async def _read_uploads(request: Request, max_files: int) -> list[bytes] | str:
    """The uploaded files' bytes (multipart field ``file``, or the raw body), or why there are none."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        body = await request.body()
        return [body] if body else "no file: send the picture(s) as multipart form field 'file' (or as the body)"
    async with request.form(max_files=max_files, max_fields=16) as form:
        files = [f for f in form.getlist("file") if not isinstance(f, str)]
        if not files:
            return "no file: send the picture(s) as multipart form field 'file'"
        return [await f.read() for f in files]


def serve_forever(predictor: Predictor, cfg: ServeConfig, info: dict[str, Any] | None = None,
                  scorer: Predictor | None = None) -> None:
    """Serve until interrupted (uvicorn; at most ``4 * queue`` connections, more are answered 503)."""
    import uvicorn

    app = create_app(predictor, cfg, info, scorer)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", server_header=False,
                limit_concurrency=4 * cfg.queue, timeout_keep_alive=5)
