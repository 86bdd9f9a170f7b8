"""Pieces every component uses: recommended labels, the restricted security contexts, resource requirements."""

from __future__ import annotations

import pulumi_kubernetes as k8s

from infra.config import Resources

PART_OF = "ml-platform"
# The non-root identity every platform container runs as (the Dockerfile creates this user).
APP_UID = 10001
GPU_RESOURCE = "nvidia.com/gpu"


# Annotations that make `pulumi up` return once the API server has stored the object, without waiting for it to
# become ready (a Job to complete, a Deployment to become Available). Not `pulumi.com/skipAwait`: for Jobs and
# Deployments the provider then also skips waiting for their *deletion*, so a replacement, or an `up` right after
# a `destroy`, creates the object while the old one (same name) still terminates and fails with "object is being
# deleted: ... already exists". A `waitFor` condition replaces only the readiness await.
AWAIT_CREATED_ONLY = {"pulumi.com/waitFor": "jsonpath={.metadata.uid}"}


def selector_labels(name: str, instance: str) -> dict[str, str]:
    """The stable subset of the recommended labels, used in selectors (never change these on a live object)."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": instance}


def labels(name: str, instance: str, component: str) -> dict[str, str]:
    """Kubernetes' recommended `app.kubernetes.io/*` labels."""
    return {
        **selector_labels(name, instance),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }


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
    requests = {"cpu": res.cpu_request, "memory": res.memory_request}
    limits = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if res.gpus:
        # Extended resources must have request == limit.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(res.gpus)
    return k8s.core.v1.ResourceRequirementsArgs(requests=requests, limits=limits)


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


def checkov_skips(*, images: list[str], pull_policy: str) -> dict[str, str]:
    """checkov skip annotations (`checkov.io/skipN: CHECK=why`) for the checks these settings cannot pass, each
    with its reason, on the object they apply to. docs/security.md lists them."""
    reasons = []
    if pull_policy != "Always":
        reasons.append(
            "CKV_K8S_15=imagePullPolicy comes from the stack: a kind-loaded image exists only on the node, "
            "so Always could never pull it"
        )
    if any("@sha256:" not in image for image in images):
        reasons.append(
            "CKV_K8S_43=images are pinned by release tag (the policy pack forbids :latest and untagged); "
            "set the image to repo@sha256:... to pin by digest"
        )
    return {f"checkov.io/skip{i}": reason for i, reason in enumerate(reasons, start=1)}
