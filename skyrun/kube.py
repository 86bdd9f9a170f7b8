"""The launcher's Kubernetes API calls, through lightkube's async client, with plain dicts in and out. Every call
names its namespace: a user's objects live in their team's namespace (skyrun/settings.py `team_of`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.core import resource as res
from lightkube.core.client import LabelValue
from lightkube.generic_resource import Generic, create_global_resource, create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Event, PersistentVolumeClaim, Pod, ResourceQuota, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import CascadeType, PatchType

FIELD_MANAGER = "skyrun"
KUEUE = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
VISIBILITY = "visibility.kueue.x-k8s.io"
Workload = create_namespaced_resource(KUEUE, KUEUE_VERSION, "Workload", "workloads")
LocalQueue = create_namespaced_resource(KUEUE, KUEUE_VERSION, "LocalQueue", "localqueues")
ClusterQueue = create_global_resource(KUEUE, KUEUE_VERSION, "ClusterQueue", "clusterqueues")


class PendingWorkloads(res.NamespacedResourceG, Generic):  # type: ignore[misc]  # lightkube's own generic pattern
    """Kueue's visibility API: `GET .../namespaces/{ns}/localqueues/{queue}/pendingworkloads` (an aggregated API
    served by kueue-controller-manager), the queue's pending workloads in order."""

    _api_info = res.ApiInfo(
        resource=res.ResourceDef(VISIBILITY, KUEUE_VERSION, "PendingWorkloadsSummary"),
        parent=res.ResourceDef(VISIBILITY, KUEUE_VERSION, "LocalQueue"),
        plural="localqueues",
        verbs=["get"],
        action="pendingworkloads",
    )


KINDS: dict[str, Any] = {
    "ConfigMap": ConfigMap, "Service": Service, "Job": Job, "Pod": Pod, "PersistentVolumeClaim": PersistentVolumeClaim,
    "NetworkPolicy": NetworkPolicy, "ResourceQuota": ResourceQuota, "Deployment": Deployment, "Lease": Lease,
    "Workload": Workload, "LocalQueue": LocalQueue,
}  # fmt: skip


def missing(err: ApiError) -> bool:
    return err.status.code == 404


class Kube:
    """Objects as dicts; every namespaced call takes the namespace first."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        created = await self.client.create(codecs.from_dict(dict(obj)), field_manager=FIELD_MANAGER)
        return dict(created.to_dict())

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: refused with 409 when `metadata.resourceVersion` is no longer the object's (optimistic locking)."""
        replaced = await self.client.replace(codecs.from_dict(dict(obj)), field_manager=FIELD_MANAGER)
        return dict(replaced.to_dict())

    async def get(self, ns: str, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return dict((await self.client.get(KINDS[kind], name, namespace=ns)).to_dict())
        except ApiError as err:
            if missing(err):
                return None
            raise

    async def objects(self, ns: str, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector: dict[str, LabelValue] = dict(labels)
        return [dict(o.to_dict()) async for o in self.client.list(KINDS[kind], namespace=ns, labels=selector)]

    async def events(self, ns: str) -> list[dict[str, Any]]:
        return [dict(e.to_dict()) async for e in self.client.list(Event, namespace=ns)]

    async def cluster_queues(self) -> list[dict[str, Any]]:
        return [dict(o.to_dict()) async for o in self.client.list(ClusterQueue)]

    async def pending_workloads(self, ns: str, queue: str) -> list[dict[str, Any]] | None:
        """The LocalQueue's pending workloads from Kueue's visibility API (items with `positionInLocalQueue`); None
        when that API does not answer (not installed, not ready, not allowed): positions are a nicety."""
        try:
            answer = await self.client.get(PendingWorkloads, queue, namespace=ns)
        except ApiError as err:
            if err.status.code in (403, 404, 503):
                return None
            raise
        return list(answer.to_dict().get("items") or [])

    async def merge_patch(self, ns: str, kind: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched = await self.client.patch(
            KINDS[kind], name, dict(patch), namespace=ns, patch_type=PatchType.MERGE, field_manager=FIELD_MANAGER
        )
        return dict(patched.to_dict())

    async def delete(self, ns: str, kind: str, name: str, *, grace_period: int | None = None) -> None:
        """Delete in the background (dependents by the garbage collector); a missing object is not an error."""
        try:
            await self.client.delete(
                KINDS[kind], name, namespace=ns, grace_period=grace_period, cascade=CascadeType.BACKGROUND
            )
        except ApiError as err:
            if not missing(err):
                raise

    async def log_lines(self, ns: str, pod: str, container: str, *, follow: bool) -> AsyncIterator[str]:
        if follow:
            # lightkube 1.0's async follow reads an error answer with a sync call and raises RuntimeError instead
            # of the API's error; a one-line read first gets the real ApiError (kubelet unreachable, pod gone).
            async for _ in self.client.log(pod, namespace=ns, container=container, tail_lines=1):
                pass
        lines = self.client.log(pod, namespace=ns, container=container, follow=follow, newlines=False)
        async for line in lines:
            yield line

    async def token_review(self, token: str, audience: str) -> dict[str, Any]:
        review = codecs.from_dict(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]},
            }
        )
        return dict((await self.client.create(review)).to_dict())

    async def access_review(self, ns: str, user: Mapping[str, Any], verb: str, group: str, resource: str) -> bool:
        spec: dict[str, Any] = {
            "user": user.get("username", ""),
            "groups": list(user.get("groups") or []),
            "resourceAttributes": {"namespace": ns, "verb": verb, "group": group, "resource": resource},
        }
        if user.get("uid"):
            spec["uid"] = user["uid"]
        if user.get("extra"):
            spec["extra"] = user["extra"]
        review = codecs.from_dict(
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        )
        answer = dict((await self.client.create(review)).to_dict())
        return bool((answer.get("status") or {}).get("allowed"))
