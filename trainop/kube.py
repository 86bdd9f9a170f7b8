"""The operator's Kubernetes API calls, through lightkube's async client, with plain dicts in and out.

Creation is create-or-adopt: a 409 means the object is already there (an earlier reconcile, or one cut short by a
crash); it is taken over when it already belongs to this TrainingJob and refused when something else controls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, codecs
from lightkube.core.client import LabelValue
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Pod, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.types import CascadeType, PatchType

from workloads.trainingjob import ATTEMPT_LABEL, GROUP, KIND, PLURAL, TRAININGJOB_LABEL, VERSION

TrainingJobResource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
FIELD_MANAGER = "trainop"


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

    async def log_tail(self, pod: str, lines: int = 5) -> str:
        """The last lines of a pod's trainer log, or "" when the log cannot be read (no kubelet, pod gone)."""
        try:
            chunks = [
                line async for line in self.client.log(pod, namespace=self.ns, container="trainer", tail_lines=lines)
            ]
        except (ApiError, httpx2.HTTPError):
            return ""
        return "".join(chunks).strip()
