"""The launcher's Kubernetes API calls, through lightkube's async client, with plain dicts in and out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.core.client import LabelValue
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, PersistentVolumeClaim, Pod, ResourceQuota, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import CascadeType, PatchType

FIELD_MANAGER = "skyrun"
KINDS: dict[str, Any] = {
    "ConfigMap": ConfigMap, "Service": Service, "Job": Job, "Pod": Pod, "PersistentVolumeClaim": PersistentVolumeClaim,
    "NetworkPolicy": NetworkPolicy, "ResourceQuota": ResourceQuota, "Deployment": Deployment,
}  # fmt: skip


def missing(err: ApiError) -> bool:
    return err.status.code == 404


class Kube:
    """One namespace's objects, as dicts."""

    def __init__(self, client: AsyncClient, namespace: str) -> None:
        self.client = client
        self.ns = namespace

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        created = await self.client.create(codecs.from_dict(dict(obj)), field_manager=FIELD_MANAGER)
        return dict(created.to_dict())

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return dict((await self.client.get(KINDS[kind], name, namespace=self.ns)).to_dict())
        except ApiError as err:
            if missing(err):
                return None
            raise

    async def objects(self, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector: dict[str, LabelValue] = dict(labels)
        return [dict(o.to_dict()) async for o in self.client.list(KINDS[kind], namespace=self.ns, labels=selector)]

    async def events(self) -> list[dict[str, Any]]:
        return [dict(e.to_dict()) async for e in self.client.list(Event, namespace=self.ns)]

    async def merge_patch(self, kind: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched = await self.client.patch(
            KINDS[kind], name, dict(patch), namespace=self.ns, patch_type=PatchType.MERGE, field_manager=FIELD_MANAGER
        )
        return dict(patched.to_dict())

    async def delete(self, kind: str, name: str, *, grace_period: int | None = None) -> None:
        """Delete in the background (dependents by the garbage collector); a missing object is not an error."""
        try:
            await self.client.delete(
                KINDS[kind], name, namespace=self.ns, grace_period=grace_period, cascade=CascadeType.BACKGROUND
            )
        except ApiError as err:
            if not missing(err):
                raise

    async def log_lines(self, pod: str, container: str, *, follow: bool) -> AsyncIterator[str]:
        if follow:
            # lightkube 1.0's async follow reads an error answer with a sync call and raises RuntimeError instead
            # of the API's error; a one-line read first gets the real ApiError (kubelet unreachable, pod gone).
            async for _ in self.client.log(pod, namespace=self.ns, container=container, tail_lines=1):
                pass
        lines = self.client.log(pod, namespace=self.ns, container=container, follow=follow, newlines=False)
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

    async def access_review(self, user: Mapping[str, Any], verb: str, group: str, resource: str) -> bool:
        spec: dict[str, Any] = {
            "user": user.get("username", ""),
            "groups": list(user.get("groups") or []),
            "resourceAttributes": {"namespace": self.ns, "verb": verb, "group": group, "resource": resource},
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
