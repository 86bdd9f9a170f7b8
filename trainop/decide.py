"""The operator's decisions, as pure functions of what it observed: no I/O, so each is unit-tested.

`observe` reads the current attempt's Job and pods into one Observation; `transition` turns the resource's
status and that observation into the next phase and counters (the restart decision); `conditions` writes the
whole condition list for a phase. A retriable failure restarts the whole gang as a new attempt (new Job) after an
exponential backoff, up to maxRestarts; a preempted pod (DisruptionTarget) restarts it too but is counted apart
and costs nothing of maxRestarts; exit code 2 (the trainer's configuration error) fails at once. An eviction by
Kueue (trainop/queueing.py) is counted in preemptions too, once, and is no restart: the same Job waits in its
queue and resumes when Kueue admits it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from trainop.queueing import QueueState
from workloads.training import CONFIG_ERROR_EXIT_CODE

# What the current attempt is doing, from its Job and pods.
MISSING, PENDING, RUNNING, SUSPENDED, SUCCEEDED = "missing", "pending", "running", "suspended", "succeeded"
FAILED, CONFIG_ERROR, PREEMPTED = "failed", "config-error", "preempted"
# The condition each phase sets True. Created stays True once the first attempt exists.
PHASE_CONDITION = {
    "Pending": "Created",
    "Running": "Running",
    "Restarting": "Restarting",
    "Suspended": "Suspended",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
}
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Observation:
    state: str
    """One of the module's states (missing, pending, running, suspended, succeeded, failed, ...)."""
    message: str = ""
    """What happened, for the condition (a pod's failure, the trainer's termination message)."""
    reason: str = ""
    """Why a pending attempt waits (QuotaExceeded, Queued, Preempted, ...), for the condition; empty: just created."""
    queue: QueueState | None = None
    """What Kueue says of the attempt's Job (spec.queueName set and its Workload there); None otherwise."""


@dataclass(frozen=True)
class Transition:
    phase: str
    reason: str
    message: str
    attempt: int
    restarts: int
    preemptions: int
    restart_after: dt.datetime | None = None
    """When the next attempt may start (Restarting only)."""
    queue: QueueState | None = None
    """Kueue's view of the attempt, for the status' queue fields; None: not queued, or no Workload yet."""


