"""What the API does, over the cluster: submit, list, stop, logs, volumes (volumes' objects in skyrun/volumes.py,
log streams in skyrun/logs.py, a task's API view in skyrun/task_info.py). Every object of a user lives in their
team's namespace (skyrun/settings.py `team_of`; a user in no team is refused with 403) and carries the user's hash
label and exact name (workloads/task.py); every read selects on the label and checks the name, so a user never
sees, stops, reads or mounts what is not theirs. Nothing is kept in memory between requests but the anchors' uids.
The per-user cap is counted under a lock shared by every replica (skyrun/cap_lock.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from lightkube import ApiError

from skyrun.cap_lock import CapLock
from skyrun.common import Problem as Problem
from skyrun.common import invalid, new_id, now_utc
from skyrun.kube import Kube
from skyrun.logs import follow_logs
from skyrun.manifests import Anchor, Launch, task_manifests, task_object_name, task_resources, user_hash
from skyrun.models import QueueView, SubmitResponse, TaskInfo, TaskStatus, VolumeCreate, VolumeInfo
from skyrun.settings import Settings, Team
from skyrun.status import Derived, derive, queued, suspended
from skyrun.task_info import task_info
from skyrun.task_spec import TaskInvalid, parse_task
from skyrun.volumes import ACCESS_MODES as ACCESS_MODES
from skyrun.volumes import create_volume, owned_volumes, volume_info
from workloads.kueue_quota import queue_problems
from workloads.quota import Demand, FieldError, quota_problems, task_demands
from workloads.task import (
    KIND_LABEL,
    NAME_ANNOTATION,
    STATE_ACTIVE,
    STATE_DONE,
    STATE_LABEL,
    TASK_ID_LABEL,
    TASK_ID_RE,
    TASK_LABEL,
    USER_ANNOTATION,
    USER_HASH_LABEL,
)


@dataclass
class Snapshot:
    """One user's (or everyone's) task objects in one namespace, read in one list call per kind."""

    ns: str
    records: list[dict[str, Any]]
    jobs: dict[str, dict[str, Any]]
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


class Launcher:
    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.anchors: dict[str, Anchor] = {}
        """Each namespace's anchor once read (see `_anchor`)."""
        self.cap_lock = CapLock(settings.cap_lock_wait_s)

    def team(self, user: str) -> Team:
        team = self.settings.team_of(user)
        if team is None:
            raise Problem(
                403,
                f"{user} is in no team of this launcher: an administrator adds them to a team's `users` in the "
                "stack's `teams` config key (SKYRUN_TEAMS); until then they can run no task and own no volume",
                reason="no_team",
            )
        return team

    # --- tasks -------------------------------------------------------------------------------------------
    async def submit(self, user: str, task_yaml: str, envs: Mapping[str, str]) -> SubmitResponse:
        team = self.team(user)
        ns = team.namespace
        try:
            document = yaml.safe_load(task_yaml)
        except yaml.YAMLError as err:
            raise invalid([FieldError("task_yaml", f"not valid YAML: {err}")]) from None
        try:
            parsed = parse_task(document, env_overrides=envs)
        except TaskInvalid as err:
            raise invalid(err.errors) from None
        task = parsed.task
        owned = {v["metadata"]["annotations"][NAME_ANNOTATION]: v for v in await owned_volumes(self.kube, ns, user)}
        claims, missing = [], []
        for path, name in task.volumes:
            if name in owned:
                claims.append((path, owned[name]["metadata"]["name"]))
            else:
                missing.append(FieldError(f"volumes.{path}", f"you have no volume named {name!r} (`volumes list`)"))
        if missing:
            raise invalid(missing, "unknown_volume")
        launch = Launch(
            task_id=new_id(),
            user=user,
            namespace=ns,
            default_image=self.settings.image,
            image_pull_policy=self.settings.image_pull_policy,
            default_cpus=self.settings.default_cpus,
            default_memory=self.settings.default_memory,
            claims=tuple(claims),
            ttl_seconds_after_finished=self.settings.ttl_seconds_after_finished,
            service_account_name=self.settings.task_service_account,
            pod_annotations=tuple(self.settings.pod_annotations.items()),
            submitted_at=now_utc().strftime("%Y-%m-%dT%H:%M:%SZ"),
            task_yaml=task_yaml,
            ignored=parsed.ignored,
            queue=team.queue,
        )
        per_node = task_resources(task, launch)
        quotas = await self.kube.objects(ns, "ResourceQuota", {})
        if over := quota_problems(per_node, task.num_nodes, quotas):
            raise invalid(over, "over_quota")
        if team.queue:
            await self._check_queue(team, task_demands(per_node, task.num_nodes))
        launch = replace(launch, anchor=await self._anchor(ns))
        async with self.cap_lock.hold(self.kube, ns, user, launch.anchor):
            active = await self._active_count(ns, user)
            if active >= self.settings.max_active_tasks_per_user:
                raise Problem(
                    409,
                    f"you have {active} pending or running tasks, the most allowed is "
                    f"{self.settings.max_active_tasks_per_user}: wait for one to finish or stop one",
                    reason="active_task_limit",
                )
            for attempt in range(5):
                if attempt:
                    launch = replace(launch, task_id=new_id())
                manifests = task_manifests(task, launch)
                try:
                    await self.kube.create(manifests.record)
                except ApiError as err:
                    if err.status.code == 409:
                        continue  # an id taken by an older task: draw another
                    raise
                break
            else:
                raise Problem(409, "could not find a free task id; try again", reason="no_free_id")
        task_id = launch.task_id
        try:
            await self.kube.create(manifests.service)
            await self.kube.create(manifests.network_policy)
            await self.kube.create(manifests.job)
        except ApiError as err:
            await self._remove(ns, task_id)
            if err.status.code in (400, 403, 422):
                message = f"the cluster refused the task: {err.status.message}"
                raise Problem(400, message, reason="cluster_refused") from None
            raise
        message = f"submitted: {task.num_nodes} node(s)"
        if team.queue:
            message += f" to queue {team.queue}"
        if parsed.ignored:
            message += f"; ignored on this cluster: {', '.join(parsed.ignored)}"
        return SubmitResponse(task_id=task_id, status=TaskStatus.PENDING, message=message, ignored=list(parsed.ignored))

    async def _check_queue(self, team: Team, demands: Mapping[str, Demand]) -> None:
        """The team's LocalQueue and its ClusterQueue exist, and the ClusterQueue (with what its cohort can lend)
        could ever admit the task (workloads/kueue_quota.py); else 422 and nothing created."""
        local = await self.kube.get(team.namespace, "LocalQueue", team.queue)
        fix = "an administrator creates it or corrects the team's `queue` in the stack's `teams` key"
        if local is None:
            raise Problem(422, f"queue {team.queue} (a Kueue LocalQueue) is not in namespace {team.namespace}: "
                               f"{fix}; nothing was created", reason="unknown_queue")  # fmt: skip
        cq_name = str((local.get("spec") or {}).get("clusterQueue") or "")
        cluster_queues = await self.kube.cluster_queues()
        cluster_queue = next((q for q in cluster_queues if q["metadata"]["name"] == cq_name), None)
        if cluster_queue is None:
            raise Problem(422, f"queue {team.queue} points at ClusterQueue {cq_name!r}, which does not exist: {fix}; "
                               "nothing was created", reason="unknown_queue")  # fmt: skip
        if over := queue_problems(demands, team.queue, cluster_queue, cluster_queues):
            raise Problem(422, [{"field": e.field, "message": e.message} for e in over], reason="over_queue_quota")

    async def _anchor(self, ns: str) -> Anchor | None:
        """The owner of every task object in `ns`: with teams the namespace's anchor ConfigMap (SKYRUN_ANCHOR, the
        stack creates one per team namespace and deletes it at `pulumi destroy`), without teams the launcher's own
        Deployment; the garbage collector then deletes every task, while a rolling update keeps the uid (and the
        tasks). Read at a namespace's first submission and kept: a new object of that name is a new incarnation
        the stack only makes by replacing it (and the launcher with it)."""
        if ns in self.anchors:
            return self.anchors[ns]
        if self.settings.teams:
            kind, name, setting = "ConfigMap", self.settings.anchor, "SKYRUN_ANCHOR"
        elif self.settings.deployment:
            kind, name, setting = "Deployment", self.settings.deployment, "SKYRUN_DEPLOYMENT"
        else:
            return None
        owner = await self.kube.get(ns, kind, name)
        if owner is None:
            what = "anchor ConfigMap" if kind == "ConfigMap" else "launcher's Deployment"
            raise Problem(
                503,
                f"the {what} {name} is not in namespace {ns} (setting {setting}): it owns every task there, and a "
                "task owned by a missing object is deleted at once; nothing was created",
            )
        api_version = "v1" if kind == "ConfigMap" else "apps/v1"
        self.anchors[ns] = Anchor(name=name, uid=owner["metadata"]["uid"], api_version=api_version, kind=kind)
        return self.anchors[ns]

    async def _remove(self, ns: str, task_id: str) -> None:
        name = task_object_name(task_id)
        for kind in ("Job", "Service", "NetworkPolicy", "ConfigMap"):
            await self.kube.delete(ns, kind, name)

    async def _snapshot(
        self, ns: str, user: str | None, task_id: str | None = None, *, active_only: bool = False
    ) -> Snapshot:
        selector = {TASK_LABEL: "true"}
        if user is not None:
            selector[USER_HASH_LABEL] = user_hash(user)
        if task_id is not None:
            selector[TASK_ID_LABEL] = task_id
        record_selector = {**selector, KIND_LABEL: "task"}
        if active_only:
            record_selector[STATE_LABEL] = STATE_ACTIVE
        records, jobs, pods = await asyncio.gather(
            self.kube.objects(ns, "ConfigMap", record_selector),
            self.kube.objects(ns, "Job", selector),
            self.kube.objects(ns, "Pod", selector),
        )
        if user is not None:  # the hash label selects; the exact name decides
            records = [r for r in records if r["metadata"].get("annotations", {}).get(USER_ANNOTATION) == user]
        snap = Snapshot(ns=ns, records=records, jobs={j["metadata"]["labels"][TASK_ID_LABEL]: j for j in jobs})
        for pod in pods:
            snap.pods.setdefault(pod["metadata"]["labels"][TASK_ID_LABEL], []).append(pod)
        return snap

    async def _derive_all(self, snap: Snapshot) -> list[tuple[dict[str, Any], Derived]]:
        now = now_utc()
        out = []
        events_read = False
        workloads: list[dict[str, Any]] | None = None
        positions: dict[str, list[dict[str, Any]]] = {}
        for record in snap.records:
            tid = record["metadata"]["labels"][TASK_ID_LABEL]
            job, pods = snap.jobs.get(tid), snap.pods.get(tid, [])
            derived = derive(record, job, pods, [], now)
            queue = (record.get("data") or {}).get("queue", "")
            if derived.status is TaskStatus.PENDING and job is not None and queue and suspended(job):
                if workloads is None:  # one list per request and namespace, and one position list per queue
                    workloads = await self.kube.objects(snap.ns, "Workload", {})
                if queue not in positions:
                    positions[queue] = await self.kube.pending_workloads(snap.ns, queue) or []
                derived = queued(job, queue, workloads, positions[queue])
            elif derived.status is TaskStatus.PENDING and job is not None:
                if not events_read:  # one list for every pending task of this request
                    snap.events, events_read = await self.kube.events(snap.ns), True
                derived = derive(record, job, pods, snap.events, now)
            if derived.status.final and not (record.get("data") or {}).get("status"):
                record = await self._finalize(snap.ns, record, derived)
            out.append((record, derived))
        return out

    async def _finalize(self, ns: str, record: dict[str, Any], derived: Derived) -> dict[str, Any]:
        """Write a final status on the record once: the Job may be gone after its TTL, the record stays."""
        patch = {
            "metadata": {"labels": {STATE_LABEL: STATE_DONE}},
            "data": {
                "status": derived.status.value,
                "message": derived.message,
                "finished_at": now_utc().strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        }
        try:
            return await self.kube.merge_patch(ns, "ConfigMap", record["metadata"]["name"], patch)
        except ApiError as err:
            if err.status.code == 404:
                return record
            raise

    async def _active_count(self, ns: str, user: str) -> int:
        snap = await self._snapshot(ns, user, active_only=True)
        return sum(1 for _, d in await self._derive_all(snap) if not d.status.final)

    async def reconcile(self) -> int:
        """Finalize every finished task's record (all users, every team namespace); each replica runs this
        periodically."""
        finished = 0
        for ns in self.settings.namespaces():
            snap = await self._snapshot(ns, None, active_only=True)
            finished += sum(1 for _, d in await self._derive_all(snap) if d.status.final)
        return finished

    async def _infos(self, snap: Snapshot) -> list[TaskInfo]:
        return [
            task_info(record, derived, snap.jobs.get(tid := record["metadata"]["labels"][TASK_ID_LABEL]),
                      snap.pods.get(tid, []))
            for record, derived in await self._derive_all(snap)
        ]  # fmt: skip

    async def list_tasks(self, user: str | None) -> list[TaskInfo]:
        """The user's tasks (in their team's namespace), or with None every user's in every team namespace."""
        namespaces = self.settings.namespaces() if user is None else [self.team(user).namespace]
        infos = [info for ns in namespaces for info in await self._infos(await self._snapshot(ns, user))]
        return sorted(infos, key=lambda t: (t.submitted_at, t.task_id), reverse=True)

    async def queue(self, user: str) -> QueueView:
        """The user's tasks that Kueue holds in their team's queue, first in line first (unknown places last)."""
        team = self.team(user)
        waiting = [t for t in await self.list_tasks(user) if t.status is TaskStatus.PENDING and t.waiting_reason]
        waiting.sort(key=lambda t: (t.queue_position is None, t.queue_position or 0, t.submitted_at, t.task_id))
        return QueueView(team=team.name, namespace=team.namespace, queue=team.queue, tasks=waiting)

    async def task(self, user: str, task_id: str) -> TaskInfo:
        if not TASK_ID_RE.match(task_id):
            raise Problem(404, f"no task {task_id!r}: task ids are 8 characters ([a-z][a-z0-9]{{7}})")
        tasks = await self._infos(await self._snapshot(self.team(user).namespace, user, task_id))
        if not tasks:
            raise Problem(404, f"no task {task_id!r} of yours")
        return tasks[0]

    async def stop(self, user: str | None, task_id: str | None) -> list[str]:
        """Cancel pending or running tasks: record first (so no reader calls them failed), then the Job, its pods
        (directly, not only through the garbage collector: stop really stops) and the Service. With user None,
        every user's in every team namespace."""
        if task_id is not None and user is not None:
            info = await self.task(user, task_id)
            if info.status.final:
                raise Problem(409, f"task {task_id} is already {info.status.value}")
        namespaces = self.settings.namespaces() if user is None else [self.team(user).namespace]
        stopped = []
        for ns in namespaces:
            snap = await self._snapshot(ns, user, task_id, active_only=True)
            for record, derived in await self._derive_all(snap):
                if derived.status.final:
                    continue
                tid = record["metadata"]["labels"][TASK_ID_LABEL]
                cancelled = Derived(TaskStatus.CANCELLED, f"stopped by {user or 'an administrator'}")
                await self._finalize(ns, record, cancelled)
                name = task_object_name(tid)
                await self.kube.delete(ns, "Job", name)
                for pod in snap.pods.get(tid, []):
                    await self.kube.delete(ns, "Pod", pod["metadata"]["name"], grace_period=10)
                await self.kube.delete(ns, "Service", name)
                await self.kube.delete(ns, "NetworkPolicy", name)
                stopped.append(tid)
        return stopped

    async def logs(self, user: str, task_id: str, *, follow: bool) -> AsyncIterator[str]:
        """`node-{i} | line` from every node, interleaved as they come; with follow, until every pod ends."""
        info = await self.task(user, task_id)
        if not info.nodes and info.status.final:
            raise Problem(404, f"task {task_id} is {info.status.value} and its pods are gone: no logs remain")
        return follow_logs(self.kube, info.namespace, task_id, info.num_nodes, follow)

    # --- volumes -----------------------------------------------------------------------------------------
    async def _mounts(self, ns: str, user: str) -> dict[str, list[str]]:
        """claim name -> ids of the user's active tasks that mount it."""
        snap = await self._snapshot(ns, user, active_only=True)
        used: dict[str, list[str]] = {}
        for record, derived in await self._derive_all(snap):
            if derived.status.final:
                continue
            for line in (record.get("data") or {}).get("volumes", "").splitlines():
                used.setdefault(line.partition("=")[2], []).append(record["metadata"]["labels"][TASK_ID_LABEL])
        return used

    async def create_volume(self, user: str, request: VolumeCreate) -> VolumeInfo:
        return await create_volume(self.kube, self.team(user).namespace, user, request)

    async def volumes(self, user: str) -> list[VolumeInfo]:
        ns = self.team(user).namespace
        used = await self._mounts(ns, user)
        return sorted((volume_info(c, used) for c in await owned_volumes(self.kube, ns, user)), key=lambda v: v.name)

    async def volume(self, user: str, volume_id: str) -> VolumeInfo:
        for v in await self.volumes(user):
            if v.volume_id == volume_id:
                return v
        raise Problem(404, f"no volume {volume_id!r} of yours")

    async def delete_volume(self, user: str, volume_id: str) -> VolumeInfo:
        info = await self.volume(user, volume_id)
        if info.in_use_by:
            users = ", ".join(info.in_use_by)
            raise Problem(409, f"volume {info.name} is mounted by active task(s) {users}: stop them first")
        await self.kube.delete(self.team(user).namespace, "PersistentVolumeClaim", f"vol-{volume_id}")
        return info
