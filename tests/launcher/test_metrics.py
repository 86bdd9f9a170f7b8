"""The launcher's Prometheus metrics: real requests through the app move the counters (route templates as labels,
never raw paths), refusals are counted by reason, a log stream is a gauge and not a latency, and `skyrun serve`
answers the text exposition on its own metrics port over a real socket."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from skyrun.app import LOGS_ROUTE, create_app
from skyrun.manifests import task_manifests
from skyrun.settings import Settings
from skyrun.task_spec import parse_task
from tests.harness.wait import eventually
from tests.launcher.test_units import USER, FakeKube, launch
from tests.proc import stop_group
from workloads.task import NODE_INDEX_LABEL, STATE_ACTIVE, STATE_LABEL

ROOT = Path(__file__).resolve().parents[2]
TASK_ID = "abcd1234"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def label_values(registry: CollectorRegistry) -> set[str]:
    return {v for family in registry.collect() for sample in family.samples for v in sample.labels.values()}


class TaskKube(FakeKube):
    """One running 1-node task of USER (record, Job, pod) whose pod logs two lines; writes are recorded."""

    def __init__(self) -> None:
        super().__init__()
        manifests = task_manifests(parse_task({"run": "echo hi"}).task, launch(task_id=TASK_ID))
        record = manifests.record
        record["metadata"]["labels"][STATE_LABEL] = STATE_ACTIVE
        template = manifests.job["spec"]["template"]["metadata"]
        self.store: dict[str, list[dict[str, Any]]] = {
            "ConfigMap": [record],
            "Job": [manifests.job],
            "Pod": [
                {
                    "metadata": {"name": f"{manifests.job['metadata']['name']}-0",
                                 "labels": {**template["labels"], NODE_INDEX_LABEL: "0"}},
                    "status": {"phase": "Running"},
                }
            ],
        }  # fmt: skip
        self.streams_open_during_stream: list[float] = []
        self.registry: CollectorRegistry | None = None

    async def objects(self, ns: str, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return self.store.get(kind, [])

    async def log_lines(self, ns: str, pod: str, container: str, *, follow: bool) -> AsyncIterator[str]:
        assert self.registry is not None
        for line in ("step 1", "step 2"):
            self.streams_open_during_stream.append(value(self.registry, "skyrun_log_streams_open"))
            yield line


@contextlib.contextmanager
def app_with(kube: FakeKube, **settings: Any) -> Iterator[tuple[TestClient, CollectorRegistry]]:
    app = create_app(Settings(reconcile_interval_s=3600, **settings), client=object())  # type: ignore[arg-type]
    with TestClient(app, headers={"X-Skyrun-User": USER}, raise_server_exceptions=False) as http:
        app.state.launcher.kube = kube
        app.state.auth.kube = kube
        yield http, app.state.metrics.registry


@pytest.fixture
def api() -> Iterator[tuple[TestClient, CollectorRegistry]]:
    with app_with(FakeKube(), dev_trusted_user_header=True) as both:
        yield both


def test_requests_are_counted_by_route_template_method_and_status_never_by_raw_path(
    api: tuple[TestClient, CollectorRegistry],
) -> None:
    http, registry = api
    assert http.get("/livez").status_code == 200
    assert http.get("/tasks/abcd1234").status_code == 404
    assert http.get("/tasks/zyxw9876").status_code == 404
    assert http.delete("/volumes/vol12345").status_code == 404
    assert http.put("/tasks/abcd1234").status_code == 405
    assert http.get("/no/such/path/abcd1234").status_code == 404

    assert value(registry, "skyrun_requests_total", route="/livez", method="GET", status="200") == 1
    assert value(registry, "skyrun_requests_total", route="/tasks/{task_id}", method="GET", status="404") == 2
    assert value(registry, "skyrun_requests_total", route="/volumes/{volume_id}", method="DELETE", status="404") == 1
    assert value(registry, "skyrun_requests_total", route="/tasks/{task_id}", method="PUT", status="405") == 1
    assert value(registry, "skyrun_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(registry, "skyrun_request_duration_seconds_count", route="/tasks/{task_id}") == 3
    assert value(registry, "skyrun_request_duration_seconds_bucket", route="/livez", le="+Inf") == 1
    raw = {v for v in label_values(registry) if any(s in v for s in ("abcd1234", "zyxw9876", "vol12345", "/no/"))}
    assert raw == set(), f"raw paths as label values: {raw}"


def test_an_accepted_task_is_counted_and_no_rejection(api: tuple[TestClient, CollectorRegistry]) -> None:
    http, registry = api
    answer = http.post("/tasks/submit", json={"task_yaml": "run: echo hi"})
    assert answer.status_code == 200, answer.text
    assert value(registry, "skyrun_tasks_submitted_total") == 1
    rejections = [s for f in registry.collect() if f.name == "skyrun_submit_rejections" for s in f.samples]
    assert rejections == []


ONE_POD_QUOTA = {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}}


class RefusingKube(FakeKube):
    """The API server refuses the Job (admission)."""

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Job":
            raise ApiError(status=Status(code=422, message="Job.batch is invalid"))
        return await super().create(obj)


@pytest.mark.parametrize(
    ("kube", "body", "status", "reason"),
    [
        (FakeKube(), {"task_yaml": "run: x\n  bad: [indent"}, 400, "invalid_task"),
        (FakeKube(), {"task_yaml": "run: x\nnum_nodes: 0"}, 400, "invalid_task"),
        (FakeKube(), {"task_yaml": "run: x", "envs": {"NODE_RANK": "1"}}, 400, "invalid_task"),
        (FakeKube(), {"task_yaml": "run: x\nvolumes: {/data: mine}"}, 400, "unknown_volume"),
        (FakeKube([ONE_POD_QUOTA]), {"task_yaml": "run: x\nnum_nodes: 2"}, 400, "over_quota"),
        (FakeKube(), {"task_yaml": ""}, 422, "malformed_request"),
        (FakeKube(), {"envs": {}}, 422, "malformed_request"),
        (TaskKube(), {"task_yaml": "run: x"}, 409, "active_task_limit"),  # one running task, the cap is 1
        (RefusingKube(), {"task_yaml": "run: x"}, 400, "cluster_refused"),
    ],
    ids=["yaml", "spec", "envs", "volume", "quota", "empty", "missing", "cap", "admission"],
)
def test_a_refused_submission_is_counted_by_its_reason(
    kube: FakeKube, body: dict[str, Any], status: int, reason: str
) -> None:
    with app_with(kube, dev_trusted_user_header=True, max_active_tasks_per_user=1) as (http, registry):
        answer = http.post("/tasks/submit", json=body)
        assert answer.status_code == status, answer.text
        rejections = {s.labels["reason"]: s.value for f in registry.collect() if f.name == "skyrun_submit_rejections"
                      for s in f.samples if s.name.endswith("_total")}  # fmt: skip
        assert rejections == {reason: 1.0}
        assert value(registry, "skyrun_tasks_submitted_total") == 0
        assert value(registry, "skyrun_requests_total", route="/tasks/submit", method="POST", status=str(status)) == 1


class BrokenKube(FakeKube):
    async def objects(self, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        raise RuntimeError("a bug, not an API error")


def test_a_submission_the_launcher_cannot_own_is_a_503_and_no_rejection() -> None:
    with app_with(FakeKube(deployment=False), dev_trusted_user_header=True) as (http, registry):
        assert http.post("/tasks/submit", json={"task_yaml": "run: x"}).status_code == 503
        assert [s for f in registry.collect() if f.name == "skyrun_submit_rejections" for s in f.samples] == []
        assert value(registry, "skyrun_requests_total", route="/tasks/submit", method="POST", status="503") == 1


def test_an_unhandled_error_is_counted_once_as_a_500() -> None:
    with app_with(BrokenKube(), dev_trusted_user_header=True) as (http, registry):
        assert http.get("/tasks").status_code == 500
        assert value(registry, "skyrun_requests_total", route="/tasks", method="GET", status="500") == 1
        assert sum(s.value for f in registry.collect() if f.name == "skyrun_requests" for s in f.samples
                   if s.name == "skyrun_requests_total") == 1  # fmt: skip
        assert value(registry, "skyrun_request_duration_seconds_count", route="/tasks") == 1


class ReviewingKube(FakeKube):
    """TokenReview: only `good` is authenticated (for the launcher's audience); no one may act for all users."""

    async def token_review(self, token: str, audience: str) -> dict[str, Any]:
        if token == "good":
            return {"status": {"authenticated": True, "audiences": [audience], "user": {"username": USER}}}
        return {"status": {"authenticated": False}}


def test_auth_failures_are_counted_by_reason() -> None:
    with app_with(ReviewingKube()) as (http, registry):
        del http.headers["X-Skyrun-User"]
        assert http.get("/tasks").status_code == 401
        assert http.get("/tasks", headers={"Authorization": "Basic eDp5"}).status_code == 401
        assert http.get("/tasks", headers={"Authorization": "Bearer forged"}).status_code == 401
        good = {"Authorization": "Bearer good"}
        assert http.get("/tasks", headers=good).status_code == 200
        assert http.post("/tasks/stop", params={"all_users": True}, headers=good).status_code == 403
        assert value(registry, "skyrun_auth_failures_total", reason="missing_token") == 2
        assert value(registry, "skyrun_auth_failures_total", reason="invalid_token") == 1
        assert value(registry, "skyrun_auth_failures_total", reason="all_users_denied") == 1
        failures = {s.labels["reason"] for f in registry.collect() if f.name == "skyrun_auth_failures"
                    for s in f.samples}  # fmt: skip
        assert failures == {"missing_token", "invalid_token", "all_users_denied"}


def test_a_log_stream_is_an_open_stream_while_it_lasts_and_not_a_latency() -> None:
    kube = TaskKube()
    with app_with(kube, dev_trusted_user_header=True) as (http, registry):
        kube.registry = registry
        answer = http.get(f"/tasks/{TASK_ID}/logs", params={"follow": False})
        assert answer.status_code == 200, answer.text
        assert answer.text == "node-0 | step 1\nnode-0 | step 2\n"
        assert kube.streams_open_during_stream == [1.0, 1.0]
        assert value(registry, "skyrun_log_streams_open") == 0
        assert value(registry, "skyrun_requests_total", route=LOGS_ROUTE, method="GET", status="200") == 1
        assert registry.get_sample_value("skyrun_request_duration_seconds_count", {"route": LOGS_ROUTE}) is None
        assert value(registry, "skyrun_request_duration_seconds_count", route="/tasks/{task_id}") == 0


# --- the metrics port, over a real socket ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port` (from /proc/net/tcp: hex address, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """`python -m skyrun serve` with a kubeconfig whose API server is never called (only /livez is used)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "unused"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
    }))  # fmt: skip
    api_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "SKYRUN_"))}
    env |= {"KUBECONFIG": str(kubeconfig), "SKYRUN_HOST": "127.0.0.1", "SKYRUN_PORT": str(api_port),
            "SKYRUN_METRICS_PORT": str(metrics_port), "SKYRUN_RECONCILE_INTERVAL_S": "3600",
            "PYTHONPATH": str(ROOT)}  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "skyrun", "serve"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def live() -> bool:
        assert proc.poll() is None, f"the server exited:\n{log.read_text()}"
        return httpx.get(f"http://127.0.0.1:{api_port}/livez", timeout=2).status_code == 200

    try:
        try:  # not listening yet: a transport error, tried again
            eventually(f"/livez on 127.0.0.1:{api_port}", live, 60, 0.2, retry_on=(httpx.TransportError,))
        except TimeoutError as err:
            raise AssertionError(f"{err}\n{log.read_text()}") from None
        yield f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}", proc
    finally:
        stop_group(proc)


def test_the_metrics_port_serves_text_exposition_apart_from_the_api(
    server: tuple[str, str, subprocess.Popen[bytes]],
) -> None:
    api_url, metrics_url, _ = server
    metrics_port = int(metrics_url.rsplit(":", 1)[1])
    assert listening_addresses(metrics_port) == {"127.0.0.1"}, "the metrics port binds the API's host setting"
    assert httpx.get(f"{api_url}/metrics").status_code == 404, "metrics are not on the API port"

    answer = httpx.get(f"{metrics_url}/metrics", timeout=10)  # no token: the NetworkPolicy guards this port
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    expected = {"skyrun_requests", "skyrun_request_duration_seconds", "skyrun_tasks_submitted",
                "skyrun_submit_rejections", "skyrun_auth_failures", "skyrun_log_streams_open",
                "process_resident_memory_bytes"}  # fmt: skip
    assert expected <= families.keys()
    counted = {(s.labels["route"], s.labels["status"]): s.value for s in families["skyrun_requests"].samples
               if s.name == "skyrun_requests_total"}  # fmt: skip
    assert counted[("/livez", "200")] >= 1 and counted[("unmatched", "404")] == 1
    assert 'skyrun_requests_total{method="GET",route="/livez",status="200"}' in answer.text
