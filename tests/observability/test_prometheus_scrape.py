"""A real Prometheus (built from Go modules) scraping a real inference server and a real trainer run on 127.0.0.1,
and evaluating the platform's alert rules (workloads/monitoring/rules.py) on what it scraped.

The static scrape targets carry the `namespace` label a PodMonitor would give them, so the rules' namespace
selectors match as in a cluster.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.wait import eventually
from tests.inference.helpers import LiveServer, add_checkpoint, train_tiny_model
from tests.observability.promtools import PrometheusServer, free_port
from tests.proc import stop_group
from tests.trainer.conftest import clean_env, tiny_config
from workloads.monitoring.rules import AlertThresholds, alerts, rule_file_text

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

NAMESPACE = "obs-test"
# Low enough that the real traffic below crosses them: the alerts go pending (their `for` is minutes), which shows
# the expressions select the series the servers really export.
THRESHOLDS = AlertThresholds(inference_p99_seconds=0.000001, inference_429_ratio=0.01)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0, why: Callable[[], str] = str) -> None:
    try:
        eventually(what, predicate, timeout, 0.25, retry_on=())
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{why()}") from None


def positive(prometheus: PrometheusServer, expr: str) -> bool:
    """Whether `expr` returns exactly one series, with a value above 0."""
    result = prometheus.query(expr)
    return len(result) == 1 and float(result[0]["value"][1]) > 0


@pytest.fixture
def inference_server(tmp_path: Path) -> Iterator[LiveServer]:
    """`python -m inference serve` with a tiny model, one batch slot and one queue slot (so that concurrent
    requests get 429s)."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    add_checkpoint(root, 40, train_tiny_model(tmp_path / "model", seed=1, steps=40))
    server = LiveServer(
        tmp_path / "inference.log",
        INFERENCE_MODEL_URI=str(root),
        INFERENCE_CACHE_DIR=str(tmp_path / "cache"),
        INFERENCE_MAX_BATCH_SIZE="1",
        INFERENCE_MAX_QUEUE_DEPTH="1",
        INFERENCE_MAX_PROMPTS_PER_REQUEST="1",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@dataclass
class TrainerRun:
    process: subprocess.Popen[bytes]
    port: int
    log: Path


@pytest.fixture
def trainer_run(tmp_path: Path) -> Iterator[TrainerRun]:
    """`python -m trainer train` on python-docs with its metrics endpoint on 127.0.0.1. Its steps take a few
    milliseconds, so it is given far more than the test needs and stopped at the end (a run that ended would take
    its endpoint with it)."""
    port = free_port()
    config = tiny_config(
        tmp_path / "trainer",
        train={"max_steps": 1_000_000, "eval_every": 200, "log_every": 10},
        checkpoint={"every": 200, "keep": 1},
    )
    log = tmp_path / "trainer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "trainer", "train", f"--config={config}"),
                *("--set", f"metrics.port={port}", "--set", "metrics.host=127.0.0.1"),
            ],
            env=clean_env(),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        run = TrainerRun(process, port, log)

        def serving() -> bool:
            assert process.poll() is None, f"the trainer exited with {process.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
            return False

        wait_for(serving, "the trainer's metrics endpoint", timeout=120, why=log.read_text)
        yield run
    finally:
        stop_group(process)


def traffic(server: LiveServer, stop: threading.Event, statuses: list[int]) -> None:
    """Completions back to back; three of these at once overflow one batch slot plus one queue slot."""
    model = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        while not stop.is_set():
            response = client.post("/v1/completions", json={"model": model, "prompt": "def ", "max_tokens": 16})
            statuses.append(response.status_code)


def scrape_config(targets: dict[str, int]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE}}],
            }
            for job, port in targets.items()
        ],
    }


def test_prometheus_scrapes_inference_and_trainer_and_evaluates_the_alert_rules(
    prometheus_binary: Path, inference_server: LiveServer, trainer_run: TrainerRun, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "rules.yml").write_text(rule_file_text(NAMESPACE, THRESHOLDS))
    targets = {"inference": inference_server.port, "trainer": trainer_run.port}
    prometheus = PrometheusServer(prometheus_binary, directory, scrape_config(targets))
    stop = threading.Event()
    statuses: list[int] = []
    workers = [threading.Thread(target=traffic, args=(inference_server, stop, statuses)) for _ in range(3)]
    try:
        prometheus.start()
        prometheus.wait_ready()
        for worker in workers:
            worker.start()

        def targets_up() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return sorted(t["labels"]["job"] for t in active if t["health"] == "up") == sorted(targets)

        wait_for(targets_up, "every target up", why=lambda: f"{prometheus.api('targets')}\n{prometheus.log()}")
        check_inference(prometheus, statuses)
        check_trainer(prometheus)
        check_rules(prometheus)
        assert trainer_run.process.poll() is None, f"the trainer stopped early:\n{trainer_run.log.read_text()[-3000:]}"
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        prometheus.stop()


def instant(prometheus: PrometheusServer, expr: str) -> float:
    """The one value `expr` returns."""
    result = prometheus.query(expr)
    assert len(result) == 1, f"{expr}: {result}"
    return float(result[0]["value"][1])


