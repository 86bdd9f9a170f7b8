"""Refusing at submission a task the namespace's ResourceQuotas can never admit: the check as a pure function with
hand-computed numbers and messages, and through the API (a 400 naming each key, nothing created)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from skyrun.app import create_app
from skyrun.settings import Settings
from tests.launcher.test_units import USER, FakeKube
from workloads.pod import Resources
from workloads.quantity import format_quantity
from workloads.quota import quota_problems


def quota(name: str, hard: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"hard": hard, **spec}}


def per_node(cpu: str = "1", memory: str = "2Gi", gpus: int = 0) -> Resources:
    return Resources(cpu_request=cpu, cpu_limit=cpu, memory_request=memory, memory_limit=memory, gpus=gpus)


def messages(res: Resources, nodes: int, *quotas: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in quota_problems(res, nodes, quotas)]


def test_memory_over_the_platform_quota_names_the_key_the_numbers_and_the_config_key() -> None:
    platform = quota("platform-quota", {"limits.memory": "10Gi"})
    assert messages(per_node(memory="8Gi"), 2, platform) == [(
        "resources.memory",
        "limits.memory: the task asks 2 x 8Gi = 16Gi, the namespace quota platform-quota allows 10Gi in all "
        "(6Gi over); ask for less or raise quotaMemory",
    )]  # fmt: skip


def test_every_key_of_every_quota_is_checked_and_each_problem_reported() -> None:
    platform = quota("platform-quota", {
        "requests.cpu": "1", "limits.cpu": "2", "requests.memory": "16Gi", "limits.memory": "16Gi", "pods": "3",
        "requests.nvidia.com/gpu": "2",
    })  # fmt: skip
    team = quota("team-cap", {"count/jobs.batch": "0", "cpu": "1200m", "requests.storage": "1Gi"})
    # Equal to `hard` is admitted (limits.cpu, both memory keys); requests.storage is nothing a task asks for.
    assert messages(per_node(cpu="500m", memory="4Gi", gpus=2), 4, team, platform) == [
        ("num_nodes", "pods: the task asks 4 pods (one per node), the namespace quota platform-quota allows 3 in all "
                      "(1 over); ask for fewer nodes or raise quotaPods"),
        ("resources.cpus", "requests.cpu: the task asks 4 x 500m = 2, the namespace quota platform-quota allows 1 in "
                           "all (1 over); ask for less or raise quotaCpu"),
        ("resources.accelerators", "requests.nvidia.com/gpu: the task asks 4 x 2 = 8, the namespace quota "
                                   "platform-quota allows 2 in all (6 over); ask for less or raise quotaGpus"),
        ("task", "count/jobs.batch: the task asks 1, the namespace quota team-cap allows 0 in all (1 over); have "
                 "ResourceQuota team-cap raised"),
        ("resources.cpus", "cpu: the task asks 4 x 500m = 2, the namespace quota team-cap allows 1200m in all "
                           "(800m over); ask for less or have ResourceQuota team-cap raised"),
    ]  # fmt: skip


def test_a_task_within_every_quota_is_not_refused_whatever_is_in_use() -> None:
    full = quota("platform-quota", {"limits.memory": "10Gi", "limits.cpu": "2", "pods": "2"},
                 status={"used": {"limits.memory": "10Gi", "limits.cpu": "2", "pods": "2"}})  # fmt: skip
    assert messages(per_node(cpu="1", memory="5Gi"), 2, full) == [], "exactly the quota fits; use only waits"
    assert messages(per_node(), 64) == [], "no quota: nothing is refused"
    gpu_quota = quota("platform-quota", {"requests.nvidia.com/gpu": "0"})
    assert messages(per_node(), 1, gpu_quota) == [], "a task without GPUs asks for none"


@pytest.mark.parametrize(
    ("scopes", "applies"),
    [
        ({"scopes": ["NotBestEffort"]}, True),
        ({"scopes": ["NotTerminating", "NotBestEffort"]}, True),
        ({"scopes": ["BestEffort"]}, False),
        ({"scopes": ["Terminating"]}, False),
        ({"scopeSelector": {"matchExpressions": [{"scopeName": "NotTerminating", "operator": "Exists"}]}}, True),
        ({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In",
                                                  "values": ["high"]}]}}, False),
    ],
)  # fmt: skip
def test_a_scoped_quota_counts_only_when_its_scopes_match_the_tasks_pods(scopes: dict[str, Any], applies: bool) -> None:
    scoped = quota("scoped", {"limits.cpu": "1"}, **scopes)
    assert bool(messages(per_node(cpu="2"), 1, scoped)) is applies


@pytest.mark.parametrize(
    ("value", "binary", "text"),
    [
        (Decimal(16 * 2**30), True, "16Gi"),
        (Decimal(16 * 2**30 - 10**10), True, "7011591Ki"),  # 16Gi - 10G: exact, in the shortest spelling
        (Decimal(3 * 10**9), True, "3G"),
        (Decimal("1.5"), False, "1500m"),
        (Decimal(4), False, "4"),
        (Decimal(0), True, "0"),
    ],
)
def test_quantities_are_spelled_exactly(value: Decimal, binary: bool, text: str) -> None:
    assert format_quantity(value, binary=binary) == text


def test_a_task_over_the_quota_is_a_400_naming_each_key_and_creates_nothing() -> None:
    kube = FakeKube(quotas=[quota("platform-quota", {"limits.memory": "10Gi", "requests.memory": "10Gi"})])
    app = create_app(Settings(dev_trusted_user_header=True, reconcile_interval_s=3600), client=object())  # type: ignore[arg-type]
    with TestClient(app, headers={"X-Skyrun-User": USER}) as http:
        app.state.launcher.kube = kube
        answer = http.post("/tasks/submit", json={"task_yaml": "num_nodes: 2\nresources: {memory: 8}\nrun: x"})
        assert answer.status_code == 400, answer.text
        assert [d["message"].split(":")[0] for d in answer.json()["detail"]] == ["limits.memory", "requests.memory"]
        assert {d["field"] for d in answer.json()["detail"]} == {"resources.memory"}
        assert kube.writes == []
        under = http.post("/tasks/submit", json={"task_yaml": "num_nodes: 2\nresources: {memory: 5}\nrun: x"})
        assert under.status_code == 200, under.text
