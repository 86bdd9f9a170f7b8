"""An accepted completion request as the engine runs it: `plan_job` checks a request against the server's limits
and the loaded model (raising ApiError 4xx) and turns it into one `Sequence` per choice; the resulting `Job` holds
them, the queue their progress arrives on from the engine thread, and how to report them (ids, echo, usage)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable

from inference.decoding import SamplingParams, Sequence
from inference.engine import Engine
from inference.errors import ApiError
from inference.schemas import CompletionChoice, CompletionRequest, CompletionResponse, Usage
from inference.settings import Settings


@dataclasses.dataclass(slots=True)
class Job:
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


def plan_job(completion: CompletionRequest, engine: Engine, model_id: str, settings: Settings) -> Job:
    """Check the request against the limits and `engine`'s model, and turn it into sequences (raises ApiError 4xx);
    its responses name `model_id`."""
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
    return Job(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model_id,
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
