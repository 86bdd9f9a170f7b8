"""A user's volumes: PVCs labelled with their owner's hash and annotated with the exact name, so a user never
sees, mounts or deletes a volume that is not theirs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import ApiError

from skyrun.common import Problem, invalid, new_id
from skyrun.kube import Kube
from skyrun.manifests import user_hash, volume_claim
from skyrun.models import VolumeCreate, VolumeInfo
from workloads.quantity import parse_quantity
from workloads.quota import FieldError
from workloads.task import KIND_LABEL, NAME_ANNOTATION, USER_ANNOTATION, USER_HASH_LABEL

ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod")


async def owned_volumes(kube: Kube, user: str) -> list[dict[str, Any]]:
    """The user's PVCs: the hash label selects, the exact name decides. A deleted claim is gone for the user
    although its `kubernetes.io/pvc-protection` finalizer keeps it listed until kube-controller-manager removes
    it, some time after the delete returned (no pod may mount a claim that is being deleted anyway)."""
    claims = await kube.objects("PersistentVolumeClaim", {KIND_LABEL: "volume", USER_HASH_LABEL: user_hash(user)})
    return [
        c
        for c in claims
        if c["metadata"].get("annotations", {}).get(USER_ANNOTATION) == user
        and not c["metadata"].get("deletionTimestamp")
    ]


def volume_info(claim: Mapping[str, Any], used: Mapping[str, list[str]]) -> VolumeInfo:
    """A PVC as the API shows it; `used` maps claim names to the ids of the active tasks that mount them."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    return VolumeInfo(
        volume_id=meta["name"].removeprefix("vol-"),
        name=meta["annotations"][NAME_ANNOTATION],
        user=meta["annotations"][USER_ANNOTATION],
        size=((spec.get("resources") or {}).get("requests") or {}).get("storage", ""),
        storage_class=spec.get("storageClassName") or "",
        access_modes=list(spec.get("accessModes") or []),
        phase=(claim.get("status") or {}).get("phase", ""),
        in_use_by=sorted(used.get(meta["name"], [])),
    )


async def create_volume(kube: Kube, namespace: str, user: str, request: VolumeCreate) -> VolumeInfo:
    size = request.size.strip()
    if size.replace(".", "", 1).isdigit():
        size = f"{size}Gi"  # SkyPilot's sizes are GiB
    try:
        if parse_quantity(size) <= 0:
            raise ValueError
    except ValueError:
        message = f"{request.size!r} is not a size: use GiB (10) or a quantity (10Gi)"
        raise invalid([FieldError("size", message)]) from None
    bad_modes = [m for m in request.access_modes if m not in ACCESS_MODES]
    if bad_modes:
        raise invalid([FieldError("access_modes", f"{bad_modes} not in {list(ACCESS_MODES)}")])
    if any(v["metadata"]["annotations"][NAME_ANNOTATION] == request.name for v in await owned_volumes(kube, user)):
        raise Problem(409, f"you already have a volume named {request.name!r}")
    for _ in range(5):
        claim = volume_claim(
            volume_id=new_id(),
            name=request.name,
            user=user,
            namespace=namespace,
            size=size,
            storage_class=request.storage_class,
            access_modes=tuple(request.access_modes),
        )
        try:
            created = await kube.create(claim)
        except ApiError as err:
            if err.status.code == 409:
                continue
            if err.status.code in (400, 403, 422):
                raise Problem(400, f"the cluster refused the volume: {err.status.message}") from None
            raise
        return volume_info(created, {})
    raise Problem(409, "could not find a free volume id; try again")
