"""The canary by alias: a challenger version served beside the champion in one process, against a real MLflow
registry. The share is honoured, sticky routing by `user` is stable, every response and metric names the version
that served it, a challenger of another shape or tokenizer (or one that cannot load) is refused while the champion
serves on, a removed challenger drains without cutting a stream, a promotion serves everything from the challenger's
engine, and test faults are injected only where allowed. The routing and refusal rules are checked on their own
first, without a registry."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from inference.app import create_app
from inference.canary import REFUSED_SHAPE, REFUSED_TOKENIZER, Router, incompatibility, sticky_point
from inference.faults import InjectedFault, fault_from_tags, parse_fault
from inference.loading import LoadedModel, load_directory
from inference.settings import Settings
from tests.harness.wait import eventually
from tests.inference.helpers import TINY_SHAPE, LiveServer, register_version, train_tiny_model, wait_ready
from tinygpt.tokenizer import CharTokenizer
from workloads.contracts import TEST_FAULT_TAG


def within_six_sigma(successes: int, trials: int, p: float) -> bool:
    """Whether `successes` of `trials` Bernoulli(p) draws lie within 6 standard deviations of the mean: a correct
    router lands outside with probability below 2e-9, so the check cannot flake."""
    mean, sd = trials * p, math.sqrt(trials * p * (1 - p))
    return abs(successes - mean) <= 6 * sd


# --- models a canary must refuse -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_shallow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same tokenizer as model_a, another network shape (one layer instead of two)."""
    return train_tiny_model(
        tmp_path_factory.mktemp("model-shallow"), seed=3, steps=2, shape={**TINY_SHAPE, "n_layer": 1}
    )


@pytest.fixture(scope="session")
def model_renumbered(tmp_path_factory: pytest.TempPathFactory, model_a: Path) -> Path:
    """model_a's shape and weights with a tokenizer that numbers the same characters in reverse order."""
    directory = tmp_path_factory.mktemp("model-renumbered") / "saved"
    shutil.copytree(model_a, directory)
    tokenizer = CharTokenizer.load(directory / "tokenizer.json")
    CharTokenizer(tokenizer.chars[::-1]).save(directory / "tokenizer.json")
    return directory


@pytest.fixture(scope="session")
def model_corrupt(tmp_path_factory: pytest.TempPathFactory, model_a: Path) -> Path:
    """model_a's files with weights that cannot be read."""
    directory = tmp_path_factory.mktemp("model-corrupt") / "saved"
    shutil.copytree(model_a, directory)
    (directory / "model.pt").write_bytes(b"not a checkpoint")
    return directory


def load(directory: Path, version: str) -> LoadedModel:
    return load_directory(directory, "tiny", version, torch.device("cpu"))


# --- the rules on their own ----------------------------------------------------------------------------------


def test_random_routing_honours_the_share() -> None:
    router = Router(percent=20, sticky=False)
    trials = 20_000
    chosen = sum(router.to_challenger(None, "2") for _ in range(trials))
    assert within_six_sigma(chosen, trials, 0.20), chosen  # 18.3% to 21.7%
    assert not any(Router(percent=0, sticky=False).to_challenger(None, "2") for _ in range(1000))
    assert all(Router(percent=100, sticky=False).to_challenger(None, "2") for _ in range(1000))


def test_sticky_routing_is_stable_per_user_and_only_grows_with_the_share() -> None:
    users = [f"user-{i}" for i in range(4000)]
    tenth = {u for u in users if Router(percent=10, sticky=True).to_challenger(u, "7")}
    fifth = {u for u in users if Router(percent=20, sticky=True).to_challenger(u, "7")}
    assert within_six_sigma(len(fifth), len(users), 0.20), len(fifth)
    assert tenth < fifth, "raising the share must only move users to the challenger"
    again = Router(percent=20, sticky=True, rng=random.Random(99))
    assert {u for u in users if again.to_challenger(u, "7")} == fifth, "the same users, whatever the random state"
    other = {u for u in users if Router(percent=20, sticky=True).to_challenger(u, "8")}
    assert other != fifth, "each challenger version is tried on its own cohort"
    assert all(0 <= sticky_point(u, "7") < 100 for u in users[:100])


