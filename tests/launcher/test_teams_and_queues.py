"""Without a cluster: the Kueue admission bound (workloads/kueue_quota.py) with numbers worked out by hand, a volume
over the namespace's storage quota, queued statuses, and the team settings (one team per user, 403 for none, every
object in the team's namespace owned by its anchor ConfigMap, the Job suspended for Kueue)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from skyrun.app import create_app
from skyrun.settings import Settings, Team
from skyrun.status import queued
from skyrun.volumes import storage_quota_problems
from tests.launcher.test_units import ANCHOR, USER, FakeKube
from workloads.kueue_quota import capacities, queue_problems
from workloads.pod import Resources
from workloads.quota import task_demands

GI = Decimal(2**30)


def cq(name: str, cohort: str = "", **resources: dict[str, str]) -> dict[str, Any]:
    """A ClusterQueue with one resource group and one flavor `default`."""
    entries = [{"name": r.replace("_", "/").replace("nvidia/com", "nvidia.com"), **q} for r, q in resources.items()]
    spec: dict[str, Any] = {
        "resourceGroups": [{"coveredResources": [e["name"] for e in entries],
                            "flavors": [{"name": "default", "resources": entries}]}],
    }  # fmt: skip
    if cohort:
        spec["cohortName"] = cohort
    return {"metadata": {"name": name}, "spec": spec}


def demands(cpu: str, memory: str, nodes: int, gpus: int = 0) -> dict[str, Any]:
    return task_demands(Resources(cpu, cpu, memory, memory, gpus), nodes)


TEAM_A = cq("team-a", "ml-platform", cpu={"nominalQuota": "2"}, memory={"nominalQuota": "8Gi"})
# Lends at most 3 of its 5 cpus (lendingLimit), all 16Gi of memory.
TEAM_B = cq("team-b", "ml-platform", cpu={"nominalQuota": "5", "lendingLimit": "3"}, memory={"nominalQuota": "16Gi"})
# Lends 1 cpu; in another cohort, it lends nothing to team-a.
TEAM_C = cq("team-c", "ml-platform", cpu={"nominalQuota": "1"})
OTHER = cq("other", "elsewhere", cpu={"nominalQuota": "100"})
ALL = [TEAM_A, TEAM_B, TEAM_C, OTHER]


def test_capacity_is_nominal_plus_what_the_cohort_can_lend() -> None:
    caps = capacities(TEAM_A, ALL)
    # cpu: 2 nominal + (min(5, lendingLimit 3) from team-b + 1 from team-c) = 2 + 4 = 6; `other` is not in the cohort.
    assert [(c.flavor, c.nominal, c.borrowable) for c in caps["cpu"]] == [("default", 2, 4)]
    # memory: 8Gi + 16Gi from team-b (team-c has no memory quota) = 24Gi.
    assert caps["memory"][0].total == 24 * GI


def test_a_task_over_what_the_queue_could_ever_admit_is_named_with_the_numbers() -> None:
    problems = queue_problems(demands("2", "1Gi", 4), "team-a", TEAM_A, ALL)
    assert [(p.field, p.message) for p in problems] == [
        ("resources.cpus", "cpu: the task asks for 8 (4 nodes x 2), queue team-a can admit at most 6 (nominal 2 + 4 "
                           "borrowable from cohort ml-platform): 2 too many; ask for less or have ClusterQueue "
                           "team-a's quota raised"),
    ]  # fmt: skip
    # exactly 6 cpus and 24Gi: admissible (borrowing all the cohort can lend)
    assert queue_problems(demands("1500m", "6Gi", 4), "team-a", TEAM_A, ALL) == []
    over_memory = queue_problems(demands("1", "13Gi", 2), "team-a", TEAM_A, ALL)
    assert [p.message.split(";")[0] for p in over_memory] == [
        "memory: the task asks for 26Gi (2 nodes x 13Gi), queue team-a can admit at most 24Gi (nominal 8Gi + 16Gi "
        "borrowable from cohort ml-platform): 2Gi too many"
    ]


def test_the_borrowing_limit_caps_what_the_cohort_lends() -> None:
    limited = cq("team-a", "ml-platform", cpu={"nominalQuota": "2", "borrowingLimit": "1"})
    # 2 + min(borrowingLimit 1, 4 lendable) = 3
    problems = queue_problems(demands("1", "1Gi", 4), "team-a", limited, [limited, TEAM_B, TEAM_C])
    assert problems[0].message.startswith(
        "cpu: the task asks for 4 (4 nodes x 1), queue team-a can admit at most 3 (nominal 2 + 1 borrowable from "
        "cohort ml-platform): 1 too many"
    )


def test_without_a_cohort_only_the_nominal_quota_counts() -> None:
    alone = cq("solo", cpu={"nominalQuota": "4"}, memory={"nominalQuota": "4Gi"})
    problems = queue_problems(demands("3", "1Gi", 2), "solo-q", alone, [alone, TEAM_B])
    assert [p.message.split(";")[0] for p in problems] == [
        "cpu: the task asks for 6 (2 nodes x 3), queue solo-q can admit at most 4 (nominal 4): 2 too many"
    ]


def test_a_resource_the_queue_has_no_quota_for_is_refused_and_pods_only_when_covered() -> None:
    problems = queue_problems(demands("1", "1Gi", 1, gpus=2), "team-a", TEAM_A, ALL)
    assert [(p.field, p.message) for p in problems] == [
        ("resources.accelerators", "nvidia.com/gpu: the task asks for 2, queue team-a (ClusterQueue team-a) has no "
                                   "quota for nvidia.com/gpu at all; ask for none or use another queue"),
    ]  # fmt: skip
    with_pods = cq("p", cpu={"nominalQuota": "10"}, memory={"nominalQuota": "10Gi"}, pods={"nominalQuota": "3"})
    problems = queue_problems(demands("1", "1Gi", 4), "p", with_pods, [with_pods])
    assert [p.message.split(";")[0] for p in problems] == [
        "pods: the task asks for 4 pods (one per node), queue p can admit at most 3 (nominal 3): 1 too many"
    ]


def test_every_resource_must_fit_one_flavor_of_its_group() -> None:
    two_flavors = {"metadata": {"name": "split"}, "spec": {"resourceGroups": [{
        "coveredResources": ["cpu", "memory"],
        "flavors": [
            {"name": "big-cpu", "resources": [{"name": "cpu", "nominalQuota": "8"},
                                              {"name": "memory", "nominalQuota": "1Gi"}]},
            {"name": "big-mem", "resources": [{"name": "cpu", "nominalQuota": "1"},
                                              {"name": "memory", "nominalQuota": "32Gi"}]},
        ],
    }]}}  # fmt: skip
    problems = queue_problems(demands("4", "8Gi", 1), "q", two_flavors, [two_flavors])
    assert [(p.field, p.message) for p in problems] == [
        ("resources", "the task asks for cpu 4, memory 8Gi: each fits some flavor of queue q (ClusterQueue split) "
                      "but no single flavor fits them all, and a task's pods share one flavor; ask for less or have "
                      "ClusterQueue split's quota raised"),
    ]  # fmt: skip
    assert queue_problems(demands("4", "1Gi", 1), "q", two_flavors, [two_flavors]) == []


def storage_quota(hard: dict[str, str], used: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "team-quota"}, "spec": {"hard": hard}, "status": {"hard": hard, "used": used}}


def test_a_volume_over_what_the_storage_quota_has_left_is_named_with_the_fix() -> None:
    quota = storage_quota({"requests.storage": "50Gi", "persistentvolumeclaims": "4"},
                          {"requests.storage": "45Gi", "persistentvolumeclaims": "4"})  # fmt: skip
    problems = storage_quota_problems(20 * GI, None, [quota])
    assert [(p.field, p.message) for p in problems] == [
        ("size", "requests.storage: the volume asks 20Gi, the namespace quota team-quota has 5Gi left of 50Gi (45Gi "
                 "used); ask for less, delete a volume you no longer need, or have ResourceQuota team-quota raised"),
        ("name", "persistentvolumeclaims: the namespace quota team-quota allows 4 volumes (claims) and 4 exist; "
                 "delete a volume you no longer need or have ResourceQuota team-quota raised"),
    ]  # fmt: skip
    assert storage_quota_problems(5 * GI, None, [storage_quota({"requests.storage": "50Gi"},
                                                               {"requests.storage": "45Gi"})]) == []  # fmt: skip
    per_class = storage_quota({"fast.storageclass.storage.k8s.io/requests.storage": "10Gi"}, {})
    assert len(storage_quota_problems(11 * GI, "fast", [per_class])) == 1
    assert storage_quota_problems(11 * GI, "slow", [per_class]) == []


def test_a_queued_task_says_why_it_waits_and_where() -> None:
    job = {"metadata": {"name": "sky-x", "uid": "job-uid"}, "spec": {"suspend": True}}
    workload = {"metadata": {"name": "job-sky-x-1a2b3", "ownerReferences": [{"kind": "Job", "uid": "job-uid"}]},
                "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending",
                                           "message": "couldn't assign flavors to pod set main: insufficient unused "
                                                      "quota for cpu in flavor default, 1 more needed"}]}}  # fmt: skip
    pending = [{"metadata": {"name": "job-sky-x-1a2b3"}, "positionInLocalQueue": 1, "positionInClusterQueue": 4}]
    waiting = queued(job, "team-a", [workload], pending)
    assert waiting.queue_position == 2, "Kueue counts from 0, the API from 1"
    assert waiting.waiting_reason == (
        "Pending: couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default, 1 more "
        "needed"
    )
    assert waiting.message == f"queued in team-a at position 2: {waiting.waiting_reason}"
    unknown = queued(job, "team-a", [workload], [])
    assert unknown.queue_position is None and unknown.message == f"queued in team-a: {waiting.waiting_reason}"
    assert queued(job, "team-a", [], []).message == "queued in team-a: waiting for Kueue to create its Workload"


TEAMS = [
    {"name": "team-a", "namespace": "ml-team-a", "users": [USER], "queue": "team-a"},
    {"name": "rest", "namespace": "ml-rest", "users": ["*"], "queue": ""},
]


def test_settings_refuse_a_user_in_two_teams_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="user 'alice' is in teams 'a' and 'b': a user has one team"):
        Settings(teams=(Team(name="a", namespace="a", users=("alice",)),
                        Team(name="b", namespace="b", users=("alice",))))  # fmt: skip
    with pytest.raises(ValidationError, match=r"every other user \(`\*`\) is in teams 'a' and 'b'"):
        Settings(teams=(Team(name="a", namespace="a", users=("*",)), Team(name="b", namespace="b", users=("*",))))
    with pytest.raises(ValidationError, match="two teams have namespace 'a'"):
        Settings(teams=(Team(name="a", namespace="a", users=("x",)), Team(name="b", namespace="a", users=("y",))))
    monkeypatch.setitem(os.environ, "SKYRUN_TEAMS", json.dumps(TEAMS))
    settings = Settings()
    assert settings.team_of(USER).name == "team-a"  # type: ignore[union-attr]
    assert settings.team_of("someone:else").namespace == "ml-rest"  # type: ignore[union-attr]
    assert settings.namespaces() == ["ml-team-a", "ml-rest"]
    assert Settings(teams=(Team(name="a", namespace="a", users=("x",)),)).team_of("y") is None


@pytest.fixture
def teams_api() -> Iterator[tuple[TestClient, FakeKube]]:
    local_queues = {"team-a": {"metadata": {"name": "team-a"}, "spec": {"clusterQueue": "team-a"}}}
    kube = FakeKube(local_queues=local_queues, cluster_queues=ALL)
    settings = Settings(dev_trusted_user_header=True, reconcile_interval_s=3600,
                        teams=tuple(Team.model_validate(t) for t in TEAMS[:1]))  # fmt: skip
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    with TestClient(app, headers={"X-Skyrun-User": USER}) as http:
        app.state.launcher.kube = kube
        app.state.auth.kube = kube
        yield http, kube


def test_a_team_task_lives_in_the_team_namespace_owned_by_its_anchor_and_waits_for_kueue(
    teams_api: tuple[TestClient, FakeKube],
) -> None:
    http, kube = teams_api
    answer = http.post("/tasks/submit", json={"task_yaml": "run: x\nresources: {cpus: 1}"})
    assert answer.status_code == 200, answer.text
    created = [obj for op, obj in kube.writes if op == "create"]
    assert sorted(o["kind"] for o in created) == ["ConfigMap", "Job", "NetworkPolicy", "Service"]
    assert {o["metadata"]["namespace"] for o in created} == {"ml-team-a"}
    assert {(r["kind"], r["name"], r["uid"]) for o in created for r in o["metadata"]["ownerReferences"]} == {
        ("ConfigMap", ANCHOR, "anchor-ml-team-a")
    }
    job = next(o for o in created if o["kind"] == "Job")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert set(kube.namespaces) == {"ml-team-a"}, "nothing read or written in the platform namespace"
    assert [lease["spec"]["holderIdentity"] for lease in kube.leases.values()] == [None], "the lock is released"


def test_refusals_of_a_team_create_nothing(teams_api: tuple[TestClient, FakeKube]) -> None:
    http, kube = teams_api
    over = http.post("/tasks/submit", json={"task_yaml": "run: x\nnum_nodes: 4\nresources: {cpus: 2}"})
    assert over.status_code == 422
    assert over.json()["detail"][0]["message"].startswith("cpu: the task asks for 8 (4 nodes x 2), queue team-a can")
    stranger = http.post("/tasks/submit", json={"task_yaml": "run: x"}, headers={"X-Skyrun-User": "mallory"})
    assert stranger.status_code == 403
    assert stranger.json()["detail"].startswith("mallory is in no team of this launcher: an administrator adds them")
    assert http.get("/volumes", headers={"X-Skyrun-User": "mallory"}).status_code == 403
    kube.local_queues.clear()
    missing = http.post("/tasks/submit", json={"task_yaml": "run: x"})
    assert missing.status_code == 422
    assert missing.json()["detail"].startswith("queue team-a (a Kueue LocalQueue) is not in namespace ml-team-a")
    kube.quotas = [storage_quota({"requests.storage": "10Gi"}, {"requests.storage": "8Gi"})]
    volume = http.post("/volumes/create", json={"name": "data", "size": "5"})
    assert volume.status_code == 400
    assert volume.json()["detail"][0]["message"].startswith("requests.storage: the volume asks 5Gi, the namespace")
    assert kube.writes == []


def test_without_the_anchor_a_team_submission_is_503_and_creates_nothing(
    teams_api: tuple[TestClient, FakeKube], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, kube = teams_api
    original = kube.get

    async def no_anchor(ns: str, kind: str, name: str) -> dict[str, Any] | None:
        return None if (kind, name) == ("ConfigMap", ANCHOR) else await original(ns, kind, name)

    monkeypatch.setattr(kube, "get", no_anchor)
    answer = http.post("/tasks/submit", json={"task_yaml": "run: x"})
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("the anchor ConfigMap skyrun-anchor is not in namespace ml-team-a")
    assert kube.writes == []
