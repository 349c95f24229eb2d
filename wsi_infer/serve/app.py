"""The HTTP API (FastAPI): ``POST /v1/infer``, ``GET /v1/models``, ``GET /healthz``,
``GET /metrics``; the OpenAPI schema is at ``/openapi.json`` and browsable at ``/docs``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import (
    Cancelled,
    MissingMppError,
    ModelError,
    QueueFullError,
    UnknownModelError,
    WsiInferError,
)
from ..plan import MAX_SLIDE_SIDE
from .batcher import Ticket
from .encode import MEDIA_TYPES, AnswerDtype, AnswerFormat, answer_headers, encode_answer
from .metrics import CONTENT_TYPE
from .regions import predict_served_region
from .security import resolve_slide, scrub, token_matches
from .service import Service

log = logging.getLogger("wsi_infer.serve")

#: Paths reported by name in the request metrics (anything else is "other").
KNOWN_PATHS = frozenset({"/v1/infer", "/v1/models", "/healthz", "/metrics", "/docs",
                         "/openapi.json"})


class InferRequest(BaseModel):
    """A region of a slide, in level-0 pixels."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"slide": "cases/case-001.svs", "x": 20000, "y": 12000, "width": 2048, "height": 2048,
         "model": "tissue"}]})

    slide: str = Field(min_length=1, max_length=4096,
                       description="slide path relative to the service's slides root, '/'-separated")
    x: int = Field(ge=-MAX_SLIDE_SIDE, le=MAX_SLIDE_SIDE, description="left edge, level-0 px")
    y: int = Field(ge=-MAX_SLIDE_SIDE, le=MAX_SLIDE_SIDE, description="top edge, level-0 px")
    width: int = Field(gt=0, le=MAX_SLIDE_SIDE, description="level-0 px")
    height: int = Field(gt=0, le=MAX_SLIDE_SIDE, description="level-0 px")
    model: str | None = Field(None, description="model name (GET /v1/models); default: the "
                              "first loaded model")
    mpp: float | None = Field(None, gt=0, le=1000, description="the slide's level-0 µm/px, "
                              "overriding its metadata (needed when it has none)")


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(description="what is wrong, in words")
    details: list[dict[str, Any]] | None = Field(None, description="per-field problems of an "
                                                 "invalid request")


class ServeError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


_ERROR_TEXTS = {
    400: "malformed JSON, or a region outside the slide",
    401: "missing or wrong bearer token",
    403: "slide path outside the slides root",
    404: "no such slide or model",
    413: "region larger than --max-region-pixels",
    422: "invalid fields, or a slide that cannot be read (no mpp, not a slide)",
    503: "queue full: retry after Retry-After seconds",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in _ERROR_TEXTS.items()}


def create_app(service: Service) -> FastAPI:
    """The FastAPI application answering for ``service`` (which it closes on shutdown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="wsi-infer", version=__version__, lifespan=lifespan,
                  description="Segmentation model probabilities for regions of whole-slide "
                  "images, with auto-batching. See docs/serve.md.")
    app.add_middleware(RequestMetrics, service=service)
    _add_error_handlers(app, service)
    auth = [Depends(_token_check(service.config.token))]

    @app.post("/v1/infer", dependencies=auth, responses={
        200: {"content": {m: {} for m in MEDIA_TYPES.values()}, "description":
              "probabilities (classes, h, w) of the output pixels covering the region at the "
              "model's resolution; placement in the X-Origin-*/X-Mpp-* headers"}, **_ERRORS})
    async def infer(
        body: InferRequest, request: Request,
        format: Annotated[AnswerFormat, Query(description="npy (default), raw C-order bytes, "
                                              "or png (RGBA overlay)")] = "npy",
        dtype: Annotated[AnswerDtype, Query(description="float32 0..1 or uint8 0..255")] = "float32",
        class_name: Annotated[str | None, Query(alias="class", description="png: one class "
                                                "only")] = None,
    ) -> Response:
        """Predict the level-0 region ``(x, y, width, height)`` of a slide: exactly the values
        ``wsi-infer SLIDE --no-tissue-mask --dtype float32`` writes at those pixels."""
        try:
            content, headers = await _infer(service, request, body, format, dtype, class_name)
        except ServeError:
            raise
        except Exception as exc:  # expected failures become 4xx/503; the rest 500 (logged)
            status, message, extra = error_status(exc)
            if status == 500:
                log.error("POST /v1/infer failed: %s", exc, exc_info=exc)
            raise ServeError(status, message, extra) from exc
        return Response(content, media_type=MEDIA_TYPES[format], headers=headers)

    @app.get("/v1/models", dependencies=auth, responses=_ERRORS)
    async def models() -> list[dict[str, Any]]:
        """The loaded models, their classes, resolution and batching settings."""
        return [_describe(service, name) for name in service.models]

    @app.get("/healthz", responses={503: {"description": "a model's batcher has stopped"}})
    async def healthz() -> JSONResponse:
        """Liveness (no token needed): the loaded models' queue depths; 503 if a model's
        batching thread has stopped."""
        ok = all(m.batcher.alive for m in service.models.values())
        body = {"status": "ok" if ok else "stopped", "version": __version__,
                "queue_depth": {n: m.batcher.depth for n, m in service.models.items()}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=auth, response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}}, **_ERRORS})
    async def metrics() -> Response:
        """Prometheus text format: requests, queue depth, batch-size histogram, queue-wait
        and compute time per model."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return app


