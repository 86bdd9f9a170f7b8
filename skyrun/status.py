"""A task's status from its Kubernetes objects (plain dicts): the record ConfigMap, the Job, its pods and events,
and, while Kueue holds the Job suspended, its Workload and Kueue's queue positions.

Pure functions, so every transition is testable without a cluster. The record's `status` key, once written, is
final and wins (a finished Job is deleted after its TTL; a stopped task's Job is deleted at once).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skyrun.models import TaskStatus
from workloads.task import NODE_INDEX_LABEL, RUN_RULE_INDEX, SETUP_FAILED_EXIT_CODE, SETUP_RULE_INDEX

# A Job that is gone although its record never got a final status: deleted outside the launcher.
JOB_GRACE_S = 60
_RULE = re.compile(r"rule at index (\d+)")
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class Derived:
    status: TaskStatus
    message: str = ""
    queue_position: int | None = None
    """1-based place in the team's LocalQueue while Kueue holds the task (Kueue's positionInLocalQueue + 1)."""
    waiting_reason: str = ""
    """Why Kueue holds the task: its Workload's QuotaReserved reason and message."""


def suspended(job: Mapping[str, Any] | None) -> bool:
    return bool((job or {}).get("spec", {}).get("suspend"))


def _owned_by(obj: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    uid = job["metadata"].get("uid")
    return any(o.get("uid") == uid for o in obj.get("metadata", {}).get("ownerReferences") or [])


def queued(
    job: Mapping[str, Any], queue: str, workloads: Sequence[Mapping[str, Any]], pending: Sequence[Mapping[str, Any]]
) -> Derived:
    """A task whose Job Kueue holds suspended: pending, with Kueue's reason (its Workload's QuotaReserved False
    condition) and its place in the queue (Kueue's visibility API's items, matched to the Workload by name or
    owner; `pending` is empty when that API does not answer, and the position is then unknown)."""
    workload = next((w for w in workloads if _owned_by(w, job)), None)
    if workload is None:
        return Derived(TaskStatus.PENDING, f"queued in {queue}: waiting for Kueue to create its Workload",
                       waiting_reason="no Workload yet")  # fmt: skip
    reserved = _conditions(workload).get("QuotaReserved")
    if reserved is None:
        why = "waiting for Kueue to consider it"
    elif reserved.get("status") == "True":
        why = "quota reserved, waiting for admission checks"
    else:
        why = f"{reserved.get('reason') or 'Pending'}: {reserved.get('message') or ''}".rstrip(": ")
    name = workload["metadata"].get("name")
    item = next((p for p in pending if p.get("metadata", {}).get("name") == name or _owned_by(p, job)), None)
    position = int(item["positionInLocalQueue"]) + 1 if item and "positionInLocalQueue" in item else None
    where = f"queued in {queue}" + (f" at position {position}" if position is not None else "")
    return Derived(TaskStatus.PENDING, f"{where}: {why}", queue_position=position, waiting_reason=why)


def _conditions(obj: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


def _true(conditions: Mapping[str, Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    c = conditions.get(kind)
    return c if c and c.get("status") == "True" else None


def _age_s(timestamp: str | None, now: dt.datetime) -> float:
    if not timestamp:
        return 0.0
    return (now - dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()


def job_outcome(job: Mapping[str, Any]) -> Derived | None:
    """completed / failed / failed_setup from a finished (or finishing) Job, None while it runs."""
    conditions = _conditions(job)
    if _true(conditions, "Complete") or _true(conditions, "SuccessCriteriaMet"):
        return Derived(TaskStatus.COMPLETED)
    failed = _true(conditions, "Failed") or _true(conditions, "FailureTarget")
    if not failed:
        return None
    message = str(failed.get("message") or failed.get("reason") or "")
    rule = _RULE.search(message)
    if failed.get("reason") == "PodFailurePolicy" and rule and int(rule.group(1)) == SETUP_RULE_INDEX:
        return Derived(TaskStatus.FAILED_SETUP, f"setup exited with {SETUP_FAILED_EXIT_CODE}: {message}")
    if failed.get("reason") == "PodFailurePolicy" and rule and int(rule.group(1)) == RUN_RULE_INDEX:
        return Derived(TaskStatus.FAILED, f"a node's run failed: {message}")
    return Derived(TaskStatus.FAILED, message)


def pending_reason(
    job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]
) -> str:
    """Why a task's pods do not all run yet, in the words of the scheduler, the kubelet or the Job controller."""
    for pod in pods:
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _IMAGE_REASONS:
                return f"image: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        scheduled = _conditions(pod).get("PodScheduled")
        if scheduled and scheduled.get("status") == "False":
            return f"unschedulable: {scheduled.get('message') or scheduled.get('reason')}"
    pod_names = {p["metadata"]["name"] for p in pods}
    job_name = (job or {}).get("metadata", {}).get("name")
    newest: dict[str, Mapping[str, Any]] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        if event.get("type") != "Warning":
            continue
        if (involved.get("kind") == "Job" and involved.get("name") == job_name) or involved.get("name") in pod_names:
            newest[str(event.get("reason"))] = event
    for reason, event in newest.items():
        message = str(event.get("message", ""))
        if reason == "FailedCreate" and "exceeded quota" in message:
            return f"quota: {message}"
        if reason == "FailedScheduling":
            return f"unschedulable: {message}"
    if newest:
        reason, event = next(iter(newest.items()))
        return f"{reason}: {event.get('message', '')}"
    if not pods:
        return "waiting for the Job controller to create the pods"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                return f"starting: {waiting['reason']}"
    return "waiting for every node to start"


def derive(
    record: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    now: dt.datetime,
) -> Derived:
    data = record.get("data") or {}
    if data.get("status"):
        return Derived(TaskStatus(data["status"]), data.get("message", ""))
    if job is None:
        if _age_s(record["metadata"].get("creationTimestamp"), now) < JOB_GRACE_S:
            return Derived(TaskStatus.PENDING, "creating the task's Job")
        return Derived(TaskStatus.FAILED, "the task's Job was deleted outside the launcher")
    outcome = job_outcome(job)
    if outcome:
        return outcome
    num_nodes = int(data.get("num_nodes") or job["spec"].get("completions") or 1)
    started = {
        p["metadata"].get("labels", {}).get(NODE_INDEX_LABEL)
        for p in pods
        if (p.get("status") or {}).get("phase") in ("Running", "Succeeded")
    }
    if len(started) >= num_nodes:
        return Derived(TaskStatus.RUNNING)
    waiting = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Running", "Succeeded")]
    return Derived(TaskStatus.PENDING, pending_reason(job, waiting, events))
