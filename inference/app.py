"""The HTTP service: `create_app(settings)` builds a FastAPI app whose lifespan loads and keeps the model, with its
routes (probes, `/metrics`, the OpenAI endpoints), error handlers and request metrics. A completion request is read
and validated here, turned into a job by `inference.jobs` and answered by `inference.responses`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.canary import CHALLENGER
from inference.engine import Engine, EngineClosedError, QueueFullError
from inference.errors import ApiError, api_error_handler, http_error_handler
from inference.jobs import plan_job
from inference.metrics import Metrics
from inference.responses import respond, stream_events
from inference.schemas import (
    CanaryStatus,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    inline_json_schema,
)
from inference.service import ModelManager, Served
from inference.settings import Settings
from workloads.contracts import TEST_FAULT_TAG

log = logging.getLogger(__name__)

ROUTES = ("/livez", "/readyz", "/metrics", "/canary", "/v1/models", "/v1/completions")
RETRY_AFTER_S = "1"
VERSION_HEADER = "X-Model-Version"
"""The version that served the request (on every response of a request routed to a model, errors included)."""
ALIAS_HEADER = "X-Model-Alias"
"""Its role: `champion` or `challenger`."""
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 429, 500, 503, 504)
}


class MetricsMiddleware:
    """Counts requests by route and status and times them until the last byte (streams included), labelled with the
    version and alias role the response's headers name: the labels are what the client was told."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "unmatched"
        status = 500
        served = {"version": "", "alias": ""}
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-model-version":
                        served["version"] = value.decode("latin-1")
                    elif name == b"x-model-alias":
                        served["alias"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(route=route, status=str(status), **served).inc()
            self.metrics.latency.labels(route=route, **served).observe(time.perf_counter() - started)


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        manager = ModelManager(settings, metrics)
        app.state.manager = manager
        manager.start()
        try:
            yield
        finally:
            await manager.stop()

    app = FastAPI(
        title="ml-platform inference",
        summary="OpenAI-compatible completions from the platform's GPT model",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.draining = False
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/livez", tags=["probes"])
    async def livez() -> dict[str, str]:
        """The process answers; says nothing about the model, so a slow model download never restarts it."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"], responses={503: {"description": "loading or draining"}})
    async def readyz(request: Request) -> JSONResponse:
        """200 once a model is loaded; 503 before that and while draining after SIGTERM."""
        manager: ModelManager = request.app.state.manager
        engine = manager.champion
        if request.app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if engine is None:
            return JSONResponse({"status": "loading", "reason": manager.last_error}, status_code=503)
        return JSONResponse({"status": "ready", "model": engine.loaded.name, "version": engine.loaded.version})

    @app.get("/metrics", tags=["probes"])
    async def metrics(request: Request) -> Response:
        state = request.app.state
        state.metrics.ready.set(int(state.manager.champion is not None and not state.draining))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/canary", tags=["probes"])
    async def canary(request: Request) -> CanaryStatus:
        """The canary of this replica: champion and challenger versions, the challenger's share, and why a
        challenger is not served (refused, unset, or the canary is off)."""
        manager: ModelManager = request.app.state.manager
        return manager.canary_status()

    @app.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> ModelList:
        """The served model id (routed between champion and challenger), then the challenger's own id while a
        canary serves one."""
        manager: ModelManager = request.app.state.manager
        served = [(manager.served_name, _current_engine(manager))]
        if manager.challenger is not None:
            served.append((manager.challenger_id, manager.challenger))
        return ModelList(
            data=[
                ModelCard(id=model_id, created=engine.created, owned_by="ml-platform", version=engine.loaded.version)
                for model_id, engine in served
            ]
        )

    @app.post(
        "/v1/completions",
        tags=["openai"],
        response_model=CompletionResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": inline_json_schema(CompletionRequest)}},
            }
        },
    )
    async def create_completion(request: Request) -> Response:
        """Completions for one prompt or a list of prompts; `"stream": true` answers with server-sent events. The
        response's X-Model-Version and X-Model-Alias headers name the version that served it."""
        started = time.perf_counter()
        settings: Settings = request.app.state.settings
        body = await _read_body(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, f"the body must be JSON sent as Content-Type: application/json, not {content_type!r}")
        try:
            completion = CompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            raise ApiError.from_validation(list(exc.errors())) from None
        manager: ModelManager = request.app.state.manager
        served = _choose(manager, completion)
        labels = {VERSION_HEADER: served.engine.loaded.version, ALIAS_HEADER: served.role}
        try:
            response = await _complete(request, completion, served, started)
        except ApiError as exc:
            exc.headers = {**(exc.headers or {}), **labels}
            raise
        response.headers.update(labels)
        return response


def _choose(manager: ModelManager, completion: CompletionRequest) -> Served:
    """The engine for the request's `model`: the served id is routed by the canary, the challenger's own id goes to
    the challenger; any other id is 404, as is the challenger's id while no challenger serves."""
    _current_engine(manager)  # 503 until the champion is loaded
    if completion.model == manager.served_name:
        return manager.route(completion.user)
    challenger = manager.challenger
    if challenger is not None and completion.model == manager.challenger_id:
        return Served(challenger, CHALLENGER, manager.challenger_id)
    served = f"`{manager.served_name}`" + (f" and `{manager.challenger_id}`" if challenger is not None else "")
    raise ApiError(
        404,
        f"The model `{completion.model}` does not exist; this server serves {served}",
        param="model",
        code="model_not_found",
    )


async def _complete(request: Request, completion: CompletionRequest, served: Served, started: float) -> Response:
    settings: Settings = request.app.state.settings
    metrics: Metrics = request.app.state.metrics
    engine = served.engine
    job = plan_job(completion, engine, served.model_id, settings)
    fault = engine.loaded.fault
    if fault is not None and fault.fails(request.app.state.manager.router.rng.random()):
        raise ApiError(
            500,
            f"version {engine.loaded.version} failed this request on purpose: its {TEST_FAULT_TAG} tag is "
            f"{fault.tag!r} and this server allows test faults",
            code="test_fault",
        )
    try:
        engine.submit(job.sequences)
    except QueueFullError as exc:
        metrics.rejected.labels(reason="queue_full").inc()
        raise ApiError(
            429,
            f"the server is at capacity ({exc}); retry after {RETRY_AFTER_S}s",
            code="queue_full",
            headers={"Retry-After": RETRY_AFTER_S},
        ) from None
    except EngineClosedError:
        raise ApiError(503, "the server is shutting down", headers={"Retry-After": RETRY_AFTER_S}) from None
    metrics.prompt_tokens.inc(job.prompt_tokens)
    log.debug(
        "completion %s: %d sequences on version %s (%s), user=%r",
        job.id, len(job.sequences), engine.loaded.version, served.role, completion.user,
    )  # fmt: skip
    if fault is not None and fault.delay_s:
        try:
            await asyncio.sleep(fault.delay_s)
        except BaseException:
            job.cancel_unfinished()
            raise
    if completion.stream:
        first_token = metrics.first_token.labels(version=engine.loaded.version, alias=served.role)
        return StreamingResponse(
            stream_events(job, settings.request_timeout_s, lambda: first_token.observe(time.perf_counter() - started)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await respond(job, request, settings.request_timeout_s)


def _current_engine(manager: ModelManager) -> Engine:
    engine = manager.champion
    if engine is None:
        raise ApiError(
            503,
            f"no model is loaded yet ({manager.last_error}); retry shortly",
            headers={"Retry-After": RETRY_AFTER_S},
        )
    return engine


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise ApiError(400, "the request body is empty; send a JSON object with at least model and prompt")
    return b"".join(chunks)

