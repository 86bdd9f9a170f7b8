"""The gate with the real pieces: a real `mlflow server`, two real inference servers (`python -m inference serve`)
serving a canary of a tiny model, client threads sending completions (streams included), and `python -m rollout`
with a window of a few seconds. A healthy challenger is promoted; a challenger answering half its requests with 500
(the test fault `error:0.5`) is rolled back early; both decisions are recorded on the version in MLflow and the
replicas follow the aliases.

The thresholds here are loose on latency (a ratio of 20): two servers on a small shared machine vary more than
that between versions of the same model, and the latency and TTFT rules are checked exactly in test_decide.py; this
test checks that the real pieces measure, decide and act."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.harness.wait import eventually
from tests.inference.conftest import clean_environment, model_a, model_b, tracking_uri  # noqa: F401  (fixtures)
from tests.inference.helpers import REPO_ROOT, LiveServer, free_port, register_version
from tests.proc import die_with_parent
from workloads.contracts import (
    CANARY_DECIDED_AT_TAG,
    CANARY_DECISION_TAG,
    CANARY_REASON_TAG,
    TEST_FAULT_TAG,
)

pytestmark = pytest.mark.slow

NAME = "gated"


@dataclass
class Platform:
    registry: MlflowClient
    servers: list[LiveServer]
    gate_url: str
    gate_log: Path

    def aliases(self) -> dict[str, str]:
        return dict(self.registry.get_registered_model(NAME).aliases)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.registry.get_model_version(NAME, version).tags)

    def canaries(self) -> list[dict[str, Any]]:
        return [httpx.get(f"{s.url}/canary", timeout=10).json() for s in self.servers]


@pytest.fixture(scope="module")
def platform(
    tmp_path_factory: pytest.TempPathFactory,
    tracking_uri: str,  # noqa: F811
    model_a: Path,  # noqa: F811
) -> Iterator[Platform]:
    registry = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    registry.set_registered_model_alias(NAME, "champion", register_version(tracking_uri, NAME, model_a))
    root = tmp_path_factory.mktemp("gate")
    servers = [
        LiveServer(
            root / f"server-{i}.log",
            INFERENCE_MODEL_URI=f"models:/{NAME}@champion",
            INFERENCE_TRACKING_URI=tracking_uri,
            INFERENCE_CACHE_DIR=str(root / f"cache-{i}"),
            INFERENCE_CANARY_PERCENT="50",
            INFERENCE_POLL_INTERVAL_S="0.2",
            INFERENCE_DRAIN_DELAY_S="0",
            INFERENCE_TEST_FAULTS="allow",
        )
        for i in range(2)
    ]
    port = free_port()
    gate_log = root / "gate.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        ROLLOUT_MODEL_NAME=NAME,
        ROLLOUT_TRACKING_URI=tracking_uri,
        ROLLOUT_TARGETS=",".join(s.url for s in servers),
        ROLLOUT_INTERVAL_S="0.5",
        ROLLOUT_WINDOW_S="4",
        ROLLOUT_MIN_REQUESTS="20",
        ROLLOUT_MAX_ERROR_RATE_INCREASE="0.1",
        ROLLOUT_MAX_LATENCY_RATIO="20",
        ROLLOUT_MAX_TTFT_RATIO="20",
        ROLLOUT_HOST="127.0.0.1",
        ROLLOUT_PORT=str(port),
    )
    with gate_log.open("wb") as log:
        gate = subprocess.Popen(
            [sys.executable, "-m", "rollout"], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    try:
        for server in servers:
            server.wait_ready()
        gate_url = f"http://127.0.0.1:{port}"
        eventually("the gate's /healthz", lambda: httpx.get(f"{gate_url}/healthz").status_code == 200, 60, 0.1)
        yield Platform(registry, servers, gate_url, gate_log)
    finally:
        gate.terminate()
        gate.wait(timeout=30)
        for server in servers:
            server.stop()


@dataclass
class Traffic:
    """Completions from a few client threads, spread over the servers, every third one streamed."""

    servers: list[LiveServer]
    served: Counter[tuple[int, str]] = field(default_factory=Counter)
    """(status, version) of every answer."""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, offset: int) -> None:
        with httpx.Client(timeout=60) as http:
            for i in itertools.count(offset):
                if self.stop.is_set():
                    return
                url = f"{self.servers[i % len(self.servers)].url}/v1/completions"
                body = {"model": NAME, "prompt": "a", "max_tokens": 2, "stream": i % 3 == 0}
                try:
                    with http.stream("POST", url, json=body) as answer:
                        answer.read()
                        self.served[(answer.status_code, answer.headers.get("x-model-version", ""))] += 1
                except httpx.TransportError:
                    self.served[(0, "")] += 1


@pytest.fixture
def traffic(platform: Platform) -> Iterator[Traffic]:
    load = Traffic(platform.servers)
    threads = [threading.Thread(target=load.run, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    yield load
    load.stop.set()
    for thread in threads:
        thread.join(timeout=60)


def decided(platform: Platform, version: str) -> dict[str, str]:
    try:
        return eventually(
            f"a decision on version {version}",
            lambda: (tags := platform.tags(version)).get(CANARY_DECISION_TAG) and tags,
            120,
            0.2,
        )
    except TimeoutError as err:
        raise AssertionError(f"{err}\ngate log:\n{platform.gate_log.read_text()}") from None


def gate_metric(platform: Platform, line_start: str) -> float:
    text = httpx.get(f"{platform.gate_url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def test_a_healthy_challenger_is_promoted(platform: Platform, traffic: Traffic, model_b: Path) -> None:  # noqa: F811
    before = platform.aliases()["champion"]
    version = register_version(platform.registry.tracking_uri, NAME, model_b)
    platform.registry.set_registered_model_alias(NAME, "challenger", version)

    tags = decided(platform, version)
    assert tags[CANARY_DECISION_TAG] == "promoted", tags
    reason = tags[CANARY_REASON_TAG]
    assert reason.startswith("error rate 0.00 vs 0.00 (max increase 0.1); p95 latency "), reason
    assert "p95 time to first token " in reason and " challenger requests in " in reason, reason
    assert tags[CANARY_DECIDED_AT_TAG].endswith("Z")
    # The tags come first, then the aliases move.
    eventually(
        "the champion to move and the challenger alias to go",
        lambda: platform.aliases() == {"champion": version},
        30,
        0.1,
    )

    def only_the_new_version() -> bool:
        return all((c["champion"], c["challenger"], c["draining"]) == (version, None, []) for c in platform.canaries())

    eventually("every replica to serve the promoted version alone", only_the_new_version, 60, 0.1)
    traffic.served.clear()
    eventually("answers after the promotion", lambda: sum(traffic.served.values()) >= 20, 60, 0.1)
    assert {v for (_, v) in traffic.served} == {version}, traffic.served
    assert before != version
    assert gate_metric(platform, 'rollout_decisions_total{decision="promoted"}') >= 1


def test_a_failing_challenger_is_rolled_back(platform: Platform, traffic: Traffic, model_b: Path) -> None:  # noqa: F811
    champion = platform.aliases()["champion"]
    version = register_version(platform.registry.tracking_uri, NAME, model_b, tags={TEST_FAULT_TAG: "error:0.5"})
    platform.registry.set_registered_model_alias(NAME, "challenger", version)

    tags = decided(platform, version)
    assert tags[CANARY_DECISION_TAG] == "rolled_back", tags
    reason = tags[CANARY_REASON_TAG]
    # Early: on the error rate, as soon as 20 challenger requests showed it (the latency is not reached).
    assert reason.startswith("error rate 0.") and "vs 0.00 (max increase 0.1) over " in reason, reason
    rate = float(reason.split()[2])
    assert 0.2 < rate < 0.8, reason
    eventually("the challenger alias to go", lambda: "challenger" not in platform.aliases(), 30, 0.1)
    assert platform.aliases() == {"champion": champion}, "the champion stays"
    eventually(
        "every replica to drop the challenger",
        lambda: all(c["challenger"] is None and c["champion"] == champion for c in platform.canaries()),
        60,
        0.1,
    )
    assert (500, version) in traffic.served, "the challenger really failed requests before the rollback"
    assert gate_metric(platform, 'rollout_decisions_total{decision="rolled_back"}') >= 1
