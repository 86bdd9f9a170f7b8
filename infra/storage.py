"""Persistent volumes: on kind, PersistentVolumes on the node's mounted host directory with claims bound to them;
elsewhere, claims on a StorageClass.

Host-path volumes: the PersistentVolume is the mounted directory itself (it must exist: `make kind-up` creates it
world-writable), and pods mount their part of it with `subPath: <stack>/<role>`. The kubelet creates a missing
subPath with the mode of the volume's root, so the non-root pods can write it; a host path of its own per claim
(DirectoryOrCreate) would be created as root 0755 and be unwritable for uid 10001. The stack in the subPath keeps
two stacks on one cluster apart.

The claims hold the only copy of checkpoints and the MLflow database, so they are `protect`ed when
`protect_data` is on: `pulumi destroy` and a replacement (a changed storage class or access mode) stop with
Pulumi's "protected" error instead of deleting them (docs/infra.md, "Data volumes")."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import labels


@dataclass(frozen=True)
class VolumeClaim:
    role: str
    """What the volume holds (`checkpoints`, `mlflow`); also its PVC name and its host-path subdirectory."""
    size: str
    """Requested capacity."""
    access_mode: str
    """ReadWriteOnce, ReadWriteMany or ReadWriteOncePod."""


@dataclass(frozen=True)
class StorageArgs:
    namespace: pulumi.Input[str]
    """Namespace of the claims."""
    mode: str
    """hostPath (kind) or storageClass."""
    host_path: str
    """hostPath mode: directory on the node that kind mounts from the host; each claim gets a subdirectory."""
    storage_class: str
    """storageClass mode: class of every claim ("" = cluster default)."""
    claims: tuple[VolumeClaim, ...]
    """The volumes to create."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    stack: str
    """Stack name: host-path volumes keep each stack's data under `<host_path>/<stack>/<role>`."""
    protect_data: bool = True
    """Protect the claims (and host-path PVs) from deletion and replacement by Pulumi."""


class Storage(pulumi.ComponentResource):
    """One PVC per requested volume; pods mount `claim_names[role]` at `sub_paths[role]`."""

    claim_names: dict[str, pulumi.Output[str]]
    """PVC name per volume role."""
    sub_paths: dict[str, str | None]
    """subPath each pod must mount the claim with (host-path mode), or None (the whole volume)."""

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:storage:Storage", name, None, opts)
        self.claim_names = {}
        self.sub_paths = {}
        data = pulumi.ResourceOptions(parent=self, protect=args.protect_data)
        self.volumes: list[k8s.core.v1.PersistentVolume] = []
        self.claims: dict[str, k8s.core.v1.PersistentVolumeClaim] = {}
        """The PVC per volume role (depend on it where only its name is passed on)."""
        for claim in args.claims:
            meta_labels = labels(claim.role, args.instance, "storage")
            volume_name: pulumi.Input[str] | None = None
            # "" binds only to PVs without a class (our host-path PVs), so the kind default provisioner does not
            # create a second volume that the node directory never sees.
            class_name: str | None = ""
            if args.mode == "hostPath":
                pv = k8s.core.v1.PersistentVolume(
                    f"{name}-{claim.role}-pv",
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        # PVs are cluster-scoped: include the instance so two stacks on one cluster do not collide.
                        name=f"{args.instance}-{claim.role}",
                        labels=meta_labels,
                    ),
                    spec=k8s.core.v1.PersistentVolumeSpecArgs(
                        capacity={"storage": claim.size},
                        access_modes=[claim.access_mode],
                        persistent_volume_reclaim_policy="Retain",
                        storage_class_name="",
                        # Directory, not DirectoryOrCreate: a root the kubelet creates is root 0755 and unwritable.
                        host_path=k8s.core.v1.HostPathVolumeSourceArgs(path=args.host_path, type="Directory"),
                    ),
                    opts=data,
                )
                self.volumes.append(pv)
                volume_name = pv.metadata.name
                self.sub_paths[claim.role] = f"{args.stack}/{claim.role}"
            else:
                self.sub_paths[claim.role] = None
                class_name = args.storage_class or None
            pvc = k8s.core.v1.PersistentVolumeClaim(
                f"{name}-{claim.role}-pvc",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=claim.role,
                    namespace=args.namespace,
                    labels=meta_labels,
                    # A claim nobody mounts yet stays Pending on WaitForFirstConsumer classes; do not block on it.
                    annotations={"pulumi.com/skipAwait": "true"},
                ),
                spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                    access_modes=[claim.access_mode],
                    resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": claim.size}),
                    storage_class_name=class_name,
                    volume_name=volume_name,
                ),
                opts=data,
            )
            self.claims[claim.role] = pvc
            self.claim_names[claim.role] = pvc.metadata.name
        self.register_outputs({"claim_names": self.claim_names, "sub_paths": self.sub_paths})
