"""Kueue's real manager (tests/engine/kueue.py) queueing Jobs on the engine tier: its webhooks called by the API
server, admission against ClusterQueue quota in a cohort, and its visibility API served through the API server's
aggregation layer.

Two ClusterQueues, team-a and team-b, share the cohort `research` with 1 CPU and 1Gi each of the flavor
`research-default`; each has a LocalQueue in a namespace of its own. kwok runs the admitted Jobs' pods; the pods
here carry kwok's pod-complete delay annotation so they keep running (and holding quota) until the test deletes
their Job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.cluster import LocalCluster
from tests.engine.kueue import KueueManager, kueue  # noqa: F401  (the fixture)
from tests.harness.api import condition
from tests.harness.wait import eventually

pytestmark = pytest.mark.engine

KUEUE = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
URGENT = "urgent"
COHORT = "research"
FLAVOR = "research-default"  # this module's own: its teardown does not wait for the flavor to be gone
TEAMS = {"team-a": "kueue-team-a", "team-b": "kueue-team-b"}
"""ClusterQueue (and LocalQueue) name -> the namespace of its LocalQueue."""
RUNNING_FOREVER = {
    "pod-complete.stage.kwok.x-k8s.io/delay": "1h",
    "pod-complete.stage.kwok.x-k8s.io/jitter-delay": "1h",
}
WAIT_S = 60


def cluster_queue(name: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {
            "cohortName": COHORT,
            "namespaceSelector": {},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": FLAVOR, "resources": [
                {"name": "cpu", "nominalQuota": "1"}, {"name": "memory", "nominalQuota": "1Gi"}]}]}],
        },
    }  # fmt: skip


def job(name: str, namespace: str, queue: str, cpu: str, priority_class: str | None = None) -> dict[str, Any]:
    """One pod asking for `cpu` and 256Mi, created unsuspended (Kueue's webhook is what suspends it)."""
    labels = {QUEUE_LABEL: queue, **({PRIORITY_LABEL: priority_class} if priority_class else {})}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "suspend": False, "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": RUNNING_FOREVER},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "main", "image": "registry.invalid/sleep:1",
                    "resources": {"requests": {"cpu": cpu, "memory": "256Mi"},
                                  "limits": {"cpu": cpu, "memory": "256Mi"}}}]},
            },
        },
    }  # fmt: skip


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


