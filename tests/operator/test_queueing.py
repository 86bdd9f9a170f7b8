"""Unit tests of the operator's view of Kueue (trainop/queueing.py): Workloads as Kueue v0.17 writes them
(kueue.x-k8s.io/v1beta2) -> what the TrainingJob's status says, the eviction tally, the submission check."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from trainop.decide import PENDING, RUNNING, Observation, transition
from trainop.handlers import _queue_fields
from trainop.queueing import (
    QueueState,
    capacity_problems,
    missing_queue,
    owned_workload,
    pending_position,
    queue_state,
    why_waiting,
)
from workloads.trainingjob import DEFAULT_RESOURCES

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
WAITING_MESSAGE = (
    "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor default, 1 more needed"
)


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": "2030-01-01T00:00:00Z",
    }


def workload(*conditions: dict[str, Any], evictions: int = 0, owner: str = "job-uid") -> dict[str, Any]:
    """A Workload of the batch/job integration, as Kueue writes it."""
    status: dict[str, Any] = {"conditions": list(conditions)}
    if evictions:
        status["schedulingStats"] = {
            "evictions": [{"reason": "Preempted", "underlyingCause": "InClusterQueue", "count": evictions}]
        }
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": "job-run-a0-train-3f2a1",
            "namespace": "ml",
            "labels": {"kueue.x-k8s.io/job-uid": owner},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": "run-a0-train",
                    "uid": owner,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"queueName": "team-a", "podSets": [{"name": "main", "count": 2}]},
        "status": status,
    }


PENDING_WORKLOAD = workload(cond("QuotaReserved", "False", "Pending", WAITING_MESSAGE))
ADMITTED = workload(
    cond("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue team-a-cq"),
    cond("Admitted", "True", "Admitted", "The workload is admitted"),
)
# Kueue's scheduler has chosen it as a victim: Evicted is set first, then the Job is suspended and the quota freed.
BEING_EVICTED = workload(
    cond("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue team-a-cq"),
    cond(
        "Evicted",
        "True",
        "Preempted",
        "Preempted to accommodate a workload (UID: u-9) due to prioritization in the ClusterQueue",
    ),
    cond("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload (UID: u-9)"),
    evictions=1,
)
REQUEUED = workload(
    cond("QuotaReserved", "False", "Pending", WAITING_MESSAGE),
    cond("Admitted", "False", "NoReservation", "The workload has no reservation"),
    cond("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: u-9)"),
    cond("Requeued", "True", "Preempted", "Preempted to accommodate a workload (UID: u-9)"),
    evictions=1,
)
READMITTED = workload(
    cond("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue team-a-cq"),
    cond("Evicted", "False", "QuotaReserved", "Previously: Preempted to accommodate a workload (UID: u-9)"),
    evictions=1,
)
NAME = "job-run-a0-train-3f2a1"


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (workload(), QueueState(NAME, False, "Waiting", "waiting for Kueue to admit the Job", 0)),
        (PENDING_WORKLOAD, QueueState(NAME, False, "Quota", WAITING_MESSAGE, 0)),
        (ADMITTED, QueueState(NAME, True, "", "Quota reserved in ClusterQueue team-a-cq", 0)),
        (
            BEING_EVICTED,
            QueueState(
                NAME,
                False,
                "Evicted",
                "Preempted to accommodate a workload (UID: u-9) due to prioritization in the ClusterQueue",
                1,
                "Preempted",
            ),
        ),
        (REQUEUED, QueueState(NAME, False, "Quota", WAITING_MESSAGE, 1, "Preempted")),
        (READMITTED, QueueState(NAME, True, "", "Quota reserved in ClusterQueue team-a-cq", 1)),
    ],
    ids=["no-conditions-yet", "waiting", "admitted", "being-evicted", "requeued", "readmitted"],
)
def test_a_workload_as_kueue_writes_it(obj: dict[str, Any], expected: QueueState) -> None:
    assert queue_state(obj) == expected


def test_the_workload_is_the_one_the_job_owns() -> None:
    other = workload(owner="another-job")
    assert owned_workload("job-uid", [other, PENDING_WORKLOAD]) is PENDING_WORKLOAD
    assert owned_workload("job-uid", [other]) is None


@pytest.mark.parametrize(
    ("message", "word"),
    [
        (WAITING_MESSAGE, "Quota"),
        (
            "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor default, previously "
            "considered podsets requests (0) + current podset request (6) > maximum capacity (5)",
            "Capacity",
        ),
        ("couldn't assign flavors to pod set main: untolerated taint {gpu NoSchedule} in flavor gpu", "Flavor"),
        ("couldn't assign flavors to pod set main: flavor on-demand doesn't match node affinity", "Flavor"),
        (f"{WAITING_MESSAGE}. Pending the preemption of 1 workload(s)", "Preempting"),
        ("ClusterQueue team-a-cq is inactive", "Inactive"),
        ("something Kueue may say one day", "Waiting"),
    ],
)
def test_why_a_workload_waits_in_one_word(message: str, word: str) -> None:
    assert why_waiting(message) == word


def test_the_position_is_the_workloads_entry_of_the_visibility_api() -> None:
    summary = {
        "kind": "PendingWorkloadsSummary",
        "items": [
            {
                "metadata": {"name": "job-other-1", "namespace": "ml"},
                "priority": 0,
                "localQueueName": "team-a",
                "positionInClusterQueue": 0,
                "positionInLocalQueue": 0,
            },
            {
                "metadata": {"name": NAME, "namespace": "ml"},
                "priority": 0,
                "localQueueName": "team-a",
                "positionInClusterQueue": 3,
                "positionInLocalQueue": 1,
            },
        ],
    }
    assert pending_position(summary, NAME) == 2  # positionInLocalQueue 1: one ahead of it, so second in line
    assert pending_position(summary, "job-absent-1") is None
    assert pending_position({"items": []}, NAME) is None


def _seen(obj: dict[str, Any], state: str = PENDING) -> Observation:
    return Observation(state, "", reason="Preempted", queue=queue_state(obj))


def test_an_eviction_is_one_preemption_no_restart_and_no_new_attempt() -> None:
    running = {
        "phase": "Running",
        "attempt": 0,
        "restarts": 0,
        "preemptions": 0,
        "queueWorkload": NAME,
        "queueEvictions": 0,
    }
    step = transition(running, _seen(REQUEUED), max_restarts=3, now=NOW, backoff_base_s=10)
    assert (step.phase, step.reason, step.attempt, step.restarts, step.preemptions) == ("Pending", "Preempted", 0, 0, 1)
    written = {**running, **_queue_fields(step.queue), "phase": step.phase, "preemptions": step.preemptions}
    assert (written["queueWorkload"], written["queueEvictions"]) == (NAME, 1)
    # Seen again (every round of the timer, and once re-admitted): counted once.
    for obj, state in ((REQUEUED, PENDING), (READMITTED, RUNNING)):
        again = transition(written, _seen(obj, state), max_restarts=3, now=NOW, backoff_base_s=10)
        assert (again.preemptions, again.restarts, again.attempt) == (1, 0, 0)


def test_an_eviction_between_two_looks_is_counted_and_a_new_workload_counts_from_zero() -> None:
    status = {"phase": "Running", "attempt": 0, "preemptions": 2, "queueWorkload": NAME, "queueEvictions": 0}
    assert transition(status, _seen(READMITTED, RUNNING), max_restarts=3, now=NOW, backoff_base_s=10).preemptions == 3
    # A new attempt's Job has a Workload of its own: its evictions are new ones.
    old = {**status, "queueWorkload": "job-run-a0-train-00000", "queueEvictions": 5}
    assert transition(old, _seen(REQUEUED), max_restarts=3, now=NOW, backoff_base_s=10).preemptions == 3


def test_queue_fields_leave_the_position_and_reason_once_admitted() -> None:
    waiting = replace(queue_state(PENDING_WORKLOAD), position=4)
    assert _queue_fields(waiting) == {
        "queueWorkload": NAME,
        "queueEvictions": 0,
        "queueReason": "Quota",
        "queuePosition": 4,
    }
    assert _queue_fields(queue_state(READMITTED)) == {
        "queueWorkload": NAME,
        "queueEvictions": 1,
        "queueReason": None,
        "queuePosition": None,
    }
    assert _queue_fields(None) == {"queueReason": None, "queuePosition": None}


def local_queue(name: str, cluster_queue: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"clusterQueue": cluster_queue}}


def test_a_queue_that_does_not_exist_names_the_fix() -> None:
    queues = [local_queue("team-b", "cq-b"), local_queue("team-a", "cq-a")]
    assert missing_queue("team-a", "ml", queues) == ""
    assert missing_queue("team-c", "ml", queues) == (
        "spec.queueName=team-c: no LocalQueue team-c in namespace ml (it has team-a, team-b); use one that "
        "`kubectl get localqueues -n ml` lists, or remove spec.queueName"
    )
    assert missing_queue("team-c", "ml", []) == (
        "spec.queueName=team-c: no LocalQueue team-c in namespace ml (it has none); use one that "
        "`kubectl get localqueues -n ml` lists, or remove spec.queueName"
    )
    assert missing_queue("team-a", "ml", None) == (
        "spec.queueName=team-a: Kueue is not installed on this cluster (no kueue.x-k8s.io/v1beta2 LocalQueue API); "
        "remove spec.queueName or ask the platform team to install Kueue"
    )


def cluster_queue(name: str, cpu: str, cohort: str = "", lending: str | None = None) -> dict[str, Any]:
    quota: dict[str, Any] = {"name": "cpu", "nominalQuota": cpu}
    if lending is not None:
        quota["lendingLimit"] = lending
    spec: dict[str, Any] = {
        "resourceGroups": [
            {
                "coveredResources": ["cpu", "memory"],
                "flavors": [{"name": "default", "resources": [quota, {"name": "memory", "nominalQuota": "64Gi"}]}],
            }
        ],
    }
    if cohort:
        spec["cohortName"] = cohort
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec}


def test_a_gang_larger_than_the_queue_and_what_its_cohort_lends_is_refused_naming_the_resource() -> None:
    cqs = [cluster_queue("cq-a", "2", "research"), cluster_queue("cq-b", "4", "research", lending="1")]
    lq = local_queue("team-a", "cq-a")
    # requests 1 cpu per worker (DEFAULT_RESOURCES): 3 workers fit 2 + 1 lent; 4 do not
    assert capacity_problems("team-a", DEFAULT_RESOURCES, 3, lq, cqs) == []
    assert capacity_problems("team-a", DEFAULT_RESOURCES, 4, lq, cqs) == [
        "spec.resources.requests.cpu: cpu: the gang asks for 4 (4 nodes x 1), "
        "queue team-a can admit at most 3 "
        "(nominal 2 + 1 borrowable from cohort research): 1 too many; ask for less or have ClusterQueue cq-a's "
        "quota raised"
    ]
    # a LocalQueue whose ClusterQueue is not there: Kueue says why it waits, nothing is refused here
    assert capacity_problems("team-a", DEFAULT_RESOURCES, 40, local_queue("team-a", "gone"), cqs) == []
