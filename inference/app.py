"""The HTTP service: `create_app(settings)` builds a FastAPI app whose lifespan loads and keeps the model."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.decoding import FINISH_LENGTH, FINISH_STOP, SamplingParams, Sequence
from inference.engine import Engine, EngineClosedError, QueueFullError
from inference.errors import ApiError, api_error_handler, http_error_handler
from inference.metrics import Metrics
from inference.schemas import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    inline_json_schema,
)
from inference.service import ModelManager
from inference.settings import Settings

log = logging.getLogger(__name__)

ROUTES = ("/livez", "/readyz", "/metrics", "/v1/models", "/v1/completions")
RETRY_AFTER_S = "1"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 429, 500, 503, 504)
}


class MetricsMiddleware:
    """Counts requests by route and status and times them until the last byte (streams included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "unmatched"
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


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
        engine = manager.engine
        if request.app.state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if engine is None:
            return JSONResponse({"status": "loading", "reason": manager.last_error}, status_code=503)
        return JSONResponse({"status": "ready", "model": engine.loaded.name, "version": engine.loaded.version})

    @app.get("/metrics", tags=["probes"])
    async def metrics(request: Request) -> Response:
        state = request.app.state
        state.metrics.ready.set(int(state.manager.engine is not None and not state.draining))
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> ModelList:
        manager: ModelManager = request.app.state.manager
        engine = _current_engine(manager)
        card = ModelCard(
            id=manager.served_name, created=engine.created, owned_by="ml-platform", version=engine.loaded.version
        )
        return ModelList(data=[card])

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
        """Completions for one prompt or a list of prompts; `"stream": true` answers with server-sent events."""
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
        engine = _current_engine(manager)
        job = _plan(completion, engine, manager.served_name, settings)
        try:
            engine.submit(job.sequences)
        except QueueFullError as exc:
            request.app.state.metrics.rejected.labels(reason="queue_full").inc()
            raise ApiError(
                429,
                f"the server is at capacity ({exc}); retry after {RETRY_AFTER_S}s",
                code="queue_full",
                headers={"Retry-After": RETRY_AFTER_S},
            ) from None
        except EngineClosedError:
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": RETRY_AFTER_S}) from None
        request.app.state.metrics.prompt_tokens.inc(job.prompt_tokens)
        log.debug("completion %s: %d sequences, user=%r", job.id, len(job.sequences), completion.user)
        if completion.stream:
            return StreamingResponse(
                _stream(job, settings.request_timeout_s),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _respond(job, request, settings.request_timeout_s)


def _current_engine(manager: ModelManager) -> Engine:
    engine = manager.engine
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


@dataclasses.dataclass(slots=True)
class _Job:
    """One accepted request: its sequences (choice i is sequences[i]) and how to report them."""

    id: str
    created: int
    model: str
    fingerprint: str
    sequences: list[Sequence]
    echo_prefixes: list[str]
    prompt_tokens: int
    include_usage: bool
    events: asyncio.Queue[tuple[int, str, str | None]]

    def usage(self) -> Usage:
        completion_tokens = sum(seq.completion_tokens for seq in self.sequences)
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.prompt_tokens + completion_tokens,
        )

    def cancel_unfinished(self) -> None:
        for seq in self.sequences:
            if seq.finish_reason is None:
                seq.cancelled = True

    def chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> CompletionResponse:
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=self.model,
            system_fingerprint=self.fingerprint,
            choices=choices,
            usage=usage,
        )


