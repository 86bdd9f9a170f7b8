"""The operator's Kubernetes API calls, through lightkube's async client, with plain dicts in and out.

Creation is create-or-adopt: a 409 means the object is already there (an earlier reconcile, or one cut short by a
crash); it is taken over when it already belongs to this TrainingJob and refused when something else controls it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, codecs
from lightkube.core import resource as lkres
from lightkube.core.client import LabelValue
from lightkube.generic_resource import Generic, create_global_resource, create_namespaced_resource
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, Pod, ResourceQuota, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import CascadeType, PatchType

from trainop.queueing import JOB_UID_LABEL, KUEUE_VERSION
from workloads.trainingjob import (
    API_VERSION,
    ATTEMPT_LABEL,
    GROUP,
    KIND,
    KUEUE_GROUP,
    KUEUE_VISIBILITY_GROUP,
    PLURAL,
    TRAININGJOB_LABEL,
    VERSION,
)

log = logging.getLogger(__name__)
TrainingJobResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
FIELD_MANAGER = "trainop"
LocalQueue = create_namespaced_resource(KUEUE_GROUP, KUEUE_VERSION, "LocalQueue", "localqueues")
Workload = create_namespaced_resource(KUEUE_GROUP, KUEUE_VERSION, "Workload", "workloads")
ClusterQueue = create_global_resource(KUEUE_GROUP, KUEUE_VERSION, "ClusterQueue", "clusterqueues")
VISIBILITY_TIMEOUT_S = 3.0
"""Kueue's visibility API is an aggregated API: an answer slower than this leaves the position out."""


class PendingWorkloads(lkres.NamespacedResourceG, Generic):
    """`GET .../visibility.kueue.x-k8s.io/v1beta2/namespaces/NS/localqueues/NAME/pendingworkloads`: a LocalQueue's
    pending Workloads in order, each with its positionInLocalQueue."""

    _api_info = lkres.ApiInfo(
        resource=lkres.ResourceDef(KUEUE_VISIBILITY_GROUP, KUEUE_VERSION, "PendingWorkloadsSummary"),
        parent=lkres.ResourceDef(KUEUE_VISIBILITY_GROUP, KUEUE_VERSION, "LocalQueue"),
        plural="localqueues",
        verbs=["get"],
        action="pendingworkloads",
    )


class OwnedElsewhere(RuntimeError):
    """A child's name is taken by an object this TrainingJob does not control."""


def _missing(err: ApiError) -> bool:
    return err.status.code == 404


