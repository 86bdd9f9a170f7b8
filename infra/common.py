"""Pieces every component uses: recommended labels, the restricted security contexts, resource requirements.

The dict forms of these live in `workloads.pod` (the pure builders use them); the typed `*Args` forms here are for
components that build their children from pulumi_kubernetes' classes. tests/infra/test_stacks.py checks that every
rendered pod carries exactly the `workloads.pod` contexts, whichever form built it.
"""

from __future__ import annotations

from typing import Any

import pulumi_kubernetes as k8s

from workloads.pod import (
    APP_UID,
    GPU_RESOURCE,
    PART_OF,
    Resources,
    checkov_skips,
    recommended_labels,
    selector_labels,
)
from workloads.pod import resource_requirements as workload_resource_requirements

__all__ = [
    "APP_UID", "AWAIT_CREATED_ONLY", "GPU_RESOURCE", "MANAGED_BY", "PART_OF", "as_input", "checkov_skips",
    "checkov_skips_with_api_token",
    "container_security_context", "http_service_spec", "labels", "pod_security_context", "pod_security_labels",
    "resource_requirements", "selector_labels", "tmp_volume",
]  # fmt: skip

# Value of `app.kubernetes.io/managed-by` on what the Pulumi program creates.
MANAGED_BY = "pulumi"

# Annotations that make `pulumi up` return once the API server has stored the object, without waiting for it to
# become ready (a Job to complete, a Deployment to become Available). Not `pulumi.com/skipAwait`: for Jobs and
# Deployments the provider then also skips waiting for their *deletion*, so a replacement, or an `up` right after
# a `destroy`, creates the object while the old one (same name) still terminates and fails with "object is being
# deleted: ... already exists". A `waitFor` condition replaces only the readiness await.
AWAIT_CREATED_ONLY = {"pulumi.com/waitFor": "jsonpath={.metadata.uid}"}


def labels(name: str, instance: str, component: str) -> dict[str, str]:
    """Kubernetes' recommended `app.kubernetes.io/*` labels of an object the Pulumi program manages."""
    return recommended_labels(name, instance, component, MANAGED_BY)


def pod_security_labels(level: str = "restricted") -> dict[str, str]:
    """Namespace labels that make Pod Security admission enforce, audit and warn at `level` (latest version)."""
    modes = ("enforce", "audit", "warn")
    return {
        **{f"pod-security.kubernetes.io/{mode}": level for mode in modes},
        **{f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in modes},
    }


def pod_security_context(uid: int = APP_UID) -> k8s.core.v1.PodSecurityContextArgs:
    """Pod Security Standards `restricted`: non-root, RuntimeDefault seccomp; fsGroup makes volumes writable."""
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        fs_group=uid,
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.core.v1.SecurityContextArgs:
    """`restricted` at container level, plus a read-only root filesystem (writable paths are emptyDirs)."""
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        read_only_root_filesystem=True,
        run_as_non_root=True,
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def resource_requirements(res: Resources) -> k8s.core.v1.ResourceRequirementsArgs:
    resources = workload_resource_requirements(res)
    return k8s.core.v1.ResourceRequirementsArgs(requests=resources["requests"], limits=resources["limits"])


def http_service_spec(
    service_type: str, selector: dict[str, str], port: int, node_port: int
) -> k8s.core.v1.ServiceSpecArgs:
    """A Service for one HTTP port named `http`; `node_port` applies only to the NodePort type."""
    return k8s.core.v1.ServiceSpecArgs(
        type=service_type,
        selector=selector,
        ports=[
            k8s.core.v1.ServicePortArgs(
                name="http",
                port=port,
                target_port="http",
                node_port=node_port if service_type == "NodePort" else None,
            )
        ],
    )


def tmp_volume(name: str = "tmp", size: str = "256Mi") -> k8s.core.v1.VolumeArgs:
    """A writable scratch directory for a container whose root filesystem is read-only."""
    return k8s.core.v1.VolumeArgs(name=name, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=size))


def as_input(value: object) -> Any:
    """A plain dict or list, as the API takes it, passed where the SDK's overloads want its TypedDicts."""
    return value


def checkov_skips_with_api_token(*, image: str, pull_policy: str, why: str) -> dict[str, str]:
    """`checkov_skips` plus the justified CKV_K8S_38 skip of a pod whose work is the Kubernetes API."""
    skips = checkov_skips(images=[image], pull_policy=pull_policy)
    skips[f"checkov.io/skip{len(skips) + 1}"] = f"CKV_K8S_38={why}"
    return skips