def _true(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == "trainer" and "terminated" in (status.get("state") or {}):
            return dict(status["state"]["terminated"])
    return {}


def observe(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> Observation:
    """The attempt's state. The Job's Complete condition outranks its pods: the Job controller completes a Job only
    when every index succeeded, after failures it ignored (a preemption) or retried. Then a config error outranks a
    preemption, which outranks other failures (the peers of a preempted rank fail too, and that is the preemption's
    doing, not the run's)."""
    if job is None:
        return Observation(MISSING)
    if (job.get("spec") or {}).get("suspend"):  # its pods are being deleted: their ends are not failures
        return Observation(SUSPENDED)
    if _true(job, "Complete"):
        return Observation(SUCCEEDED)
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    for pod in failed:
        end = _terminated(pod)
        if end.get("exitCode") == CONFIG_ERROR_EXIT_CODE:
            text = (end.get("message") or "").strip() or "the trainer exited with code 2 (configuration error)"
            return Observation(CONFIG_ERROR, f"pod {pod['metadata']['name']}: {text}")
    for pod in failed:
        if cond := _true(pod, "DisruptionTarget"):
            why = cond.get("message") or cond.get("reason") or "disrupted"
            return Observation(PREEMPTED, f"pod {pod['metadata']['name']} was preempted: {why}")
    for pod in failed:
        end = _terminated(pod)
        code = end.get("exitCode")
        text = (end.get("message") or "").strip()
        what = f"exit code {code}" if code is not None else (pod["status"].get("reason") or "failed")
        return Observation(FAILED, f"pod {pod['metadata']['name']} failed ({what}){': ' + text if text else ''}")
    if cond := _true(job, "Failed"):
        return Observation(FAILED, f"Job failed: {cond.get('reason', '')}: {cond.get('message', '')}")
    if any((p.get("status") or {}).get("phase") in ("Running", "Succeeded") for p in pods):
        return Observation(RUNNING)  # a rank that already finished its part is not pending
    return Observation(PENDING)


def backoff_seconds(restarts: int, base_s: float, cap_s: float = 300.0) -> float:
    """Delay before restart number `restarts` (1, 2, ...): base, 2 x base, 4 x base, ... at most cap."""
    return float(min(cap_s, base_s * 2 ** max(0, restarts - 1)))


def transition(
    status: Mapping[str, Any], seen: Observation, *, max_restarts: int, now: dt.datetime, backoff_base_s: float
) -> Transition:
    """The next phase of a TrainingJob whose current attempt was observed as `seen`. Kueue's evictions of the
    attempt's Workload not yet counted (its tally above `status.queueEvictions` of the same Workload) are added to
    preemptions, whatever the phase: an eviction and re-admission between two looks is counted too."""
    current = Transition(
        phase=status.get("phase") or "Pending",
        reason=_reason(status),
        message="",
        attempt=int(status.get("attempt", 0)),
        restarts=int(status.get("restarts", 0)),
        preemptions=int(status.get("preemptions", 0)) + new_evictions(status, seen.queue),
        queue=seen.queue,
    )
    attempt = current.attempt
    if seen.state == SUCCEEDED:
        return replace(current, phase="Succeeded", reason="Completed", message=f"attempt {attempt} completed")
    if seen.state == CONFIG_ERROR:
        return replace(current, phase="Failed", reason="ConfigError", message=seen.message)
    if seen.state == PREEMPTED:
        return replace(
            current,
            phase="Restarting",
            reason="Preempted",
            message=f"{seen.message}; restarting the gang",
            attempt=attempt + 1,
            preemptions=current.preemptions + 1,
            restart_after=now,
        )
    if seen.state == FAILED:
        if current.restarts >= max_restarts:
            return replace(
                current,
                phase="Failed",
                reason="RestartLimitExceeded",
                message=f"{seen.message}; {current.restarts} of {max_restarts} restarts used",
            )
        restarts = current.restarts + 1
        delay = backoff_seconds(restarts, backoff_base_s)
        return replace(
            current,
            phase="Restarting",
            reason="WorkerFailed",
            attempt=attempt + 1,
            restarts=restarts,
            message=f"{seen.message}; whole-gang restart {restarts} of {max_restarts} in {delay:.0f}s "
            "from the newest checkpoint",
            restart_after=now + dt.timedelta(seconds=delay),
        )
    if seen.state == SUSPENDED:
        return replace(current, phase="Suspended", reason="Suspended", message="spec.suspend is true")
    if seen.state == RUNNING:
        return replace(current, phase="Running", reason="Running", message=f"attempt {attempt} is running")
    return replace(
        current,
        phase="Pending",
        reason=seen.reason or "Created",
        message=seen.message or f"attempt {attempt} created, pods pending",
    )


def new_evictions(status: Mapping[str, Any], queue: QueueState | None) -> int:
    """Evictions of the Workload `queue` not yet in status.preemptions (the status remembers how many of which
    Workload it counted: a new attempt's Job has a new Workload, counted from 0)."""
    if queue is None:
        return 0
    counted = int(status.get("queueEvictions", 0)) if status.get("queueWorkload") == queue.workload else 0
    return max(0, queue.evictions - counted)


def _reason(status: Mapping[str, Any]) -> str:
    want = PHASE_CONDITION.get(status.get("phase") or "", "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == want:
            return str(cond.get("reason", ""))
    return ""


def conditions(
    old: Sequence[Mapping[str, Any]], phase: str, reason: str, message: str, now: dt.datetime
) -> list[dict[str, Any]]:
    """The whole condition list for `phase`: its condition True with reason and message, the other phases'
    False; lastTransitionTime moves only when a condition's status changes. Created, once True, stays True."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    by_type = {c["type"]: dict(c) for c in old}
    active = PHASE_CONDITION[phase]
    out = []
    for kind in dict.fromkeys(PHASE_CONDITION.values()):
        cond = by_type.get(kind)
        if kind == active:
            status = "True"
        elif cond is None:
            continue
        else:
            status = "True" if kind == "Created" else "False"
        new = {
            "type": kind,
            "status": status,
            "reason": reason if kind == active else cond["reason"],  # type: ignore[index]
            "message": message if kind == active else cond.get("message", ""),  # type: ignore[union-attr]
            "lastTransitionTime": stamp,
        }
        if cond is not None and cond.get("status") == status:
            new["lastTransitionTime"] = cond.get("lastTransitionTime", stamp)
        out.append(new)
    return out