def test_requests_without_a_user_are_routed_at_random_even_when_sticky() -> None:
    router = Router(percent=50, sticky=True)
    trials = 2000
    assert within_six_sigma(sum(router.to_challenger(None, "2") for _ in range(trials)), trials, 0.5)
    assert within_six_sigma(sum(router.to_challenger("", "2") for _ in range(trials)), trials, 0.5)


def test_a_challenger_must_have_the_champions_tokenizer_and_shape(
    model_a: Path, model_b: Path, model_shallow: Path, model_renumbered: Path
) -> None:
    champion = load(model_a, "1")
    assert incompatibility(champion, load(model_b, "2")) is None, "retrained weights are what a canary compares"
    reason, message = incompatibility(champion, load(model_shallow, "3")) or ("", "")
    assert reason == REFUSED_SHAPE
    assert message == "its model shape differs from the champion's (version 1): n_layer 1 (champion: 2)"
    reason, message = incompatibility(champion, load(model_renumbered, "4")) or ("", "")
    assert reason == REFUSED_TOKENIZER
    assert (
        message == "its tokenizer differs from the champion's (version 1): it numbers the same characters differently"
    )
    narrowed = dataclasses.replace(champion, tokenizer=CharTokenizer(champion.tokenizer.chars[:-1]), version="5")
    reason, message = incompatibility(champion, narrowed) or ("", "")
    assert reason == REFUSED_TOKENIZER and f"lacks 1 of its characters ({champion.tokenizer.chars[-1]!r})" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("error:1", InjectedFault(tag="error:1", error_fraction=1.0)),
        ("error:0.25", InjectedFault(tag="error:0.25", error_fraction=0.25)),
        ("slow:0.5", InjectedFault(tag="slow:0.5", delay_s=0.5)),
        ("slow:0", InjectedFault(tag="slow:0", delay_s=0.0)),
    ],
)
def test_fault_tags_parse(value: str, expected: InjectedFault) -> None:
    assert parse_fault(value) == expected


@pytest.mark.parametrize("value", ["error:1.5", "error:-0.1", "slow:-1", "slow:inf", "error", "crash:1", "slow:x"])
def test_bad_fault_tags_are_refused_saying_what_is_accepted(value: str) -> None:
    with pytest.raises(ValueError, match=r"expected error:<fraction from 0 to 1> or slow:<seconds, 0 or more>"):
        parse_fault(value)


def test_a_fault_tag_is_honoured_only_where_allowed(caplog: pytest.LogCaptureFixture) -> None:
    tags = {TEST_FAULT_TAG: "error:1", "other": "x"}
    with caplog.at_level(logging.WARNING, logger="inference.faults"):
        assert fault_from_tags(tags, allowed=False, version="4") is None
        assert fault_from_tags(tags, allowed=True, version="4") == InjectedFault(tag="error:1", error_fraction=1.0)
        assert fault_from_tags({TEST_FAULT_TAG: "bogus"}, allowed=True, version="5") is None
        assert fault_from_tags({"other": "x"}, allowed=True, version="6") is None
    ignored, injected, bad = (record.getMessage() for record in caplog.records)
    assert "version 4" in ignored and "ignored" in ignored and "INFERENCE_TEST_FAULTS=allow" in ignored
    assert "version 4" in injected and "injecting" in injected
    assert "version 5" in bad and "'bogus'" in bad


# --- against a real registry -----------------------------------------------------------------------------------


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def metric(client: TestClient, name: str, **labels: str) -> float:
    return samples(client.get("/metrics").text, name, **labels)