@pytest.fixture(scope="module")
def queues(cluster: LocalCluster, kueue: KueueManager) -> Iterator[None]:  # noqa: F811  (the imported fixture)
    api = cluster.api
    api.apply({"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}})
    api.apply({"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": URGENT}, "value": 100})
    for name, namespace in TEAMS.items():
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        api.apply(cluster_queue(name))
        api.apply({"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
                   "spec": {"clusterQueue": name}})  # fmt: skip
    for name, namespace in TEAMS.items():
        eventually(f"ClusterQueue {name} Active", lambda n=name: condition(api.get(KUEUE, "ClusterQueue", n),
                                                                            "Active") == "True", WAIT_S)  # fmt: skip
        eventually(f"LocalQueue {namespace}/{name} Active",
                   lambda n=name, ns=namespace: condition(api.get(KUEUE, "LocalQueue", n, ns), "Active") == "True",
                   WAIT_S)  # fmt: skip
    yield
    # Deleted without waiting (their kwok pods take a minute to terminate): the names, the cohort and the flavor are
    # this module's own, and Kueue's finalizers hold each queue until its Workloads are gone.
    for namespace in TEAMS.values():
        api.delete("v1", "Namespace", namespace)
    for name in TEAMS:
        api.delete(KUEUE, "ClusterQueue", name)
    api.delete(KUEUE, "ResourceFlavor", FLAVOR)
    api.delete(KUEUE, "WorkloadPriorityClass", URGENT)


def workload_of(cluster: LocalCluster, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The Workload Kueue made for a Job (owned by it)."""
    for wl in cluster.api.items(KUEUE, "Workload", namespace):
        if any(ref["kind"] == "Job" and ref["name"] == job_name for ref in wl["metadata"].get("ownerReferences", [])):
            return wl
    return None


def admitted(cluster: LocalCluster, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The Job once Kueue admitted it: its Workload Admitted and the Job unsuspended."""
    wl = workload_of(cluster, namespace, job_name)
    live = cluster.api.get("batch/v1", "Job", job_name, namespace)
    if condition(wl, "Admitted") == "True" and live and live["spec"]["suspend"] is False:
        return live
    return None


def pending(cluster: LocalCluster, namespace: str, job_name: str) -> dict[str, Any] | None:
    """The QuotaReserved=False condition of the Job's Workload, once Kueue tried and failed to fit it."""
    found = conditions(workload_of(cluster, namespace, job_name)).get("QuotaReserved")
    return found if found and found["status"] == "False" and found.get("message") else None


def test_jobs_are_suspended_queued_admitted_within_the_cohort_and_listed_while_pending(
    cluster: LocalCluster,
    kueue: KueueManager,  # noqa: F811  (the imported fixture)
    queues: None,
) -> None:
    api = cluster.api
    ns_a, ns_b = TEAMS["team-a"], TEAMS["team-b"]

    # Created unsuspended; what the API server stores is suspended: Kueue's mutating webhook ran.
    created = api.create(job("a-1", ns_a, "team-a", "1"))
    assert created["spec"]["suspend"] is True
    eventually("job a-1 admitted", lambda: admitted(cluster, ns_a, "a-1"), WAIT_S)
    wl = workload_of(cluster, ns_a, "a-1")
    assert wl is not None
    assert wl["status"]["admission"]["clusterQueue"] == "team-a"
    assert wl["status"]["admission"]["podSetAssignments"][0]["flavors"] == {"cpu": FLAVOR, "memory": FLAVOR}
    eventually("job a-1's pod Running", lambda: [p for p in api.items("v1", "Pod", ns_a, "job-name=a-1")
                                                 if p["status"].get("phase") == "Running"], WAIT_S)  # fmt: skip

    # team-a is at its nominal quota; team-b's idle CPU is lent within the cohort.
    api.create(job("a-2", ns_a, "team-a", "1"))
    eventually("job a-2 admitted (borrowing from team-b)", lambda: admitted(cluster, ns_a, "a-2"), WAIT_S)
    cq_a = eventually("team-a's usage of 2 CPUs, 1 borrowed", lambda: _borrowing(cluster, "team-a"), WAIT_S)
    assert cq_a == {"name": "cpu", "total": "2", "borrowed": "1"}

    # The cohort's 2 CPUs are in use: team-b's own Jobs wait (no preemption configured), the urgent one first
    # (priority, then creation time, whose resolution is a second: the priority makes the order certain).
    api.create(job("b-1", ns_b, "team-b", "1"))
    api.create(job("b-2", ns_b, "team-b", "500m", priority_class=URGENT))
    reason = eventually("job b-1 pending", lambda: pending(cluster, ns_b, "b-1"), WAIT_S)
    assert reason["reason"] == "Pending"
    assert reason["message"] == (
        f"couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor {FLAVOR}, 1 more needed"
    )
    assert api.get("batch/v1", "Job", "b-1", ns_b)["spec"]["suspend"] is True  # type: ignore[index]
    eventually("job b-2 pending", lambda: pending(cluster, ns_b, "b-2"), WAIT_S)

    summary = eventually("two pending workloads in team-b's LocalQueue",
                         lambda: len(kueue.pending_workloads(ns_b, "team-b")["items"]) == 2
                         and kueue.pending_workloads(ns_b, "team-b"), WAIT_S)  # fmt: skip
    listed = [(item["metadata"]["ownerReferences"][0]["name"], item["localQueueName"], item["positionInLocalQueue"],
               item["positionInClusterQueue"]) for item in summary["items"]]  # fmt: skip
    assert listed == [("b-2", "team-b", 0, 0), ("b-1", "team-b", 1, 1)]
    assert [item["priority"] for item in summary["items"]] == [100, 0]
    assert kueue.pending_workloads(ns_a, "team-a")["items"] == []

    # Quota freed: team-b gets its nominal CPU back, admits the urgent 500m Job, and has 500m too few for b-1.
    api.delete("batch/v1", "Job", "a-1", ns_a)
    eventually("job b-2 admitted after a-1 ended", lambda: admitted(cluster, ns_b, "b-2"), WAIT_S)
    still = eventually("job b-1 pending for 500m", lambda: (pending(cluster, ns_b, "b-1") or {}).get("message", "")
                       .endswith("500m more needed") and pending(cluster, ns_b, "b-1"), WAIT_S)  # fmt: skip
    assert still["message"] == (
        f"couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor {FLAVOR}, "
        "500m more needed"
    )


def _borrowing(cluster: LocalCluster, name: str) -> dict[str, str] | None:
    cq = cluster.api.get(KUEUE, "ClusterQueue", name)
    for flavor in ((cq or {}).get("status") or {}).get("flavorsUsage") or []:
        for res in flavor["resources"]:
            if res["name"] == "cpu" and res.get("borrowed") not in (None, "0"):
                return {"name": "cpu", "total": res["total"], "borrowed": res["borrowed"]}
    return None


def test_a_job_naming_a_local_queue_that_does_not_exist_stays_suspended(cluster: LocalCluster, queues: None) -> None:
    api = cluster.api
    ns = TEAMS["team-a"]
    created = api.create(job("orphan", ns, "no-such-queue", "100m"))
    assert created["spec"]["suspend"] is True
    found = eventually("the orphan Job's Workload with a condition",
                       lambda: conditions(workload_of(cluster, ns, "orphan")).get("QuotaReserved"), WAIT_S)  # fmt: skip
    assert (found["status"], found["reason"], found["message"]) == (
        "False",
        "Inadmissible",
        "LocalQueue no-such-queue doesn't exist",
    )
    assert api.get("batch/v1", "Job", "orphan", ns)["spec"]["suspend"] is True  # type: ignore[index]
    assert api.items("v1", "Pod", ns, "job-name=orphan") == []
