"""A user's volumes: PVCs labelled with their owner's hash and annotated with the exact name, so a user never
sees, mounts or deletes a volume that is not theirs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from lightkube import ApiError

from skyrun.common import Problem, invalid, new_id
from skyrun.kube import Kube
from skyrun.manifests import user_hash, volume_claim
from skyrun.models import VolumeCreate, VolumeInfo
from workloads.quantity import format_quantity, parse_quantity
from workloads.quota import FieldError
from workloads.task import KIND_LABEL, NAME_ANNOTATION, USER_ANNOTATION, USER_HASH_LABEL

ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod")


async def owned_volumes(kube: Kube, ns: str, user: str) -> list[dict[str, Any]]:
    """The user's PVCs: the hash label selects, the exact name decides. A deleted claim is gone for the user
    although its `kubernetes.io/pvc-protection` finalizer keeps it listed until kube-controller-manager removes
    it, some time after the delete returned (no pod may mount a claim that is being deleted anyway)."""
    claims = await kube.objects(ns, "PersistentVolumeClaim", {KIND_LABEL: "volume", USER_HASH_LABEL: user_hash(user)})
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


def storage_quota_problems(
    size: Decimal, storage_class: str | None, quotas: Iterable[Mapping[str, Any]]
) -> list[FieldError]:
    """One problem per ResourceQuota line a new claim of `size` would go over, from the quota's `status.hard` and
    `status.used` (what is left now: unlike a task, a claim never waits for room; the API server refuses it):
    `requests.storage`, `persistentvolumeclaims`, and the storage class's own lines when the claim names one."""
    lines = {"requests.storage": ("size", size), "persistentvolumeclaims": ("name", Decimal(1))}
    if storage_class:
        prefix = f"{storage_class}.storageclass.storage.k8s.io/"
        lines[f"{prefix}requests.storage"] = ("size", size)
        lines[f"{prefix}persistentvolumeclaims"] = ("name", Decimal(1))
    problems = []
    for quota in sorted(quotas, key=lambda q: str(q["metadata"]["name"])):
        name, status = str(quota["metadata"]["name"]), quota.get("status") or {}
        hard = {**(quota.get("spec") or {}).get("hard", {}), **(status.get("hard") or {})}
        used = status.get("used") or {}
        for key, (field, wanted) in lines.items():
            if key not in hard:
                continue
            limit, in_use = parse_quantity(str(hard[key])), parse_quantity(str(used.get(key, "0")))
            left = max(limit - in_use, Decimal(0))
            if wanted <= left:
                continue
            if field == "size":
                message = (
                    f"{key}: the volume asks {format_quantity(wanted, binary=True)}, the namespace quota "
                    f"{name} has {format_quantity(left, binary=True)} left of "
                    f"{format_quantity(limit, binary=True)} ({format_quantity(in_use, binary=True)} used); "
                    f"ask for less, delete a volume you no longer need, or have ResourceQuota {name} raised"
                )
            else:
                message = (
                    f"{key}: the namespace quota {name} allows {limit} volumes (claims) and {in_use} exist; "
                    f"delete a volume you no longer need or have ResourceQuota {name} raised"
                )
            problems.append(FieldError(field, message))  # fmt: skip
    return problems


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
    owned = await owned_volumes(kube, namespace, user)
    if any(v["metadata"]["annotations"][NAME_ANNOTATION] == request.name for v in owned):
        raise Problem(409, f"you already have a volume named {request.name!r}")
    quotas = await kube.objects(namespace, "ResourceQuota", {})
    if over := storage_quota_problems(parse_quantity(size), request.storage_class, quotas):
        raise invalid(over, "over_storage_quota")
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
