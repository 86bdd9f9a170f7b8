"""Request and response bodies of the OpenAI completions API, as far as this service implements it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_SEQUENCES = 4

# Fields of the OpenAI completions API this service does not implement, with the values that mean "feature off"
# (some clients always send those). Any other value is refused with 400 naming the field, never ignored.
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, 0),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False
    """Send a last chunk, before `data: [DONE]`, with `usage` and no choices."""


class CompletionRequest(BaseModel):
    """`POST /v1/completions`. Types are strict: `"16"` is not a number and `1` is not `true`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=256)]
    """Must be the id `/v1/models` lists."""
    prompt: str | Annotated[list[str], Field(min_length=1)]
    """One prompt, or a list of prompts completed independently (choices in prompt order)."""
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    """Tokens to generate per choice; at most the server's `max_completion_tokens`."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = 1.0
    n: Annotated[int, Field(ge=1, le=128)] | None = 1
    """Choices per prompt."""
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    """Makes sampling repeatable (choice i of a prompt uses seed + i)."""
    echo: bool | None = False
    """Prepend the prompt to each choice's text."""
    user: Annotated[str, Field(max_length=256)] | None = None
    """End-user id; accepted for compatibility and written to the access log only."""
    logprobs: Any = None
    best_of: Any = None
    suffix: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompts_only(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not all(isinstance(item, str) for item in value):
            raise ValueError("prompts must be text (a string or a list of strings); token-id arrays are not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator(*UNSUPPORTED_FIELDS)
    @classmethod
    def _unsupported(cls, value: Any, info: Any) -> Any:
        allowed = UNSUPPORTED_FIELDS[info.field_name]
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise ValueError(
                f"{info.field_name} is not supported by this server; omit it or send "
                + " or ".join(repr(a) if a is not None else "null" for a in allowed)
            )
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its `$defs` inlined, for embedding in the OpenAPI document by hand."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    """`<model>:<version>` of the model version that produced the choices."""
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    version: str
    """Version now serving: the registry version number, or the checkpoint directory name."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


CanaryState = Literal["off", "no_challenger", "serving", "refused"]


class CanaryStatus(BaseModel):
    """`GET /canary`: what this replica serves, and why the challenger does or does not serve."""

    state: CanaryState
    """`off`: no canary by the settings; `no_challenger`: the challenger alias is unset or points to the champion's
    version; `serving`: the challenger gets `percent` of the requests; `refused`: the version the challenger alias
    points to is not served (see `reason`)."""
    challenger_alias: str | None
    """The alias polled for a challenger; null when the canary is off."""
    champion: str | None
    """Version serving as champion; null before the first load."""
    challenger: str | None
    """Version serving as challenger; null unless `state` is `serving`."""
    percent: float
    """Share of the requests the challenger gets now, in percent (0 unless `serving`)."""
    configured_percent: float
    """The `canary_percent` setting: the share a challenger gets while it serves."""
    sticky: bool
    """Whether requests with a `user` are routed by a stable hash of it."""
    refused: str | None
    """The refused challenger version (state `refused`); it is tried again only once the challenger alias or the
    champion moves to another version."""
    reason: str | None
    """Why the canary is off, has no challenger, or refused it."""
    draining: list[str]
    """Versions that no longer take requests but are still finishing the ones they had."""


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
