"""Kueue, as the operator sees it: pure functions of the objects Kueue writes (kueue.x-k8s.io/v1beta2), no I/O.

A TrainingJob with `spec.queueName` gets a Job with Kueue's queue label, created suspended; Kueue makes a Workload
for it (owned by the Job), reserves quota in the LocalQueue's ClusterQueue and admits the Job by unsuspending it.
When Kueue takes the quota back (a preemption by a higher-priority workload, a reclaim within the cohort, a
stopped queue) it marks the Workload Evicted, suspends the Job (its pods go, the trainer writes a checkpoint on
SIGTERM) and queues the Workload again; re-admitted, the same Job resumes from the newest checkpoint. So an
eviction is neither a failure nor a new attempt: it is counted in `status.preemptions`, once, from the Workload's
own tally (`status.schedulingStats.evictions`), which the TrainingJob's status remembers per Workload
(`queueWorkload`, `queueEvictions`).

`submission_problems` is the check made before anything is created: the LocalQueue exists (else InvalidSpec with
the fix) and its ClusterQueue could ever admit the gang (workloads.kueue_quota).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workloads.kueue_quota import queue_problems
from workloads.pod import GPU_RESOURCE, Resources
from workloads.quota import Demand, trainingjob_demands

KUEUE_VERSION = "v1beta2"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""Kueue's label on the Workload of a Job: the Job's uid."""
WAITING = "waiting for Kueue to admit the Job"
# Words of Kueue's scheduler (pkg/scheduler/flavorassigner, scheduler.go) -> why the Workload waits, in one word.
_WHY = (
    ("Pending the preemption", "Preempting"),
    ("insufficient unused quota", "Quota"),
    ("> maximum capacity", "Capacity"),
    ("untolerated taint", "Flavor"),
    ("doesn't match node affinity", "Flavor"),
    ("does not provide resource", "Flavor"),
    ("unavailable in ClusterQueue", "Flavor"),
    ("is inactive", "Inactive"),
    ("not found", "Inactive"),
    ("doesn't exist", "Inactive"),
    ("waiting for all admitted workloads", "WaitForPodsReady"),
)


@dataclass(frozen=True)
class QueueState:
    """What Kueue says of the current attempt's Job, from its Workload (and the visibility API)."""

    workload: str
    """The Workload's name (`kubectl describe workload NAME`)."""
    admitted: bool
    """Quota is reserved (QuotaReserved=True) and the Workload is not being evicted."""
    reason: str
    """Why it waits, in one word (Quota, Capacity, Flavor, Preempting, Inactive, Evicted, Waiting); empty when
    admitted."""
    message: str
    """Kueue's own words: the QuotaReserved condition's message (or the eviction's while it is being evicted)."""
    evictions: int
    """Evictions of this Workload so far, every reason (Kueue's schedulingStats tally)."""
    evicted_by: str = ""
    """The reason of the last eviction (Preempted, PodsReadyTimeout, ClusterQueueStopped, ...) while the Workload
    waits to be admitted again after it; empty otherwise."""
    position: int | None = None
    """Place in the LocalQueue, 1 = next (the visibility API's positionInLocalQueue + 1); None when it does not
    answer or lists it not."""


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def owned_workload(job_uid: str, workloads: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The Workload Kueue made for the Job `job_uid` (owned by it), or None while there is none."""
    for workload in workloads:
        if any(o.get("uid") == job_uid for o in workload["metadata"].get("ownerReferences") or []):
            return workload
    return None


def why_waiting(message: str) -> str:
    """One word for a QuotaReserved=False message of Kueue's scheduler; `Waiting` for words it does not know."""
    return next((word for words, word in _WHY if words in message), "Waiting")


def queue_state(workload: Mapping[str, Any], position: int | None = None) -> QueueState:
    """A Workload as Kueue writes it -> QueueState."""
    name = str(workload["metadata"]["name"])
    stats = (workload.get("status") or {}).get("schedulingStats") or {}
    evictions = sum(int(e.get("count", 0)) for e in stats.get("evictions") or [])
    reserved, evicted = _condition(workload, "QuotaReserved"), _condition(workload, "Evicted")
    evicted_by = str(evicted.get("reason", "")) if evicted.get("status") == "True" else ""
    if evicted_by and reserved.get("status") == "True":  # Kueue is taking the quota back: the Job is suspended next
        return QueueState(name, False, "Evicted", str(evicted.get("message", "")), evictions, evicted_by, position)
    if reserved.get("status") == "True":
        return QueueState(name, True, "", str(reserved.get("message", "")), evictions)
    message = str(reserved.get("message", "")) or WAITING
    return QueueState(name, False, why_waiting(message), message, evictions, evicted_by, position)


def pending_position(pending: Mapping[str, Any], workload: str) -> int | None:
    """The Workload's place in its LocalQueue, counted from 1 (next) as the launcher counts it: Kueue's
    positionInLocalQueue (0 = next) + 1, from a visibility API answer (PendingWorkloadsSummary), if listed."""
    for item in pending.get("items") or []:
        if (item.get("metadata") or {}).get("name") == workload and "positionInLocalQueue" in item:
            return int(item["positionInLocalQueue"]) + 1
    return None


def gang_demands(per_worker: Resources, workers: int) -> dict[str, Demand]:
    """What Kueue counts of the gang, by resource name: the pods' requests (not their limits) and the pods."""
    demands = trainingjob_demands(per_worker, workers)
    names = ("cpu", "memory", "pods", GPU_RESOURCE)
    return {name: demands[name] for name in names if name in demands}


def missing_queue(queue: str, namespace: str, local_queues: Sequence[Mapping[str, Any]] | None) -> str:
    """Why `spec.queueName` cannot be used, or "" when the LocalQueue exists; `local_queues` None: Kueue's CRDs are
    not installed."""
    if local_queues is None:
        return (
            f"spec.queueName={queue}: Kueue is not installed on this cluster (no kueue.x-k8s.io/{KUEUE_VERSION} "
            "LocalQueue API); remove spec.queueName or ask the platform team to install Kueue"
        )
    names = sorted(str(q["metadata"]["name"]) for q in local_queues)
    if queue in names:
        return ""
    have = f"it has {', '.join(names)}" if names else "it has none"
    return (
        f"spec.queueName={queue}: no LocalQueue {queue} in namespace {namespace} ({have}); use one that "
        f"`kubectl get localqueues -n {namespace}` lists, or remove spec.queueName"
    )


def capacity_problems(
    queue: str,
    per_worker: Resources,
    workers: int,
    local_queue: Mapping[str, Any],
    cluster_queues: Sequence[Mapping[str, Any]],
) -> list[str]:
    """What of the gang the LocalQueue's ClusterQueue could never admit, even borrowing all its cohort lends; empty
    when it could, or when its ClusterQueue is not there (Kueue then says why it waits)."""
    target = str((local_queue.get("spec") or {}).get("clusterQueue", ""))
    cluster_queue = next((q for q in cluster_queues if q["metadata"]["name"] == target), None)
    if cluster_queue is None:
        return []
    problems = queue_problems(gang_demands(per_worker, workers), queue, cluster_queue, cluster_queues, "the gang")
    return [f"{p.field}: {p.message}" for p in problems]
