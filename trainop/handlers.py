"""Reconciliation of TrainingJobs: Kopf triggers it on every watch event of a TrainingJob, and `follow` (a timer
of our own) every interval for the live ones, whose Job and pods change without an event of the resource;
`Reconciler.reconcile` reads the resource afresh, acts, and writes the whole status.

No finalizer: nothing has to happen before a TrainingJob goes (its children are owned by it and garbage-collected),
so a TrainingJob deleted while the operator is down, or with the CRD at `pulumi destroy` after the operator's
Deployment is gone, goes at once. (A `kopf.timer` would make Kopf put its finalizer on every resource it follows,
and then a destroy waits forever on finalizers nobody removes; Kopf removes its finalizer from resources that still
carry one, as soon as it sees them, since no handler requires it.)

A restart is two reconciliations: the first only records the decision in the status (attempt + 1, the counter,
Restarting, when it may start); the next deletes the earlier attempt's children and, once the backoff has passed,
creates the new attempt's. The status is the only memory, so an operator killed at any point repeats nothing and
counts nothing twice: creation is create-or-adopt and every decision is taken again from what is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import kopf
from lightkube import ApiError

from trainop import metrics
from trainop.decide import (
    CONFIG_ERROR,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL,
    Observation,
    Transition,
    conditions,
    observe,
    transition,
)
from trainop.kube import Kube, OwnedElsewhere
from trainop.progress import ProgressCache
from trainop.queueing import (
    WAITING,
    QueueState,
    capacity_problems,
    missing_queue,
    owned_workload,
    pending_position,
    queue_state,
)
from trainop.settings import Settings
from trainop.validate import run_shape, spec_problems
from workloads.quota import FieldError, over_quota, trainingjob_demands
from workloads.training import CONFIG_CHECKSUM_ANNOTATION
from workloads.trainingjob import GROUP, PLURAL, VERSION, attempt_manifests, job_name, resources

log = logging.getLogger(__name__)
WAITING_FOR_OLD_PODS = "waiting for the pods of earlier attempts to exit"
"""Appended to the restart's message while the old gang's pods are still there (the restart's cause stays)."""
WARNING_REASONS = {
    "InvalidSpec",
    "ConfigError",
    "RestartLimitExceeded",
    "DeadlineExceeded",
    "WorkerFailed",
    "Preempted",
    "Evicted",
    "Conflict",
}
QUEUE_WAITS = ("Created", "Queued", "Preempted", "Evicted")
"""Reasons of a queued run's Pending phase before Kueue (re)admits it: its deadline counts from the admission."""


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def attempt_objects(tj: Mapping[str, Any], attempt: int, settings: Settings, *, suspend: bool) -> list[dict[str, Any]]:
    """The children of one attempt (`attempt_manifests`), the platform's pod annotations (settings) given to the
    pods through spec.podAnnotations, under the resource's own: a user's `prometheus.io/scrape: "false"` wins."""
    if settings.trainer_pod_annotations:
        spec = tj["spec"]
        annotations = {**dict(settings.trainer_pod_annotations), **(spec.get("podAnnotations") or {})}
        tj = {**tj, "spec": {**spec, "podAnnotations": annotations}}
    return attempt_manifests(tj, attempt, settings.platform, suspend=suspend)


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, progress: ProgressCache) -> None:
        self.kube = kube
        self.settings = settings
        self.progress = progress
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def reconcile(self, name: str) -> None:
        """One reconciliation of the TrainingJob `name`, never two of the same one at once."""
        began = time.monotonic()
        async with self._locks[name]:
            try:
                result = await self._reconcile(name)
            except (ApiError, OwnedElsewhere) as err:
                metrics.RECONCILIATIONS.labels("error").inc()
                raise kopf.TemporaryError(f"reconciling {name}: {err}", delay=self.settings.interval_s) from err
        metrics.RECONCILIATIONS.labels(result).inc()
        metrics.RECONCILE_DURATION.observe(time.monotonic() - began)

    async def _reconcile(self, name: str) -> str:
        tj = await self.kube.training_job(name)  # afresh: Kopf's copy may predate our last status patch
        if tj is None or tj["metadata"].get("deletionTimestamp"):
            return "gone"
        spec, status, uid = tj["spec"], dict(tj.get("status") or {}), tj["metadata"]["uid"]
        now = dt.datetime.now(dt.UTC)
        if status.get("phase") in TERMINAL:
            return await self._finished(tj, status, now)
        access_mode = self.settings.platform.checkpoint_access_mode
        if problems := spec_problems(tj, gpus_available=self.settings.gpus_available, access_mode=access_mode):
            step = Transition("Failed", "InvalidSpec", "; ".join(problems), 0, 0, 0)
            await self._write(tj, status, step, now, completed=True)
            return "invalid"
        if not status.get("phase") and (over := await self._over_quota(tj)):
            # Checked once, before anything exists: a quota lowered later makes a run wait, never fail.
            step = Transition("Failed", "InvalidSpec", "; ".join(f"{p.field}: {p.message}" for p in over), 0, 0, 0)
            await self._write(tj, status, step, now, completed=True)
            return "invalid"
        if not status.get("phase") and spec.get("queueName") and (wrong := await self._queue_problems(tj)):
            step = Transition("Failed", "InvalidSpec", "; ".join(wrong), 0, 0, 0)
            await self._write(tj, status, step, now, completed=True)
            return "invalid"
        attempt = int(status.get("attempt", 0))
        if attempt:
            await self.kube.delete_other_attempts(name, attempt)
        job = await self.kube.job(job_name(tj, attempt))
        if job is None and attempt and (left := await self.kube.attempt_pods_left(name, attempt)):
            # The old gang may still be writing its SIGTERM checkpoint into the directory this attempt resumes
            # from: the new one starts only once every old pod is gone (their grace period bounds the wait).
            why = self._same(status).message.split(f"; {WAITING_FOR_OLD_PODS}")[0]
            step = self._same(status, message=f"{why}; {WAITING_FOR_OLD_PODS}: {', '.join(left)}")
            await self._write(tj, status, step, now)
            return "draining"
        suspend = bool(spec.get("suspend"))
        # Kueue admits a Job by unsuspending it: with a queue, Jobs start suspended and only suspend is ours.
        queued = bool(spec.get("queueName"))
        deadline = spec.get("activeDeadlineSeconds")
        started = _time(status.get("startTime"))
        waiting = queued and (job is None or bool((job.get("spec") or {}).get("suspend")))
        expired = started and now > started + dt.timedelta(seconds=int(deadline or 0))
        if deadline and expired and not suspend and not waiting:
            if job is not None:
                await self.kube.delete_job(job["metadata"]["name"])
            step = self._same(
                status,
                phase="Failed",
                reason="DeadlineExceeded",
                message=f"running for more than activeDeadlineSeconds={deadline}",
            )
            await self._write(tj, status, step, now, completed=True)
            return "deadline"
        if job is None:
            restart_after = _time(status.get("restartAfter"))
            if status.get("phase") == "Restarting" and restart_after and now < restart_after:
                return "backoff"
            try:
                for obj in attempt_objects(tj, attempt, self.settings, suspend=suspend or queued):
                    await self.kube.create_or_adopt(obj, uid)
            except OwnedElsewhere as err:
                step = self._same(status, phase="Failed", reason="Conflict", message=str(err))
                await self._write(tj, status, step, now, completed=True)
                return "conflict"
            if suspend:
                step = self._same(status, phase="Suspended", reason="Suspended", message="spec.suspend is true")
            else:
                step = self._same(
                    status,
                    phase="Pending",
                    reason="Created",
                    message=f"attempt {attempt}: Job {job_name(tj, attempt)} created",
                )
                if not queued:  # a queued run's deadline counts from its admission
                    status.setdefault("startTime", _stamp(now))
            await self._write(tj, status, step, now)
            return "created"
        if not suspend and (job.get("spec") or {}).get("suspend") and self._changed(tj, attempt, job):
            # workers/train/image changed while suspended (the CRD allows only that): the Job's template is
            # immutable, so the run resumes as a new attempt, from the same checkpoints.
            step = self._same(
                status,
                phase="Pending",
                reason="SpecChanged",
                message=f"spec changed while suspended: attempt {attempt + 1} replaces {attempt}",
            )
            await self._write(tj, status, replace(step, attempt=attempt + 1), now)
            return "spec-changed"
        if bool((job.get("spec") or {}).get("suspend")) != suspend and (suspend or not queued):
            job = await self.kube.suspend_job(job["metadata"]["name"], suspend)
            if not suspend:  # as a Job does: the deadline counts from the resume
                status["startTime"] = _stamp(now)
        pods = await self.kube.pods(job["metadata"]["name"])
        seen = observe(job, pods)
        if queued and not suspend:
            seen = await self._queued(job, seen, str(spec["queueName"]))
        if seen.state in (PENDING, RUNNING) and len(pods) < int(job["spec"].get("parallelism") or 1):
            seen = await self._why_pods_are_missing(job, seen)
        if seen.state == CONFIG_ERROR and seen.message.endswith("(configuration error)"):
            seen = await self._with_log(seen, pods)
        step = transition(
            status,
            seen,
            max_restarts=int(spec.get("maxRestarts", 3)),
            now=now,
            backoff_base_s=self.settings.restart_backoff_s,
        )
        if queued and step.phase == "Running" and (status.get("reason") in QUEUE_WAITS or "startTime" not in status):
            status["startTime"] = _stamp(now)  # admitted (again) by Kueue: the deadline counts from here
        if step.restarts > int(status.get("restarts", 0)):
            metrics.RESTARTS.labels("failure").inc()
        if step.preemptions > int(status.get("preemptions", 0)):
            metrics.RESTARTS.labels("preemption").inc()
        await self._write(tj, status, step, now, completed=step.phase in TERMINAL)
        return step.phase.lower()

    def _changed(self, tj: Mapping[str, Any], attempt: int, job: Mapping[str, Any]) -> bool:
        """Whether the live Job differs from what the spec now asks for (gang size, train.yaml, image)."""
        want = attempt_objects(tj, attempt, self.settings, suspend=True)[-1]

        def key(j: Mapping[str, Any]) -> tuple[Any, ...]:
            template = j["spec"]["template"]
            return (
                j["spec"]["completions"],
                (template["metadata"].get("annotations") or {}).get(CONFIG_CHECKSUM_ANNOTATION),
                template["spec"]["containers"][0]["image"],
            )

        return key(want) != key(job)

    async def _finished(self, tj: Mapping[str, Any], status: Mapping[str, Any], now: dt.datetime) -> str:
        ttl = tj["spec"].get("ttlSecondsAfterFinished")
        done = _time(status.get("completionTime"))
        if ttl is not None and done is not None and now >= done + dt.timedelta(seconds=int(ttl)):
            await self.kube.post_event(tj, "Normal", "Deleted", f"ttlSecondsAfterFinished={ttl} passed")
            await self.kube.delete_training_job(tj["metadata"]["name"])
            metrics.record_phase(tj["metadata"]["uid"], None)
            self.progress.forget(tj["metadata"]["uid"])
            return "ttl-deleted"
        metrics.record_phase(tj["metadata"]["uid"], str(status["phase"]))
        if status.get("phase") == "Succeeded":  # the last metrics may land after the Job completes
            await self._write(tj, dict(status), self._same(status), now)
        return "finished"

    async def _over_quota(self, tj: Mapping[str, Any]) -> list[FieldError]:
        """What of the gang alone is more than a ResourceQuota of the namespace allows in all: it could never run."""
        spec = tj["spec"]
        demands = trainingjob_demands(resources(spec), int(spec.get("workers", 1)))
        return over_quota(demands, await self.kube.resource_quotas(), "the TrainingJob")

    async def _queue_problems(self, tj: Mapping[str, Any]) -> list[str]:
        """Why spec.queueName cannot be used: no such LocalQueue in the namespace (or no Kueue at all), or its
        ClusterQueue could never admit the gang, even borrowing all its cohort can lend."""
        queue, spec = str(tj["spec"]["queueName"]), tj["spec"]
        local_queues = await self.kube.local_queues()
        if why := missing_queue(queue, self.kube.ns, local_queues):
            return [why]
        cluster_queues = await self.kube.cluster_queues()
        local_queue = next(q for q in local_queues or [] if q["metadata"]["name"] == queue)
        if cluster_queues is None:
            return []
        return capacity_problems(queue, resources(spec), int(spec.get("workers", 1)), local_queue, cluster_queues)

    async def _queued(self, job: Mapping[str, Any], seen: Observation, queue: str) -> Observation:
        """A queued run's observation with what Kueue says of its Job (its Workload). Waiting (never admitted, or
        evicted and queued again): Pending, reason Queued (Preempted/Evicted after an eviction), Kueue's message,
        the position in the LocalQueue. An evicted Job's pods end as Kueue suspends it: their ends are no
        failure. Admitted: the Job's own observation, with the Workload for the eviction tally."""
        workload = owned_workload(job["metadata"]["uid"], await self.kube.workloads(job["metadata"]["uid"]))
        if workload is None:
            return Observation(PENDING, WAITING, reason="Queued") if seen.state == SUSPENDED else seen
        state = queue_state(workload)
        if state.admitted:
            if seen.state == SUSPENDED:  # quota reserved; Kueue unsuspends the Job next
                return Observation(PENDING, f"admitted by Kueue: {state.message}", reason="Queued", queue=state)
            return replace(seen, queue=state)
        if seen.state in (SUCCEEDED, CONFIG_ERROR):
            return replace(seen, queue=state)
        if state.reason != "Evicted":
            pending = await self.kube.pending_workloads(queue)
            state = replace(state, position=pending_position(pending, state.workload) if pending else None)
        if state.evicted_by:
            reason = "Preempted" if state.evicted_by == "Preempted" else "Evicted"
            message = f"evicted by Kueue ({state.evicted_by}), waiting to be admitted again: {state.message}"
            return Observation(PENDING, message, reason=reason, queue=state)
        return Observation(PENDING, state.message, reason="Queued", queue=state)

    async def _why_pods_are_missing(self, job: Mapping[str, Any], seen: Observation) -> Observation:
        """The Job controller could not create every pod: its newest FailedCreate says why (a ResourceQuota it
        exceeds, most often). The run waits, visibly, until the quota has room; it never fails for it."""
        events = await self.kube.warning_events("Job", job["metadata"]["name"])
        failed = [e for e in events if e.get("reason") == "FailedCreate"]
        if not failed:
            return seen
        message = str(failed[-1].get("message", ""))
        reason = "QuotaExceeded" if "exceeded quota" in message else "FailedCreate"
        return Observation(PENDING, f"the Job's pods cannot be created: {message}", reason=reason)

    async def _with_log(self, seen: Observation, pods: list[dict[str, Any]]) -> Observation:
        """A config error without a termination message: the trainer's last log lines say what is wrong."""
        name = seen.message.split(":", 1)[0].removeprefix("pod ")
        tail = await self.kube.log_tail(name) if any(p["metadata"]["name"] == name for p in pods) else ""
        return Observation(seen.state, f"{seen.message}: {tail}") if tail else seen

    @staticmethod
    def _same(status: Mapping[str, Any], *, phase: str = "", reason: str = "", message: str = "") -> Transition:
        """The status' own phase and counters, with a new phase, reason and message where given."""
        old = {c["type"]: c for c in status.get("conditions") or []}
        current = status.get("phase") or "Pending"
        fallback: Mapping[str, Any] = next(
            (c for c in old.values() if c["status"] == "True" and c["type"] != "Created"), {}
        )
        return Transition(
            phase=phase or current,
            reason=reason or fallback.get("reason", "Created"),
            message=message or fallback.get("message", ""),
            attempt=int(status.get("attempt", 0)),
            restarts=int(status.get("restarts", 0)),
            preemptions=int(status.get("preemptions", 0)),
        )

    async def _write(
        self,
        tj: Mapping[str, Any],
        status: dict[str, Any],
        step: Transition,
        now: dt.datetime,
        *,
        completed: bool = False,
    ) -> None:
        """Write the whole status in one merge patch (only when something changed), and an Event on a transition."""
        meta = tj["metadata"]
        new = {
            **status,
            "phase": step.phase,
            # The phase's condition's reason and message, for `kubectl get tj` (-o wide for the message).
            "reason": step.reason,
            "message": step.message,
            "attempt": step.attempt,
            "jobName": job_name(tj, step.attempt),
            "restarts": step.restarts,
            "preemptions": step.preemptions,
            "observedGeneration": meta.get("generation", 0),
            "conditions": conditions(status.get("conditions") or [], step.phase, step.reason, step.message, now),
        }
        if step.restart_after is not None:
            new["restartAfter"] = _stamp(step.restart_after)
        new.update(_queue_fields(step.queue))
        if completed:
            new.setdefault("completionTime", _stamp(now))
        new.update(self.progress.get(meta["uid"], run_shape(tj)))
        metrics.record_phase(meta["uid"], step.phase)
        if {k: v for k, v in new.items() if v is not None} == status:
            return
        await self.kube.patch_status(meta["name"], new)  # a None removes its field (a merge patch)
        if step.phase != status.get("phase"):
            log.info("%s: %s -> %s (%s) %s", meta["name"], status.get("phase"), step.phase, step.reason, step.message)
        if step.phase != status.get("phase") or step.reason != self._same(status).reason:
            kind = "Warning" if step.reason in WARNING_REASONS else "Normal"
            await self.kube.post_event(tj, kind, step.reason, step.message or step.phase)