async def _infer(service: Service, request: Request, body: InferRequest, fmt: AnswerFormat,
                 dtype: AnswerDtype, class_name: str | None) -> tuple[bytes, dict[str, str]]:
    """Check the request, then predict and encode in a region thread, dropping the request's
    queued tiles if its client goes away."""
    model = service.model(body.model)
    path = resolve_slide(service.root, body.slide)
    if service.pending >= service.config.request_threads + service.config.max_queue:
        raise ServeError(503, f"{service.pending} requests in progress; retry shortly",
                         {"Retry-After": "1"})
    ticket = Ticket()
    work = partial(_answer, service, model.name, path, body, ticket, fmt, dtype, class_name)
    service.pending += 1
    try:
        future = asyncio.get_running_loop().run_in_executor(service.executor, work)
        result: tuple[bytes, dict[str, str]] = await _until_done_or_gone(
            future, request, lambda: model.batcher.cancel(ticket))
        return result
    finally:
        service.pending -= 1


def _answer(service: Service, model_name: str, path: Any, body: InferRequest, ticket: Ticket,
            fmt: AnswerFormat, dtype: AnswerDtype,
            class_name: str | None) -> tuple[bytes, dict[str, str]]:
    """Predict and encode (in a region thread)."""
    model = service.models[model_name]
    prediction = predict_served_region(
        model, path, body.x, body.y, body.width, body.height, ticket=ticket,
        resources=service.resources, mpp=body.mpp,
        tiling=service.config.tiling, max_output_pixels=service.config.max_region_pixels)
    content = encode_answer(prediction, fmt, dtype, class_name)
    return content, answer_headers(prediction, fmt, dtype, ticket)


async def _until_done_or_gone(future: asyncio.Future[Any], request: Request,
                              on_gone: Callable[[], object]) -> Any:
    """The result of ``future``; if the client disconnects first, ``on_gone()`` is called
    (which makes the work fail fast) and the work's outcome awaited.

    The body has been read already, so the next ASGI message is ``http.disconnect``: one task
    waits for it (no polling)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        on_gone()

    watcher = asyncio.ensure_future(watch())
    try:
        return await future
    finally:
        watcher.cancel()


def _describe(service: Service, name: str) -> dict[str, Any]:
    loaded = service.models[name]
    card, batcher, tiling = loaded.card, loaded.batcher, service.config.tiling
    return {
        "name": name, "version": card.version, "description": card.description,
        "sha256": card.sha256, "mpp": card.mpp,
        "classes": [{"name": c.name, "color": c.color} for c in card.classes],
        "activation": card.activation, "tile_size": tiling.tile_size or card.input.tile_size,
        "halo": card.receptive_margin if tiling.halo is None else tiling.halo,
        "fixed_input_size": list(card.input.size) if card.input.size else None,
        "default": name == next(iter(service.models)),
        "batching": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait_s * 1000,
                     "max_queue": batcher.max_queue},
    }


_BEARER = HTTPBearer(auto_error=False, description="--token / WSI_INFER_TOKEN, when set")


def _token_check(token: str | None) -> Callable[..., None]:
    def check(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                     Depends(_BEARER)]) -> None:
        given = credentials.credentials if credentials is not None else None
        if not token_matches(token, given):
            raise ServeError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                             {"WWW-Authenticate": "Bearer"})

    return check


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    def answer(status: int, message: str, headers: dict[str, str] | None = None,
               details: list[dict[str, Any]] | None = None) -> JSONResponse:
        body: dict[str, Any] = {"error": scrub(message, service.root)}
        if details is not None:
            body["details"] = details
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return answer(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(*_validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return answer(500, f"internal error ({type(exc).__name__}); see the service log")


def _validation_message(errors: Any) -> tuple[int, str, None, list[dict[str, Any]]]:
    """400 for malformed JSON, else 422; a message naming each bad field."""
    details = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body",
                "problem": e.get("msg", ""), "type": e.get("type", "")} for e in errors]
    for e in errors:
        if e.get("type") == "json_invalid":
            where = e.get("loc", ("body", "?"))[-1]
            reason = (e.get("ctx") or {}).get("error", "")
            return 400, f"malformed JSON at character {where}: {reason}", None, details
    if any(d["field"] == "body" and d["type"] == "model_attributes_type" for d in details):
        return 422, ("the request body must be a JSON object, sent with Content-Type: "
                     "application/json"), None, details
    listing = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
    return 422, f"invalid request: {listing}", None, details


def error_status(exc: BaseException) -> tuple[int, str, dict[str, str] | None]:
    """HTTP status, message and headers for an exception raised while answering: each of our
    errors carries its status (``wsi_infer.errors``); anything else is a 500."""
    if isinstance(exc, QueueFullError):
        return exc.http_status, str(exc), {"Retry-After": str(int(exc.retry_after_s))}
    if isinstance(exc, Cancelled):
        return exc.http_status, "client closed the request; its queued tiles were dropped", None
    if isinstance(exc, MissingMppError):
        return exc.http_status, f"{exc} (in a request: give \"mpp\")", None
    if isinstance(exc, ModelError) and not isinstance(exc, UnknownModelError):
        return exc.http_status, f"the model failed: {exc}", None
    if isinstance(exc, WsiInferError):
        return exc.http_status, str(exc), None
    return 500, f"internal error ({type(exc).__name__}); see the service log", None


class RequestMetrics:
    """ASGI middleware counting requests by path and status, and their time."""

    def __init__(self, app: Callable[..., Awaitable[None]], service: Service) -> None:
        self.app = app
        self.metrics = service.metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Awaitable[Any]],
                       send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.observe_request(path, status[0], time.perf_counter() - started)
