"""What the API does, over the cluster: submit, list, stop, logs, volumes (volumes' objects in skyrun/volumes.py,
log streams in skyrun/logs.py, a task's API view in skyrun/task_info.py). Every object of a user carries the user's
hash label and exact name (workloads/task.py); every read selects on the label and checks the name, so a user
never sees, stops, reads or mounts what is not theirs. Nothing is kept in memory between requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from lightkube import ApiError

from skyrun.common import Problem as Problem
from skyrun.common import invalid, new_id, now_utc
from skyrun.kube import Kube
from skyrun.logs import follow_logs
from skyrun.manifests import Anchor, Launch, task_manifests, task_object_name, task_resources, user_hash
from skyrun.models import SubmitResponse, TaskInfo, TaskStatus, VolumeCreate, VolumeInfo
from skyrun.settings import Settings
from skyrun.status import Derived, derive
from skyrun.task_info import task_info
from skyrun.task_spec import TaskInvalid, parse_task
from skyrun.volumes import ACCESS_MODES as ACCESS_MODES
from skyrun.volumes import create_volume, owned_volumes, volume_info
from workloads.quota import FieldError, quota_problems
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
    """One user's (or everyone's) task objects, read in one list call per kind."""

    records: list[dict[str, Any]]
    jobs: dict[str, dict[str, Any]]
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


class Launcher:
    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        self.anchor: Anchor | None = None
        """The launcher's Deployment once read (see `_anchor`)."""

    # --- tasks -------------------------------------------------------------------------------------------
    async def submit(self, user: str, task_yaml: str, envs: Mapping[str, str]) -> SubmitResponse:
        try:
            document = yaml.safe_load(task_yaml)
        except yaml.YAMLError as err:
            raise invalid([FieldError("task_yaml", f"not valid YAML: {err}")]) from None
        try:
            parsed = parse_task(document, env_overrides=envs)
        except TaskInvalid as err:
            raise invalid(err.errors) from None
        task = parsed.task
        owned = {v["metadata"]["annotations"][NAME_ANNOTATION]: v for v in await owned_volumes(self.kube, user)}
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
            namespace=self.settings.namespace,
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
        )
        quotas = await self.kube.objects("ResourceQuota", {})
        if over := quota_problems(task_resources(task, launch), task.num_nodes, quotas):
            raise invalid(over, "over_quota")
        active = await self._active_count(user)
        if active >= self.settings.max_active_tasks_per_user:
            raise Problem(
                409,
                f"you have {active} pending or running tasks, the most allowed is "
                f"{self.settings.max_active_tasks_per_user}: wait for one to finish or stop one",
                reason="active_task_limit",
            )
        launch = replace(launch, anchor=await self._anchor())
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
            await self._remove(task_id)
            if err.status.code in (400, 403, 422):
                message = f"the cluster refused the task: {err.status.message}"
                raise Problem(400, message, reason="cluster_refused") from None
            raise
        message = f"submitted: {task.num_nodes} node(s)"
        if parsed.ignored:
            message += f"; ignored on this cluster: {', '.join(parsed.ignored)}"
        return SubmitResponse(task_id=task_id, status=TaskStatus.PENDING, message=message, ignored=list(parsed.ignored))

    async def _anchor(self) -> Anchor | None:
        """The launcher's own Deployment, the owner of every task object: `pulumi destroy` deletes it with the
        launcher and the garbage collector then deletes every task, while a rolling update keeps its uid (and the
        tasks). Read at the first submission and kept: the uid cannot change under a running replica (a new
        Deployment of that name brings new pods)."""
        if self.anchor is None and self.settings.deployment:
            name, ns = self.settings.deployment, self.settings.namespace
            deployment = await self.kube.get("Deployment", name)
            if deployment is None:
                raise Problem(
                    503,
                    f"the launcher's Deployment {name} is not in namespace {ns} (setting SKYRUN_DEPLOYMENT): it owns "
                    "every task, and a task owned by a missing object is deleted at once; nothing was created",
                )
            self.anchor = Anchor(name=name, uid=deployment["metadata"]["uid"])
        return self.anchor

    async def _remove(self, task_id: str) -> None:
        name = task_object_name(task_id)
        for kind in ("Job", "Service", "NetworkPolicy", "ConfigMap"):
            await self.kube.delete(kind, name)

    async def _snapshot(self, user: str | None, task_id: str | None = None, *, active_only: bool = False) -> Snapshot:
        selector = {TASK_LABEL: "true"}
        if user is not None:
            selector[USER_HASH_LABEL] = user_hash(user)
        if task_id is not None:
            selector[TASK_ID_LABEL] = task_id
        record_selector = {**selector, KIND_LABEL: "task"}
        if active_only:
            record_selector[STATE_LABEL] = STATE_ACTIVE
        records, jobs, pods = await asyncio.gather(
            self.kube.objects("ConfigMap", record_selector),
            self.kube.objects("Job", selector),
            self.kube.objects("Pod", selector),
        )
        if user is not None:  # the hash label selects; the exact name decides
            records = [r for r in records if r["metadata"].get("annotations", {}).get(USER_ANNOTATION) == user]
        snap = Snapshot(records=records, jobs={j["metadata"]["labels"][TASK_ID_LABEL]: j for j in jobs})
        for pod in pods:
            snap.pods.setdefault(pod["metadata"]["labels"][TASK_ID_LABEL], []).append(pod)
        return snap

    async def _derive_all(self, snap: Snapshot) -> list[tuple[dict[str, Any], Derived]]:
        now = now_utc()
        out = []
        events_read = False
        for record in snap.records:
            tid = record["metadata"]["labels"][TASK_ID_LABEL]
            job, pods = snap.jobs.get(tid), snap.pods.get(tid, [])
            derived = derive(record, job, pods, [], now)
            if derived.status is TaskStatus.PENDING and job is not None:
                if not events_read:  # one list for every pending task of this request
                    snap.events, events_read = await self.kube.events(), True
                derived = derive(record, job, pods, snap.events, now)
            if derived.status.final and not (record.get("data") or {}).get("status"):
                record = await self._finalize(record, derived)
            out.append((record, derived))
        return out

    async def _finalize(self, record: dict[str, Any], derived: Derived) -> dict[str, Any]:
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
            return await self.kube.merge_patch("ConfigMap", record["metadata"]["name"], patch)
        except ApiError as err:
            if err.status.code == 404:
                return record
            raise

    async def _active_count(self, user: str) -> int:
        snap = await self._snapshot(user, active_only=True)
        return sum(1 for _, d in await self._derive_all(snap) if not d.status.final)

    async def reconcile(self) -> int:
        """Finalize every finished task's record (all users); the server runs this periodically."""
        snap = await self._snapshot(None, active_only=True)
        return sum(1 for _, d in await self._derive_all(snap) if d.status.final)

    async def list_tasks(self, user: str | None) -> list[TaskInfo]:
        snap = await self._snapshot(user)
        infos = [
            task_info(record, derived, snap.jobs.get(tid := record["metadata"]["labels"][TASK_ID_LABEL]),
                      snap.pods.get(tid, []))
            for record, derived in await self._derive_all(snap)
        ]  # fmt: skip
        return sorted(infos, key=lambda t: (t.submitted_at, t.task_id), reverse=True)

    async def task(self, user: str, task_id: str) -> TaskInfo:
        if not TASK_ID_RE.match(task_id):
            raise Problem(404, f"no task {task_id!r}: task ids are 8 characters ([a-z][a-z0-9]{{7}})")
        tasks = await self.list_tasks_by_id(user, task_id)
        if not tasks:
            raise Problem(404, f"no task {task_id!r} of yours")
        return tasks[0]

    async def list_tasks_by_id(self, user: str, task_id: str) -> list[TaskInfo]:
        snap = await self._snapshot(user, task_id)
        return [
            task_info(r, d, snap.jobs.get(task_id), snap.pods.get(task_id, [])) for r, d in await self._derive_all(snap)
        ]

    async def stop(self, user: str | None, task_id: str | None) -> list[str]:
        """Cancel pending or running tasks: record first (so no reader calls them failed), then the Job, its pods
        (directly, not only through the garbage collector: stop really stops) and the Service."""
        if task_id is not None and user is not None:
            info = await self.task(user, task_id)
            if info.status.final:
                raise Problem(409, f"task {task_id} is already {info.status.value}")
        snap = await self._snapshot(user, task_id, active_only=True)
        stopped = []
        for record, derived in await self._derive_all(snap):
            if derived.status.final:
                continue
            tid = record["metadata"]["labels"][TASK_ID_LABEL]
            await self._finalize(record, Derived(TaskStatus.CANCELLED, f"stopped by {user or 'an administrator'}"))
            name = task_object_name(tid)
            await self.kube.delete("Job", name)
            for pod in snap.pods.get(tid, []):
                await self.kube.delete("Pod", pod["metadata"]["name"], grace_period=10)
            await self.kube.delete("Service", name)
            await self.kube.delete("NetworkPolicy", name)
            stopped.append(tid)
        return stopped

    async def logs(self, user: str, task_id: str, *, follow: bool) -> AsyncIterator[str]:
        """`node-{i} | line` from every node, interleaved as they come; with follow, until every pod ends."""
        info = await self.task(user, task_id)
        if not info.nodes and info.status.final:
            raise Problem(404, f"task {task_id} is {info.status.value} and its pods are gone: no logs remain")
        return follow_logs(self.kube, task_id, info.num_nodes, follow)

    # --- volumes -----------------------------------------------------------------------------------------
    async def _mounts(self, user: str) -> dict[str, list[str]]:
        """claim name -> ids of the user's active tasks that mount it."""
        snap = await self._snapshot(user, active_only=True)
        used: dict[str, list[str]] = {}
        for record, derived in await self._derive_all(snap):
            if derived.status.final:
                continue
            for line in (record.get("data") or {}).get("volumes", "").splitlines():
                used.setdefault(line.partition("=")[2], []).append(record["metadata"]["labels"][TASK_ID_LABEL])
        return used

    async def create_volume(self, user: str, request: VolumeCreate) -> VolumeInfo:
        return await create_volume(self.kube, self.settings.namespace, user, request)

    async def volumes(self, user: str) -> list[VolumeInfo]:
        used = await self._mounts(user)
        return sorted((volume_info(c, used) for c in await owned_volumes(self.kube, user)), key=lambda v: v.name)

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
        await self.kube.delete("PersistentVolumeClaim", f"vol-{volume_id}")
        return info