class Kube:
    def __init__(self, client: AsyncClient, namespace: str) -> None:
        self.client = client
        self.ns = namespace

    async def training_job(self, name: str) -> dict[str, Any] | None:
        try:
            return dict((await self.client.get(TrainingJobResource, name, namespace=self.ns)).to_dict())
        except ApiError as err:
            if _missing(err):
                return None
            raise

    async def training_jobs(self) -> list[dict[str, Any]]:
        return [dict(tj.to_dict()) async for tj in self.client.list(TrainingJobResource, namespace=self.ns)]

    async def resource_quotas(self) -> list[dict[str, Any]]:
        return [dict(q.to_dict()) async for q in self.client.list(ResourceQuota, namespace=self.ns)]

    async def local_queues(self) -> list[dict[str, Any]] | None:
        """The namespace's Kueue LocalQueues; None when the API server does not serve them (Kueue not installed)."""
        try:
            return [dict(q.to_dict()) async for q in self.client.list(LocalQueue, namespace=self.ns)]
        except ApiError as err:
            if _missing(err):
                return None
            raise

    async def cluster_queues(self) -> list[dict[str, Any]] | None:
        """Every ClusterQueue (cluster-scoped: the operator's ClusterRole); None when not allowed or not served, and
        then the gang is not checked against the queue's quota."""
        try:
            return [dict(q.to_dict()) async for q in self.client.list(ClusterQueue)]
        except ApiError as err:
            if err.status.code in (403, 404):
                log.warning("ClusterQueues not readable (%s): gangs are not checked against queue quotas", err)
                return None
            raise

    async def workloads(self, job_uid: str) -> list[dict[str, Any]]:
        """The Workloads Kueue made for the Job `job_uid` (its job-uid label)."""
        labels: dict[str, LabelValue] = {JOB_UID_LABEL: job_uid}
        return [dict(w.to_dict()) async for w in self.client.list(Workload, namespace=self.ns, labels=labels)]

    async def pending_workloads(self, queue: str) -> dict[str, Any] | None:
        """Kueue's visibility API for the LocalQueue `queue`, or None when it does not answer (not registered, not
        allowed, slow): the position is a nicety, never a reason to fail a reconciliation."""
        try:
            async with asyncio.timeout(VISIBILITY_TIMEOUT_S):
                return dict((await self.client.get(PendingWorkloads, queue, namespace=self.ns)).to_dict())
        except (ApiError, httpx2.HTTPError, TimeoutError, ValueError) as err:
            log.debug("pending workloads of %s: %s", queue, err)
            return None

    async def job(self, name: str) -> dict[str, Any] | None:
        try:
            return dict((await self.client.get(Job, name, namespace=self.ns)).to_dict())
        except ApiError as err:
            if _missing(err):
                return None
            raise

    async def pods(self, job_name: str) -> list[dict[str, Any]]:
        labels: dict[str, LabelValue] = {"batch.kubernetes.io/job-name": job_name}
        return [dict(p.to_dict()) async for p in self.client.list(Pod, namespace=self.ns, labels=labels)]

    async def create_or_adopt(self, obj: Mapping[str, Any], owner_uid: str) -> dict[str, Any]:
        try:
            created = await self.client.create(codecs.from_dict(dict(obj)), field_manager=FIELD_MANAGER)
            return dict(created.to_dict())
        except ApiError as err:
            if err.status.code != 409:
                raise
        kind: Any = {"ConfigMap": ConfigMap, "Service": Service, "NetworkPolicy": NetworkPolicy, "Job": Job}[
            obj["kind"]
        ]
        live = dict((await self.client.get(kind, obj["metadata"]["name"], namespace=self.ns)).to_dict())
        owners = [o["uid"] for o in live["metadata"].get("ownerReferences") or [] if o.get("controller")]
        if owners != [owner_uid]:
            raise OwnedElsewhere(f"{obj['kind']} {obj['metadata']['name']} exists and is not this TrainingJob's")
        return live

    async def delete_other_attempts(self, tj_name: str, attempt: int) -> list[str]:
        """Delete the children of this TrainingJob's earlier attempts (their pods go with their Job)."""
        deleted = []
        kinds: tuple[Any, ...] = (Job, Service, NetworkPolicy, ConfigMap)
        for kind in kinds:
            selector: dict[str, LabelValue] = {TRAININGJOB_LABEL: tj_name}
            async for obj in self.client.list(kind, namespace=self.ns, labels=selector):
                labels = obj.metadata.labels or {}
                if labels.get(ATTEMPT_LABEL) != str(attempt) and obj.metadata.deletionTimestamp is None:
                    await self.delete(kind, obj.metadata.name)
                    deleted.append(f"{kind.__name__}/{obj.metadata.name}")
        return deleted

    async def delete(self, kind: Any, name: str) -> None:
        """Delete in the background (dependents by the garbage collector). Gone already (404) is done; any other
        refusal (403, 409, 500, ...) raises, so the reconciliation fails and is retried instead of reporting a
        delete that did not happen while the object keeps its resources."""
        try:
            await self.client.delete(kind, name, namespace=self.ns, cascade=CascadeType.BACKGROUND)
        except ApiError as err:
            if not _missing(err):
                raise

    async def delete_job(self, name: str) -> None:
        await self.delete(Job, name)

    async def delete_training_job(self, name: str) -> None:
        await self.delete(TrainingJobResource, name)

    async def suspend_job(self, name: str, suspend: bool) -> dict[str, Any]:
        patched = await self.client.patch(
            Job,
            name,
            {"spec": {"suspend": suspend}},
            namespace=self.ns,
            patch_type=PatchType.MERGE,
            field_manager=FIELD_MANAGER,
        )
        return dict(patched.to_dict())

    async def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        """The whole status in one merge patch (lists, the conditions among them, are replaced, not merged)."""
        await self.client.patch(
            TrainingJobResource.Status,
            name,
            {"status": dict(status)},
            namespace=self.ns,
            patch_type=PatchType.MERGE,
            field_manager=FIELD_MANAGER,
        )

    async def attempt_pods_left(self, tj_name: str, attempt: int) -> list[str]:
        """Pods of this TrainingJob's other attempts that still exist (terminating ones included): an old gang may
        still be writing its SIGTERM checkpoint into the directory the next attempt resumes from."""
        selector: dict[str, LabelValue] = {TRAININGJOB_LABEL: tj_name}
        return [
            p.metadata.name
            async for p in self.client.list(Pod, namespace=self.ns, labels=selector)
            if (p.metadata.labels or {}).get(ATTEMPT_LABEL) != str(attempt)
        ]

    async def warning_events(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Warning events about one object (e.g. the Job controller's FailedCreate: exceeded quota), newest last."""
        fields = {"involvedObject.kind": kind, "involvedObject.name": name, "type": "Warning"}
        events = [dict(e.to_dict()) async for e in self.client.list(Event, namespace=self.ns, fields=fields)]
        return sorted(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    async def post_event(self, tj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """An Event about the TrainingJob (what `kubectl describe tj` shows). Posting is best effort: a refused
        Event is logged and never fails the reconciliation."""
        meta = tj["metadata"]
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": self.ns},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "namespace": self.ns,
                "uid": meta["uid"], "resourceVersion": meta.get("resourceVersion"),
            },
            "type": kind, "reason": reason, "message": message[:1000],
            "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }  # fmt: skip
        try:
            await self.client.create(codecs.from_dict(event))
        except ApiError as err:
            log.warning("event %s on %s not posted: %s", reason, meta["name"], err)

    async def log_tail(self, pod: str, lines: int = 5) -> str:
        """The last lines of a pod's trainer log, or "" when the log cannot be read (no kubelet, pod gone)."""
        try:
            chunks = [
                line async for line in self.client.log(pod, namespace=self.ns, container="trainer", tail_lines=lines)
            ]
        except (ApiError, httpx2.HTTPError):
            return ""
        return "".join(chunks).strip()
