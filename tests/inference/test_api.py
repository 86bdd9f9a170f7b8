"""The HTTP API against a real tiny model, in-process through TestClient."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from inference.app import create_app
from inference.settings import Settings
from tests.harness.wait import eventually
from tests.inference.helpers import add_checkpoint, wait_ready, wait_readyz
from tinygpt.saved import is_saved_model_dir


def served_model(client: TestClient) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    body.setdefault("model", served_model(client))
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(client: TestClient, body: dict[str, Any]) -> list[str]:
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def metric(client: TestClient, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_livez_is_always_ok_and_readiness_waits_for_a_complete_checkpoint(
    make_settings: Callable[..., Settings], tmp_path: Path, model_a: Path
) -> None:
    root = tmp_path / "empty-root"
    root.mkdir()
    add_checkpoint(root, 10, model_a, complete=False)
    with TestClient(create_app(make_settings(model_uri=str(root)))) as client:
        assert client.get("/livez").json() == {"status": "ok"}
        wait_readyz(client, "a 'complete step-*' reason on /readyz",
                    lambda answer: "complete step-*" in str(answer.json().get("reason")), 30)  # fmt: skip
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["status"] == "loading"
        refused = client.post("/v1/completions", json={"model": "m", "prompt": "a"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "no model is loaded yet" in refused.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 503
        assert client.get("/livez").status_code == 200
        add_checkpoint(root, 20, model_a)
        ready = wait_ready(client)
        assert ready == {"status": "ready", "model": "empty-root", "version": "step-00000020"}


def test_serves_the_newest_complete_checkpoint(client: TestClient) -> None:
    assert client.get("/readyz").json()["version"] == "step-00000040"  # step 50 has no COMPLETE marker
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["version"]) for m in models["data"]] == [
        (models["data"][0]["id"], "model", "step-00000040")
    ]


def test_completion_has_openai_shape_and_usage(client: TestClient) -> None:
    body = complete(client, prompt="def main():", max_tokens=12, temperature=0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == served_model(client)
    assert body["system_fingerprint"].endswith(":step-00000040")
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and len(choice["text"]) == 12
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 12, "total_tokens": 23}


def test_generation_continues_past_the_context_window(client: TestClient) -> None:
    block_size = 32
    body = complete(client, prompt="x" * 40, max_tokens=3 * block_size, temperature=0.7, seed=5)
    assert len(body["choices"][0]["text"]) == 3 * block_size
    assert body["usage"]["prompt_tokens"] == 40  # the whole prompt counts, though only its tail is seen


def test_a_prompt_longer_than_the_window_is_left_truncated(client: TestClient) -> None:
    block_size = 32
    prompt = "The try statement specifies exception handlers and cleanup code. "
    assert len(prompt) > block_size
    whole = complete(client, prompt=prompt, max_tokens=10, temperature=0)
    tail = complete(client, prompt=prompt[-block_size:], max_tokens=10, temperature=0)
    assert whole["choices"][0]["text"] == tail["choices"][0]["text"]
    assert whole["usage"]["prompt_tokens"] == len(prompt)


def test_list_prompts_with_n_and_echo_keep_prompt_order(client: TestClient) -> None:
    body = complete(client, prompt=["alpha ", "beta "], n=2, max_tokens=4, echo=True, seed=1)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for choice, prompt in zip(body["choices"], ["alpha ", "alpha ", "beta ", "beta "], strict=True):
        assert choice["text"].startswith(prompt) and len(choice["text"]) == len(prompt) + 4
    assert (
        body["choices"][0]["text"] != body["choices"][1]["text"]
        or body["choices"][2]["text"] != body["choices"][3]["text"]
    ), "the n choices of a prompt are sampled independently"
    assert body["usage"]["prompt_tokens"] == 11 and body["usage"]["completion_tokens"] == 16


def test_greedy_is_deterministic_and_seed_reproduces_sampling(client: TestClient) -> None:
    greedy = [complete(client, prompt="for i in", max_tokens=20, temperature=0)["choices"][0]["text"] for _ in "ab"]
    assert greedy[0] == greedy[1]
    seeded = [complete(client, prompt="for i in", max_tokens=20, seed=42)["choices"][0]["text"] for _ in "ab"]
    assert seeded[0] == seeded[1]
    others = {complete(client, prompt="for i in", max_tokens=20, seed=s)["choices"][0]["text"] for s in range(4)}
    assert len(others) > 1


def test_stop_sequence_cuts_the_text(client: TestClient) -> None:
    reference = complete(client, prompt="The ", max_tokens=30, temperature=0)["choices"][0]["text"]
    stop = reference[5:7]
    body = complete(client, prompt="The ", max_tokens=30, temperature=0, stop=[stop, "@@@@"])
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == reference[: reference.index(stop)]


def test_stream_sends_text_chunks_finish_reason_usage_and_done(client: TestClient) -> None:
    model = served_model(client)
    body = {
        "model": model,
        "prompt": "import",
        "max_tokens": 10,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events(client, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == model for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == complete(client, prompt="import", max_tokens=10, temperature=0)["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


def test_stream_with_echo_and_stop_never_leaks_the_stop_text(client: TestClient) -> None:
    reference = complete(client, prompt="class ", max_tokens=30, temperature=0)["choices"][0]["text"]
    stop = reference[8:11]
    events = sse_events(
        client,
        {
            "model": served_model(client),
            "prompt": "class ",
            "max_tokens": 30,
            "temperature": 0,
            "stream": True,
            "echo": True,
            "stop": stop,
        },
    )
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "class " + reference[: reference.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_metrics_cover_requests_tokens_batches_and_model_version(client: TestClient) -> None:
    complete(client, prompt=["a", "b", "c"], max_tokens=5)
    client.post("/v1/completions", json={"model": "nope", "prompt": "a"})
    text = client.get("/metrics").text
    served = 'alias="champion",route="/v1/completions",status="200",version="step-00000040"'
    assert f"inference_requests_total{{{served}}}" in text
    # No model served the 404 (refused before routing): its version and alias labels are empty.
    assert 'inference_requests_total{alias="",route="/v1/completions",status="404",version=""}' in text
    latency = 'alias="champion",le="0.005",route="/v1/completions",version="step-00000040"'
    assert f"inference_request_duration_seconds_bucket{{{latency}}}" in text
    assert 'inference_model_loaded{alias="champion",model="' in text and 'version="step-00000040"} 1.0' in text
    assert metric(client, "inference_generated_tokens_total") >= 15
    assert metric(client, "inference_batch_size_count") >= 5
    assert "inference_queue_depth 0.0" in text
    assert "inference_ready 1.0" in text


def test_a_newer_complete_checkpoint_is_swapped_in(
    make_settings: Callable[..., Settings], tmp_path: Path, model_a: Path, model_b: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    add_checkpoint(root, 1, model_a)
    with TestClient(create_app(make_settings(model_uri=str(root)))) as client:
        wait_ready(client)
        before = complete(client, prompt="x", max_tokens=2)["system_fingerprint"]
        add_checkpoint(root, 2, model_b)
        wait_readyz(client, "step-00000002 swapped in", lambda answer: answer.json()["version"] == "step-00000002", 30)
        after = complete(client, prompt="x", max_tokens=2)["system_fingerprint"]
        assert (before, after) == ("root:step-00000001", "root:step-00000002")
        assert metric(client, "inference_model_swaps_total") == 1
    # The trainer's checkpoints are served in place and never pruned like the MLflow download cache.
    assert sorted(path.name for path in root.iterdir()) == ["step-00000001", "step-00000002"]
    assert is_saved_model_dir(root / "step-00000001")


def test_request_timeout_answers_504_and_frees_the_slot(
    make_settings: Callable[..., Settings], checkpoint_root: Path
) -> None:
    settings = make_settings(model_uri=str(checkpoint_root), request_timeout_s=0.001, max_completion_tokens=512)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.post(
            "/v1/completions", json={"model": served_model(client), "prompt": "a", "max_tokens": 512}
        )
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "timeout"
        busy = ("inference_active_sequences", "inference_queue_depth")
        eventually(f"the timed-out sequence cancelled ({' and '.join(busy)} back to 0)",
                   lambda: not any(metric(client, name) for name in busy), 30, 0.01, retry_on=())  # fmt: skip
        assert metric(client, "inference_generated_tokens_total") < 512


def test_openapi_document_describes_the_completion_request(client: TestClient) -> None:
    document = client.get("/openapi.json")
    assert document.status_code == 200
    operation = document.json()["paths"]["/v1/completions"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "prompt"} <= set(schema["required"]) and "stream_options" in schema["properties"]
    assert "#/$defs" not in document.text, "every reference must resolve inside the OpenAPI document"


def test_a_checkpoint_directory_has_no_canary_and_responses_name_the_version(client: TestClient) -> None:
    assert client.get("/canary").json() == {
        "state": "off", "challenger_alias": None, "champion": "step-00000040", "challenger": None, "percent": 0.0,
        "configured_percent": 10.0, "sticky": True, "refused": None,
        "reason": "only a models:/<name>@<alias> model URI has a canary", "draining": [],
    }  # fmt: skip
    response = client.post("/v1/completions", json={"model": served_model(client), "prompt": "a", "max_tokens": 2})
    assert (response.headers["x-model-version"], response.headers["x-model-alias"]) == ("step-00000040", "champion")
    # A request refused once routed still names the version whose limits refused it (and counts under it).
    refused = client.post("/v1/completions", json={"model": served_model(client), "prompt": "a", "max_tokens": 10**6})
    assert refused.status_code == 400 and refused.headers["x-model-version"] == "step-00000040"
    unknown = client.post("/v1/completions", json={"model": "nope", "prompt": "a"})
    assert unknown.status_code == 404 and "x-model-version" not in unknown.headers
