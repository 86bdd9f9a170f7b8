"""Every malformed or out-of-limits request gets a 4xx in OpenAI's error format that says what is wrong."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inference.app import create_app
from inference.settings import Settings
from tests.inference.helpers import wait_ready

MODEL = "bad-requests-model"
OK = {"model": MODEL, "prompt": "hello"}


def body(**changes: Any) -> dict[str, Any]:
    merged = {**OK, **changes}
    return {k: v for k, v in merged.items() if v is not ...}


# (id, request body (dict -> JSON, bytes -> raw), expected status, text the message must contain, expected param)
CASES: list[tuple[str, Any, int, str, str | None]] = [
    ("empty body", b"", 400, "body is empty", None),
    ("invalid json", b"{model: 1", 400, "not valid JSON", None),
    ("json array", b"[1, 2]", 400, "must be a JSON object", None),
    ("json string", b'"hello"', 400, "must be a JSON object", None),
    ("missing model", body(model=...), 400, "provide a model parameter", "model"),
    ("missing prompt", body(prompt=...), 400, "provide a prompt parameter", "prompt"),
    ("unknown model", body(model="gpt-4"), 404, "`gpt-4` does not exist", "model"),
    ("empty model", body(model=""), 400, "at least 1 character", "model"),
    ("model not a string", body(model=3), 400, "valid string", "model"),
    ("unknown field", body(foo=1), 400, "Unrecognized request argument supplied: foo", "foo"),
    ("prompt number", body(prompt=5), 400, "valid string", "prompt"),
    ("prompt token ids", body(prompt=[1, 2, 3]), 400, "token-id arrays are not supported", "prompt"),
    ("prompt nested token ids", body(prompt=[[1, 2]]), 400, "token-id arrays are not supported", "prompt"),
    ("prompt empty list", body(prompt=[]), 400, "at least 1 item", "prompt"),
    ("prompt empty string", body(prompt=""), 400, "prompt is empty", "prompt"),
    ("prompt empty in list", body(prompt=["ok", ""]), 400, "prompt[1] is empty", "prompt"),
    ("prompt unknown characters", body(prompt="naïve €"), 400, "vocabulary lacks: 'ï', '€'", "prompt"),
    ("prompt unknown in list", body(prompt=["ok", "日本"]), 400, "prompt[1] has characters", "prompt"),
    ("prompt too long", body(prompt="a" * 300), 400, "300 tokens; the limit is 256", "prompt"),
    ("too many prompts", body(prompt=["a"] * 9), 400, "limit per request is 8", "prompt"),
    ("n too large for limit", body(n=9), 400, "limit per request is 8", "n"),
    ("n zero", body(n=0), 400, "greater than or equal to 1", "n"),
    ("max_tokens zero", body(max_tokens=0), 400, "greater than or equal to 1", "max_tokens"),
    ("max_tokens negative", body(max_tokens=-5), 400, "greater than or equal to 1", "max_tokens"),
    ("max_tokens over limit", body(max_tokens=100), 400, "exceeds this server's limit of 64", "max_tokens"),
    ("max_tokens string", body(max_tokens="16"), 400, "valid integer", "max_tokens"),
    ("max_tokens float", body(max_tokens=1.5), 400, "valid integer", "max_tokens"),
    ("temperature negative", body(temperature=-0.1), 400, "greater than or equal to 0", "temperature"),
    ("temperature too high", body(temperature=2.5), 400, "less than or equal to 2", "temperature"),
    ("temperature string", body(temperature="hot"), 400, "valid number", "temperature"),
    ("top_p zero", body(top_p=0), 400, "greater than 0", "top_p"),
    ("top_p above one", body(top_p=1.1), 400, "less than or equal to 1", "top_p"),
    ("stream not bool", body(stream="yes"), 400, "valid boolean", "stream"),
    ("stream as int", body(stream=1), 400, "valid boolean", "stream"),
    (
        "stream_options without stream",
        body(stream_options={"include_usage": True}),
        400,
        "only allowed when stream is true",
        "stream_options",
    ),
    ("stream_options unknown key", body(stream=True, stream_options={"x": 1}), 400, "Unrecognized", "stream_options"),
    ("stop empty string", body(stop=""), 400, "non-empty strings", "stop"),
    ("stop too many", body(stop=["a", "b", "c", "d", "e"]), 400, "at most 4 items", "stop"),
    ("stop number", body(stop=3), 400, "valid string", "stop"),
    ("seed string", body(seed="abc"), 400, "valid integer", "seed"),
    ("seed beyond int64", body(seed=2**64), 400, "less than or equal to 9223372036854775807", "seed"),
    (
        "temperature NaN",
        b'{"model": "bad-requests-model", "prompt": "a", "temperature": NaN}',
        400,
        "temperature",
        "temperature",
    ),
    ("echo string", body(echo="true"), 400, "valid boolean", "echo"),
    ("logprobs requested", body(logprobs=5), 400, "logprobs is not supported", "logprobs"),
    ("best_of requested", body(best_of=3), 400, "best_of is not supported", "best_of"),
    ("suffix requested", body(suffix="end"), 400, "suffix is not supported", "suffix"),
    ("logit_bias requested", body(logit_bias={"5": 10}), 400, "logit_bias is not supported", "logit_bias"),
    ("presence_penalty", body(presence_penalty=0.5), 400, "presence_penalty is not supported", "presence_penalty"),
    ("frequency_penalty", body(frequency_penalty=1), 400, "frequency_penalty is not supported", "frequency_penalty"),
    ("user too long", body(user="u" * 300), 400, "at most 256 characters", "user"),
]


@pytest.fixture(scope="module")
def strict_client(tmp_path_factory: pytest.TempPathFactory, checkpoint_root: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_uri=str(checkpoint_root),
        served_model_name=MODEL,
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_prompt_tokens=256,
        max_completion_tokens=64,
        max_prompts_per_request=8,
        max_queue_depth=8,
        max_body_bytes=4096,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def assert_openai_error(response: Any, status: int, text: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert text in error["message"], error["message"]
    assert error["param"] == param
    assert error["type"] in ("invalid_request_error", "rate_limit_error")


@pytest.mark.parametrize(("payload", "status", "text", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_completion_request(
    strict_client: TestClient, payload: Any, status: int, text: str, param: str | None
) -> None:
    if isinstance(payload, bytes):
        response = strict_client.post("/v1/completions", content=payload, headers={"content-type": "application/json"})
    else:
        response = strict_client.post("/v1/completions", json=payload)
    assert_openai_error(response, status, text, param)


def test_neutral_values_of_unsupported_fields_are_accepted(strict_client: TestClient) -> None:
    neutral = body(
        logprobs=None,
        best_of=1,
        suffix="",
        logit_bias={},
        presence_penalty=0,
        frequency_penalty=0.0,
        user="someone",
        max_tokens=2,
    )
    assert strict_client.post("/v1/completions", json=neutral).status_code == 200


def test_body_over_the_limit_is_413(strict_client: TestClient) -> None:
    response = strict_client.post("/v1/completions", json=body(prompt="a" * 5000))
    assert_openai_error(response, 413, "the limit is 4096", None)


def test_chunked_body_over_the_limit_is_413(strict_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "bad-requests-model", "prompt": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    response = strict_client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, "exceeds the limit of 4096 bytes", None)


def test_wrong_content_type_is_415(strict_client: TestClient) -> None:
    response = strict_client.post(
        "/v1/completions", content=b"model=x&prompt=y", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_openai_error(response, 415, "Content-Type: application/json", None)


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/v1/completions", 405, "GET is not allowed on /v1/completions"),
        ("POST", "/v1/chat/completions", 404, "POST /v1/chat/completions does not exist"),
        ("DELETE", "/v1/models", 405, "DELETE is not allowed on /v1/models"),
    ],
)
def test_unknown_routes_and_methods(strict_client: TestClient, method: str, path: str, status: int, text: str) -> None:
    assert_openai_error(strict_client.request(method, path), status, text, None)


def test_no_bad_request_produced_a_server_error(strict_client: TestClient) -> None:
    for payload in [c[1] for c in CASES]:
        if isinstance(payload, bytes):
            strict_client.post("/v1/completions", content=payload, headers={"content-type": "application/json"})
        else:
            strict_client.post("/v1/completions", json=payload)
    metrics = strict_client.get("/metrics").text
    assert 'route="/v1/completions",status="5' not in metrics
    assert 'route="/v1/completions",status="4' in metrics
    assert strict_client.get("/readyz").status_code == 200


def test_settings_reject_inconsistent_limits(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="max_queue_depth=2 must be >= max_prompts_per_request=4"):
        make_settings(max_queue_depth=2, max_prompts_per_request=4)