def _plan(completion: CompletionRequest, engine: Engine, served_name: str, settings: Settings) -> _Job:
    """Check the request against the limits and the model, and turn it into sequences (raises ApiError 4xx)."""
    if completion.model != served_name:
        raise ApiError(
            404,
            f"The model `{completion.model}` does not exist; this server serves `{served_name}`",
            param="model",
            code="model_not_found",
        )
    max_tokens = completion.max_tokens or 16
    if max_tokens > settings.max_completion_tokens:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} exceeds this server's limit of {settings.max_completion_tokens}",
            param="max_tokens",
        )
    if completion.stream_options is not None and not completion.stream:
        raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
    prompts = completion.prompts()
    n = completion.n or 1
    if len(prompts) * n > settings.max_prompts_per_request:
        raise ApiError(
            400,
            f"{len(prompts)} prompts x n={n} asks for {len(prompts) * n} completions; the limit per request "
            f"is {settings.max_prompts_per_request}",
            param="n" if n > 1 else "prompt",
        )
    tokenizer = engine.loaded.tokenizer
    encoded = []
    for i, prompt in enumerate(prompts):
        where = "prompt" if isinstance(completion.prompt, str) else f"prompt[{i}]"
        if not prompt:
            raise ApiError(
                400, f"{where} is empty; this model has no start token, so give it some text", param="prompt"
            )
        if len(prompt) > settings.max_prompt_tokens:
            raise ApiError(
                400, f"{where} has {len(prompt)} tokens; the limit is {settings.max_prompt_tokens}", param="prompt"
            )
        unknown = tokenizer.unknown_chars(prompt)
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:20]) + (", ..." if len(unknown) > 20 else "")
            raise ApiError(400, f"{where} has characters the model's vocabulary lacks: {shown}", param="prompt")
        encoded.append(tokenizer.encode(prompt))
    base = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if completion.temperature is None else completion.temperature,
        top_p=1.0 if completion.top_p is None else completion.top_p,
        stop=completion.stops(),
        seed=completion.seed,
    )
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, str, str | None]] = asyncio.Queue()
    stream = bool(completion.stream)
    sequences = []
    for choice in range(len(prompts) * n):
        params = base if base.seed is None else dataclasses.replace(base, seed=base.seed + choice % n)
        sequences.append(
            Sequence(encoded[choice // n], params, stream=stream, listener=_listener(loop, events, choice))
        )
    loaded = engine.loaded
    return _Job(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=served_name,
        fingerprint=f"{loaded.name}:{loaded.version}",
        sequences=sequences,
        echo_prefixes=[prompts[c // n] if completion.echo else "" for c in range(len(sequences))],
        prompt_tokens=sum(len(ids) for ids in encoded),
        include_usage=bool(completion.stream_options and completion.stream_options.include_usage),
        events=events,
    )


def _listener(
    loop: asyncio.AbstractEventLoop, events: asyncio.Queue[tuple[int, str, str | None]], choice: int
) -> Callable[[Sequence], None]:
    """Runs on the engine thread: hands the new text (streams) or the finish (all) to the event loop."""

    def notify(seq: Sequence) -> None:
        delta = seq.take_delta() if seq.stream else ""
        loop.call_soon_threadsafe(events.put_nowait, (choice, delta, seq.finish_reason))

    return notify


def _public_reason(reason: str | None) -> Any:
    if reason in (FINISH_STOP, FINISH_LENGTH):
        return reason
    raise ApiError(500, f"generation ended unexpectedly ({reason})")


async def _respond(job: _Job, request: Request, timeout: float) -> Response:
    waiting = set(job.sequences)
    disconnected = asyncio.create_task(_wait_for_disconnect(request.receive))
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while waiting:
            getter: asyncio.Task[tuple[int, str, str | None]] = asyncio.create_task(job.events.get())
            remaining = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait(
                {getter, disconnected}, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                if disconnected in done:
                    return Response(status_code=499)  # nobody is listening; the status only shows in metrics
                raise ApiError(
                    504,
                    f"the completion did not finish within {timeout:g}s; try fewer max_tokens or retry later",
                    code="timeout",
                )
            choice, _, reason = getter.result()
            if reason is not None:
                waiting.discard(job.sequences[choice])
    finally:
        disconnected.cancel()
        job.cancel_unfinished()
    choices = [
        CompletionChoice(index=i, text=job.echo_prefixes[i] + seq.text, finish_reason=_public_reason(seq.finish_reason))
        for i, seq in enumerate(job.sequences)
    ]
    return JSONResponse(job.chunk(choices, job.usage()).model_dump())


async def _wait_for_disconnect(receive: Callable[[], Awaitable[Message]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _stream(job: _Job, timeout: float) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of new text, the finish reasons, optional usage, `[DONE]`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        for i, prefix in enumerate(job.echo_prefixes):
            if prefix:
                yield _event(job.chunk([CompletionChoice(index=i, text=prefix, finish_reason=None)]))
        unfinished = len(job.sequences)
        while unfinished:
            try:
                choice, delta, reason = await asyncio.wait_for(job.events.get(), deadline - loop.time())
            except TimeoutError:
                yield _error_event(504, f"the completion did not finish within {timeout:g}s", "timeout")
                return
            if reason is not None:
                unfinished -= 1
                if reason not in (FINISH_STOP, FINISH_LENGTH):
                    yield _error_event(500, f"generation ended unexpectedly ({reason})", None)
                    return
            if delta or reason:
                yield _event(job.chunk([CompletionChoice(index=choice, text=delta, finish_reason=reason)]))  # type: ignore[arg-type]
        if job.include_usage:
            yield _event(job.chunk([], job.usage()))
        yield "data: [DONE]\n\n"
    finally:
        # Runs when the stream ends, and also when the client goes away mid-stream (the task is cancelled).
        job.cancel_unfinished()


def _event(chunk: CompletionResponse) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def _error_event(status: int, message: str, code: str | None) -> str:
    return f"data: {bytes(ApiError(status, message, code=code).response().body).decode()}\n\n"