def wait_canary(client: TestClient, what: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict:
    """Poll GET /canary until `ok(status)`, and return that status."""

    def check() -> dict[str, Any] | None:
        status = dict(client.get("/canary").json())
        return status if ok(status) else None

    try:
        return dict(eventually(what, check, timeout, 0.05, retry_on=()))
    except TimeoutError as err:
        raise AssertionError(f"{err}; /canary: {client.get('/canary').json()}") from None


def complete(client: TestClient, model: str, **body: Any) -> httpx.Response:
    response = client.post("/v1/completions", json={"model": model, "prompt": "The", "max_tokens": 1, **body})
    assert response.status_code == 200, response.text
    return response


def served_by(response: httpx.Response) -> tuple[str, str]:
    return response.headers["x-model-version"], response.headers["x-model-alias"]


@pytest.fixture
def registry(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.fixture(scope="module")
def canary_model(tracking_uri: str, model_a: Path, model_b: Path) -> tuple[str, str, str]:
    """`canary-share`: champion model_a, challenger model_b (name, champion version, challenger version); its
    aliases never move, so the tests that only read can share it."""
    name = "canary-share"
    champion = register_version(tracking_uri, name, model_a)
    challenger = register_version(tracking_uri, name, model_b)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(name, "champion", champion)
    client.set_registered_model_alias(name, "challenger", challenger)
    return name, champion, challenger


@pytest.fixture
def canary_client(
    make_settings: Callable[..., Settings], tracking_uri: str, tmp_path: Path
) -> Iterator[Callable[..., TestClient]]:
    """`start(name, **settings)`: a ready in-process server of `models:/<name>@champion`, stopped after the test.
    Each gets its own cache directory, as each server must (they prune each other's versions otherwise)."""
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:

        def start(name: str, **overrides: Any) -> TestClient:
            cache_dir = tmp_path / f"cache-{next(numbers)}"
            settings = make_settings(
                model_uri=f"models:/{name}@champion", tracking_uri=tracking_uri, cache_dir=cache_dir, **overrides
            )
            client = stack.enter_context(TestClient(create_app(settings)))
            wait_ready(client)
            return client

        yield start


@pytest.mark.slow
def test_the_share_is_honoured_and_every_response_and_metric_names_its_version(
    canary_model: tuple[str, str, str], canary_client: Callable[..., TestClient]
) -> None:
    name, champion, challenger = canary_model
    client = canary_client(name, canary_percent=20)
    status = wait_canary(client, "the challenger to serve", lambda s: s["state"] == "serving")
    assert status == {
        "state": "serving", "challenger_alias": "challenger", "champion": champion, "challenger": challenger,
        "percent": 20.0, "configured_percent": 20.0, "sticky": True, "refused": None, "reason": None, "draining": [],
    }  # fmt: skip
    cards = [(card["id"], card["version"]) for card in client.get("/v1/models").json()["data"]]
    assert cards == [(name, champion), (f"{name}@challenger", challenger)]
    # Both versions are cached, nothing else (the cache is pruned to what serves).
    cached = client.app.state.settings.cache_dir / name
    eventually("the cache to hold the two served versions",
               lambda: {p.name for p in cached.iterdir()} == {champion, challenger}, 30, 0.05, retry_on=())  # fmt: skip

    expected = {champion: ("champion", name), challenger: ("challenger", f"{name}@challenger")}
    trials = 400
    seen: Counter[str] = Counter()
    for _ in range(trials):  # no `user`: each request is routed at random
        response = complete(client, name)
        version, alias = served_by(response)
        body = response.json()
        assert (alias, body["model"]) == expected[version]
        assert body["system_fingerprint"] == f"{name}:{version}"
        seen[alias] += 1
    assert within_six_sigma(seen["challenger"], trials, 0.20), seen  # 32 to 128 of 400

    # Streams: every chunk names the version; the challenger's own id pins a request to it.
    with client.stream("POST", "/v1/completions", json={
        "model": f"{name}@challenger", "prompt": "The", "max_tokens": 5, "stream": True,
    }) as stream:  # fmt: skip
        assert served_by(stream) == (challenger, "challenger")
        chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    assert chunks and {chunk["model"] for chunk in chunks} == {f"{name}@challenger"}
    pinned = complete(client, name + "@challenger")
    assert served_by(pinned) == (challenger, "challenger") and pinned.json()["model"] == f"{name}@challenger"
    unknown = client.post("/v1/completions", json={"model": f"{name}@candidate", "prompt": "The"})
    assert unknown.status_code == 404 and f"serves `{name}` and `{name}@challenger`" in unknown.text

    text = client.get("/metrics").text
    route = "/v1/completions"
    for version, alias in ((champion, "champion"), (challenger, "challenger")):
        labels = {"route": route, "version": version, "alias": alias}
        requests = seen[alias] + (2 if alias == "challenger" else 0)
        assert samples(text, "inference_requests_total", status="200", **labels) == requests
        assert samples(text, "inference_request_duration_seconds_count", **labels) == requests
        loaded = {"model": name, "version": version, "alias": alias}
        assert samples(text, "inference_model_loaded", **loaded) == 1
    first_token = {"version": challenger, "alias": "challenger"}
    assert samples(text, "inference_first_token_duration_seconds_count", **first_token) == 1
    # Aggregations over the new labels still add up to every request, as the dashboards and alerts sum them.
    assert samples(text, "inference_requests_total", route=route) == trials + 3


@pytest.mark.slow
def test_sticky_routing_gives_each_user_one_version(
    canary_model: tuple[str, str, str], canary_client: Callable[..., TestClient]
) -> None:
    name, champion, challenger = canary_model
    client = canary_client(name, canary_percent=20)
    wait_canary(client, "the challenger to serve", lambda s: s["state"] == "serving")
    users = [f"user-{i}" for i in range(100)]
    versions = {user: {served_by(complete(client, name, user=user))[0] for _ in range(2)} for user in users}
    assert all(len(seen) == 1 for seen in versions.values()), "a user must keep one version"
    # The stable hash decides: the same users as the rule says, on both sides (P(no user on the challenger) < 1e-9).
    on_challenger = {user for user, seen in versions.items() if seen == {challenger}}
    assert on_challenger == {user for user in users if sticky_point(user, challenger) < 20}
    assert all(versions[user] == {champion} for user in set(users) - on_challenger)
    assert 0 < len(on_challenger) < len(users)


@pytest.mark.slow
def test_a_challenger_of_another_shape_or_tokenizer_or_that_cannot_load_is_refused(
    tracking_uri: str,
    registry: MlflowClient,
    canary_client: Callable[..., TestClient],
    model_a: Path,
    model_b: Path,
    model_shallow: Path,
    model_renumbered: Path,
    model_corrupt: Path,
) -> None:
    name = "canary-refusals"
    champion = register_version(tracking_uri, name, model_a)
    shallow = register_version(tracking_uri, name, model_shallow)
    renumbered = register_version(tracking_uri, name, model_renumbered)
    corrupt = register_version(tracking_uri, name, model_corrupt, raw=True)
    good = register_version(tracking_uri, name, model_b)
    registry.set_registered_model_alias(name, "champion", champion)
    client = canary_client(name, canary_percent=50)
    status = wait_canary(client, "no challenger yet", lambda s: s["state"] == "no_challenger")
    assert status["reason"] == "the alias 'challenger' is not set"

    registry.set_registered_model_alias(name, "challenger", shallow)
    status = wait_canary(client, f"version {shallow} refused", lambda s: s["refused"] == shallow)
    assert status["state"] == "refused" and status["challenger"] is None and status["percent"] == 0
    assert (
        status["reason"] == f"its model shape differs from the champion's (version {champion}): n_layer 1 (champion: 2)"
    )
    # Not tried again while nothing changes: three more polls, still one refusal.
    polls = metric(client, "inference_model_polls_total")
    eventually("three more polls", lambda: metric(client, "inference_model_polls_total") >= polls + 3, 30, 0.05,
               retry_on=())  # fmt: skip
    assert metric(client, "inference_challenger_refusals_total", reason="shape") == 1
    # The champion serves everything, and the refused version cannot be asked for by name.
    assert {served_by(complete(client, name)) for _ in range(20)} == {(champion, "champion")}
    assert [card["version"] for card in client.get("/v1/models").json()["data"]] == [champion]
    assert client.post("/v1/completions", json={"model": f"{name}@challenger", "prompt": "a"}).status_code == 404

    registry.set_registered_model_alias(name, "challenger", renumbered)
    status = wait_canary(client, f"version {renumbered} refused", lambda s: s["refused"] == renumbered)
    assert status["reason"] == (
        f"its tokenizer differs from the champion's (version {champion}): it numbers the same characters differently"
    )
    registry.set_registered_model_alias(name, "challenger", corrupt)
    status = wait_canary(client, f"version {corrupt} refused", lambda s: s["refused"] == corrupt)
    assert status["reason"].startswith("it cannot be loaded: ") and "cannot load the model" in status["reason"]
    text = client.get("/metrics").text
    assert [samples(text, "inference_challenger_refusals_total", reason=r) for r in ("shape", "tokenizer",
            "load_failed")] == [1, 1, 1]  # fmt: skip
    assert complete(client, name).headers["x-model-version"] == champion

    # A good version after the bad ones serves.
    registry.set_registered_model_alias(name, "challenger", good)
    status = wait_canary(client, f"version {good} to serve", lambda s: s["state"] == "serving")
    assert (status["challenger"], status["refused"], status["reason"]) == (good, None, None)


@pytest.mark.slow
def test_moving_the_champion_to_the_challengers_version_serves_everything_from_it(
    tracking_uri: str,
    registry: MlflowClient,
    canary_client: Callable[..., TestClient],
    model_a: Path,
    model_b: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "canary-promotion"
    caplog.set_level(logging.INFO, logger="inference.service")
    champion = register_version(tracking_uri, name, model_a)
    challenger = register_version(tracking_uri, name, model_b)
    registry.set_registered_model_alias(name, "champion", champion)
    registry.set_registered_model_alias(name, "challenger", challenger)
    client = canary_client(name, canary_percent=50)
    wait_canary(client, "the challenger to serve", lambda s: s["state"] == "serving")

    registry.set_registered_model_alias(name, "champion", challenger)
    status = wait_canary(client, "the promotion", lambda s: s["champion"] == challenger)
    assert (status["state"], status["challenger"], status["percent"]) == ("no_challenger", None, 0)
    assert status["reason"] == f"the alias 'challenger' points to the champion's version {challenger}"
    [card] = client.get("/v1/models").json()["data"]
    assert (card["id"], card["version"]) == (name, challenger)
    # The challenger's engine, warm, became the champion's: nothing was loaded again.
    promoted = f"promoted the challenger: {name} from version {champion} to {challenger}"
    assert promoted in [record.getMessage() for record in caplog.records]
    for _ in range(30):
        response = complete(client, name)
        assert served_by(response) == (challenger, "champion") and response.json()["model"] == name
    assert metric(client, "inference_model_swaps_total") == 1
    assert metric(client, "inference_model_loaded", alias="champion", version=challenger) == 1
    assert metric(client, "inference_model_loaded", alias="challenger") == 0
    wait_canary(client, "the old champion drained", lambda s: s["draining"] == [])

    registry.delete_registered_model_alias(name, "challenger")
    status = wait_canary(client, "the alias removal seen", lambda s: s["reason"] == "the alias 'challenger' is not set")
    assert (status["champion"], status["challenger"]) == (challenger, None)


@pytest.mark.slow
def test_removing_the_challenger_alias_drains_it_without_cutting_a_stream(
    tracking_uri: str,
    registry: MlflowClient,
    live_server: Callable[..., LiveServer],
    model_a: Path,
    model_b: Path,
) -> None:
    name = "canary-rollback"
    champion = register_version(tracking_uri, name, model_a)
    challenger = register_version(tracking_uri, name, model_b)
    registry.set_registered_model_alias(name, "champion", champion)
    registry.set_registered_model_alias(name, "challenger", challenger)
    tokens = 4000
    server = live_server(
        INFERENCE_MODEL_URI=f"models:/{name}@champion",
        INFERENCE_TRACKING_URI=tracking_uri,
        INFERENCE_CANARY_PERCENT="100",
        INFERENCE_POLL_INTERVAL_S="0.2",
        INFERENCE_MAX_COMPLETION_TOKENS=str(tokens),
        INFERENCE_REQUEST_TIMEOUT_S="240",  # a loaded 2-core machine: the stream must finish, not time out
    )
    server.wait_ready()

    def canary() -> dict[str, Any]:
        return dict(httpx.get(f"{server.url}/canary", timeout=10).json())

    eventually("the challenger to serve", lambda: canary()["state"] == "serving", 60, 0.05, retry_on=())
    body = {"model": name, "prompt": "a", "max_tokens": tokens, "stream": True}
    with httpx.Client(base_url=server.url, timeout=300) as http, http.stream("POST", "/v1/completions", json=body) as s:
        assert (s.headers["x-model-version"], s.headers["x-model-alias"]) == (challenger, "challenger")
        lines = s.iter_lines()
        first = next(lines)
        registry.delete_registered_model_alias(name, "challenger")
        eventually("the challenger to drain", lambda: canary()["draining"] == [challenger], 60, 0.02, retry_on=())
        assert canary()["challenger"] is None
        active = samples(httpx.get(f"{server.url}/metrics").text, "inference_active_sequences")
        assert active == 1, "the stream must still be generating on the draining engine"
        meanwhile = http.post("/v1/completions", json={"model": name, "prompt": "a", "max_tokens": 1})
        assert meanwhile.headers["x-model-version"] == champion
        events = [first, *lines]
    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert [e for e in events if e][-1] == "data: [DONE]"
    assert {chunk["model"] for chunk in chunks} == {f"{name}@challenger"}
    assert len("".join(c["choices"][0]["text"] for c in chunks)) == tokens
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    eventually("the drained engine to close", lambda: canary()["draining"] == [], 60, 0.05, retry_on=())


@pytest.mark.slow
def test_a_fault_tag_is_ignored_unless_test_faults_are_allowed(
    tracking_uri: str,
    registry: MlflowClient,
    canary_client: Callable[..., TestClient],
    model_a: Path,
    model_b: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "canary-faults"
    champion = register_version(tracking_uri, name, model_a)
    failing = register_version(tracking_uri, name, model_b, tags={TEST_FAULT_TAG: "error:1"})
    slow = register_version(tracking_uri, name, model_b, tags={TEST_FAULT_TAG: "slow:0.3"})
    registry.set_registered_model_alias(name, "champion", champion)
    registry.set_registered_model_alias(name, "challenger", failing)

    ignoring = canary_client(name, canary_percent=100)
    wait_canary(ignoring, "the challenger to serve", lambda s: s["state"] == "serving")
    assert {served_by(complete(ignoring, name)) for _ in range(10)} == {(failing, "challenger")}
    assert any(
        f"version {failing} has the tag {TEST_FAULT_TAG}='error:1'; ignored" in r.getMessage() for r in caplog.records
    )

    allowing = canary_client(name, canary_percent=100, test_faults="allow")
    wait_canary(allowing, "the challenger to serve", lambda s: s["state"] == "serving")
    for _ in range(10):
        response = allowing.post("/v1/completions", json={"model": name, "prompt": "The", "max_tokens": 1})
        assert response.status_code == 500 and response.json()["error"]["code"] == "test_fault"
        assert served_by(response) == (failing, "challenger")
    pinned = allowing.post("/v1/completions", json={"model": name + "@challenger", "prompt": "a"})
    assert pinned.status_code == 500, "the fault follows the version, however it is reached"
    failed = {"route": "/v1/completions", "status": "500", "version": failing, "alias": "challenger"}
    assert metric(allowing, "inference_requests_total", **failed) == 11

    # slow:0.3 holds every request of the version 0.3 s at least: none falls in the latency buckets below that.
    registry.set_registered_model_alias(name, "challenger", slow)
    wait_canary(allowing, f"version {slow} to serve", lambda s: s["challenger"] == slow)
    for _ in range(3):
        assert served_by(complete(allowing, name)) == (slow, "challenger")
    with allowing.stream("POST", "/v1/completions", json={"model": name, "prompt": "a", "stream": True}) as stream:
        assert stream.status_code == 200 and served_by(stream) == (slow, "challenger")
        stream.read()
    text = allowing.get("/metrics").text
    labels = {"route": "/v1/completions", "version": slow, "alias": "challenger"}
    assert samples(text, "inference_request_duration_seconds_count", **labels) == 4
    assert samples(text, "inference_request_duration_seconds_bucket", le="0.25", **labels) == 0
    first_token = {"version": slow, "alias": "challenger"}
    assert samples(text, "inference_first_token_duration_seconds_count", **first_token) == 1
    assert samples(text, "inference_first_token_duration_seconds_bucket", le="0.25", **first_token) == 0
