"""Namespace with Pod Security labels, a ResourceQuota and LimitRange defaults."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import GPU_RESOURCE, container_defaults, labels, pod_security_labels
from infra.config import Resources


@dataclass(frozen=True)
class NamespaceArgs:
    name: str
    """Namespace name (DNS-1123 label)."""
    quota_cpu: str
    """Sum of cpu limits allowed in the namespace."""
    quota_memory: str
    """Sum of memory limits allowed in the namespace."""
    quota_pods: int
    """Pods allowed in the namespace."""
    quota_gpus: int
    """nvidia.com/gpu requests allowed; 0 leaves GPUs out of the quota."""
    defaults: Resources
    """Requests and limits the LimitRange gives containers that declare none."""


class Namespace(pulumi.ComponentResource):
    """The platform's namespace. Pod Security `restricted` is enforced, audited and warned, so a pod that is not
    restricted is rejected at admission; the quota caps what a runaway autoscaler or Job can take."""

    name: pulumi.Output[str]
    """The namespace's name, known once the Namespace exists (depend on it to order children)."""

    def __init__(self, name: str, args: NamespaceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:namespace:Namespace", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels("namespace", args.name, "platform")
        pss = pod_security_labels()

        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.name, labels={**meta_labels, **pss}),
            opts=child,
        )
        self.name = self.namespace.metadata.name
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[self.namespace])

        hard: dict[str, str] = {
            "requests.cpu": args.quota_cpu,
            "limits.cpu": args.quota_cpu,
            "requests.memory": args.quota_memory,
            "limits.memory": args.quota_memory,
            "pods": str(args.quota_pods),
        }
        if args.quota_gpus:
            hard[f"requests.{GPU_RESOURCE}"] = str(args.quota_gpus)
        self.quota = k8s.core.v1.ResourceQuota(
            f"{name}-quota",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="platform-quota", namespace=self.name, labels=meta_labels),
            spec=k8s.core.v1.ResourceQuotaSpecArgs(hard=hard),
            opts=in_ns,
        )
        # With a cpu/memory quota the API server rejects pods without requests and limits; these defaults make
        # containers that forget them (third-party init containers, debug pods) admissible.
        self.limit_range = k8s.core.v1.LimitRange(
            f"{name}-limits",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="platform-defaults", namespace=self.name, labels=meta_labels),
            spec=container_defaults(args.defaults),
            opts=in_ns,
        )
        self.register_outputs({"name": self.name, "quota": self.quota.metadata.name})