def _queue_fields(queue: QueueState | None) -> dict[str, Any]:
    """The status' queue fields: the Workload and how many of its evictions preemptions counts (kept while there is
    no Workload to look at), and, while it waits, why in one word and its position (None removes them)."""
    if queue is None:
        return {"queueReason": None, "queuePosition": None}
    return {
        "queueWorkload": queue.workload,
        "queueEvictions": queue.evictions,
        "queueReason": queue.reason or None,
        "queuePosition": queue.position,
    }


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Reconcile on every change of a TrainingJob (an event handler: Kopf adds no finalizer for it)."""

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def changed(event: Mapping[str, Any], name: str, uid: str, **_: Any) -> None:
        if event.get("type") == "DELETED":
            metrics.record_phase(uid, None)
            reconciler.progress.forget(uid)
            return
        await reconciler.reconcile(name)


def followed(tj: Mapping[str, Any], now: dt.datetime, finished_follow_s: float) -> bool:
    """Whether the timer reconciles `tj` now: a live run always (its Job and pods change without an event of the
    resource); a finished one only for `finished_follow_s` after it succeeded (its last metrics may still land in
    MLflow) and once its ttlSecondsAfterFinished has passed; never one being deleted."""
    if tj["metadata"].get("deletionTimestamp"):
        return False
    status = tj.get("status") or {}
    done = _time(status.get("completionTime"))
    if status.get("phase") not in TERMINAL or done is None:
        return True
    ttl = tj["spec"].get("ttlSecondsAfterFinished")
    if ttl is not None and now >= done + dt.timedelta(seconds=int(ttl)):
        return True
    return status.get("phase") == "Succeeded" and now < done + dt.timedelta(seconds=finished_follow_s)


async def follow(reconciler: Reconciler) -> None:
    """The timer: every `interval_s`, reconcile each TrainingJob `followed` says to. Runs until cancelled; a
    failure (the API server away, one resource's reconciliation) is logged and tried again next round."""
    settings = reconciler.settings
    while True:
        try:
            for tj in await reconciler.kube.training_jobs():
                if followed(tj, dt.datetime.now(dt.UTC), settings.finished_follow_s):
                    with contextlib.suppress(kopf.TemporaryError):  # counted as an error; retried next round
                        await reconciler.reconcile(tj["metadata"]["name"])
        except Exception:  # the timer must outlive any one failure
            log.exception("following TrainingJobs")
        await asyncio.sleep(settings.interval_s)