def check_inference(prometheus: PrometheusServer, statuses: list[int]) -> None:
    ns = f'namespace="{NAMESPACE}", job="inference"'
    ok = f'inference_requests_total{{{ns}, route="/v1/completions", status="200"}}'
    refused = f'inference_requests_total{{{ns}, route="/v1/completions", status="429"}}'
    wait_for(lambda: positive(prometheus, f"rate({ok}[5s])"), "a rate of 200s", timeout=90)
    wait_for(lambda: positive(prometheus, f"rate({refused}[5s])"), "a rate of 429s", timeout=90)
    assert 200 in statuses and 429 in statuses, statuses[:50]
    assert instant(prometheus, f"sum(inference_rejected_total{{{ns}}})") > 0
    p99 = instant(
        prometheus,
        "histogram_quantile(0.99, sum by (le) (rate(inference_request_duration_seconds_bucket"
        f'{{{ns}, route="/v1/completions"}}[10s])))',
    )
    assert 0 < p99 < 60
    assert instant(prometheus, f"inference_generated_tokens_total{{{ns}}}") > 0
    assert instant(prometheus, f"inference_ready{{{ns}}}") == 1
    [loaded] = prometheus.query(f"inference_model_loaded{{{ns}}} == 1")
    assert loaded["metric"]["model"] == "checkpoints"


def check_trainer(prometheus: PrometheusServer) -> None:
    ns = f'namespace="{NAMESPACE}", job="trainer", rank="0"'
    wait_for(lambda: positive(prometheus, f"rate(trainer_steps_total{{{ns}}}[5s])"), "a rate of steps", timeout=90)
    first = instant(prometheus, f"trainer_step{{{ns}}}")
    wait_for(lambda: instant(prometheus, f"trainer_step{{{ns}}}") > first, "trainer_step to move", timeout=30)
    assert instant(prometheus, f"trainer_max_steps{{{ns}}}") == 1_000_000
    assert instant(prometheus, f"trainer_world_size{{{ns}}}") == 1
    assert instant(prometheus, f"trainer_resumed_from_step{{{ns}}}") == 0
    # The stall alert's input: the last step completed moments ago.
    assert 0 <= instant(prometheus, f"time() - trainer_last_step_timestamp_seconds{{{ns}}}") < 30
    wait_for(lambda: bool(prometheus.query(f"trainer_val_loss{{{ns}}}")), "a validation loss", timeout=90)
    for loss in ("trainer_train_loss", "trainer_val_loss"):
        value = instant(prometheus, f"{loss}{{{ns}}}")
        assert math.isfinite(value) and 0 < value < 10, (loss, value)
    assert instant(prometheus, f"trainer_tokens_per_second{{{ns}}}") > 0
    step_p50 = instant(
        prometheus, f"histogram_quantile(0.5, sum by (le) (rate(trainer_step_duration_seconds_bucket{{{ns}}}[10s])))"
    )
    assert 0 < step_p50 < 10
    phases = prometheus.query(f"sum by (phase) (trainer_step_phase_seconds_total{{{ns}}})")
    assert {p["metric"]["phase"] for p in phases} == {"data", "forward_backward", "optimizer", "sync"}
    assert instant(prometheus, f'trainer_step_phase_seconds_total{{{ns}, phase="forward_backward"}}') > 0
    wait_for(lambda: positive(prometheus, f"trainer_checkpoints_total{{{ns}}}"), "a checkpoint", timeout=90)
    assert instant(prometheus, f"trainer_checkpoint_size_bytes{{{ns}}}") > 10_000
    assert instant(prometheus, f"trainer_checkpoint_save_duration_seconds_count{{{ns}}}") > 0


def check_rules(prometheus: PrometheusServer) -> None:
    """Every group loaded and evaluated without error; the inference alerts whose thresholds the traffic crosses
    are pending (their `for` is minutes long), and no other alert is active: the trainer's loss is finite, and
    TrainingStalled needs kube-state-metrics' kube_job_status_active, which no cluster here exports."""
    expected = {alert.name for alert in alerts(NAMESPACE, THRESHOLDS)}

    def evaluated() -> list[dict[str, Any]]:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        # A rule not evaluated yet has Go's zero time, 0001-01-01T00:00:00Z.
        return rules if all(not r["lastEvaluation"].startswith("0001-") for r in rules) else []

    wait_for(lambda: bool(evaluated()), "every rule evaluated", why=lambda: str(prometheus.api("rules")))
    rules = evaluated()
    assert {r["name"] for r in rules} == expected
    assert {r["name"]: r["health"] for r in rules} == dict.fromkeys(expected, "ok"), rules
    pending = {"InferenceLatencyP99High", "Inference429RatioSustained"}

    def active() -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in prometheus.api("alerts")["alerts"]}

    wait_for(
        lambda: active() == dict.fromkeys(pending, "pending"),
        f"exactly {sorted(pending)} pending",
        why=lambda: str(prometheus.api("alerts")),
    )
    assert {a["labels"]["namespace"] for a in prometheus.api("alerts")["alerts"]} == {NAMESPACE}
