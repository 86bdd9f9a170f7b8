"""Answering an accepted `Job`: `respond` waits for every choice and sends one JSON body (504 past the timeout,
499 once the client has gone), `stream_events` sends server-sent events as the text arrives. Both cancel the
sequences still running when they stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Message

from inference.decoding import FINISH_LENGTH, FINISH_STOP
from inference.errors import ApiError
from inference.jobs import Job
from inference.schemas import CompletionChoice, CompletionResponse


def _public_reason(reason: str | None) -> Any:
    if reason in (FINISH_STOP, FINISH_LENGTH):
        return reason
    raise ApiError(500, f"generation ended unexpectedly ({reason})")


async def respond(job: Job, request: Request, timeout: float) -> Response:
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


async def stream_events(
    job: Job, timeout: float, on_first_token: Callable[[], None] | None = None
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per piece of new text, the finish reasons, optional usage, `[DONE]`.
    `on_first_token` is called once, as the first chunk of generated text (not the echoed prompt) is sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    first_token = on_first_token
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
                if first_token is not None:
                    first_token()
                    first_token = None
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
