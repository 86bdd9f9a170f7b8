"""Pieces of every pod the platform runs, as plain dicts: recommended labels, the restricted security contexts,
resource requirements, scratch volumes, tolerations, and checkov's skip annotations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PART_OF = "ml-platform"
# The non-root identity every platform container runs as (the Dockerfile creates this user).
APP_UID = 10001
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container, as Kubernetes quantities."""

    cpu_request: str
    """cpu request (e.g. `250m`)."""
    cpu_limit: str
    """cpu limit; never below the request."""
    memory_request: str
    """memory request (e.g. `512Mi`)."""
    memory_limit: str
    """memory limit; never below the request."""
    gpus: int = 0
    """nvidia.com/gpu request and limit (0 = none)."""


@dataclass(frozen=True)
class Toleration:
    """One taint the training pods tolerate (`key[=value]:Effect`)."""

    key: str
    """Taint key."""
    value: str | None
    """Taint value; None tolerates any value (operator Exists)."""
    effect: str
    """NoSchedule, PreferNoSchedule or NoExecute."""


def slot_port_name(base: str, slot: int) -> str:
    """Name of the container port of process `slot` of a pod whose processes each serve one port: `base` for the
    first, then `base-1`, `base-2`, ... (a port name is at most 15 characters; `metrics-15` fits)."""
    return base if slot == 0 else f"{base}-{slot}"


def selector_labels(name: str, instance: str) -> dict[str, str]:
    """The stable subset of the recommended labels, used in selectors (never change these on a live object)."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": instance}


def recommended_labels(name: str, instance: str, component: str, managed_by: str) -> dict[str, str]:
    """Kubernetes' recommended `app.kubernetes.io/*` labels; `managed_by` names the object's creator."""
    return {
        **selector_labels(name, instance),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": managed_by,
    }


def pod_security_context(uid: int = APP_UID) -> dict[str, Any]:
    """Pod Security Standards `restricted`: non-root, RuntimeDefault seccomp; fsGroup makes volumes writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """`restricted` at container level, plus a read-only root filesystem (writable paths are emptyDirs)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resource_requirements(res: Resources) -> dict[str, dict[str, str]]:
    requests = {"cpu": res.cpu_request, "memory": res.memory_request}
    limits = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if res.gpus:
        # Extended resources must have request == limit.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def toleration(t: Toleration) -> dict[str, str]:
    if t.value is None:
        return {"key": t.key, "operator": "Exists", "effect": t.effect}
    return {"key": t.key, "operator": "Equal", "value": t.value, "effect": t.effect}


def tmp_volume(name: str = "tmp", size: str = "256Mi") -> dict[str, Any]:
    """A writable scratch directory for a container whose root filesystem is read-only."""
    return {"name": name, "emptyDir": {"sizeLimit": size}}


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


def ranks_network_policy(metadata: dict[str, Any], ranks: Mapping[str, str]) -> dict[str, Any]:
    """A NetworkPolicy that lets the pods matching `ranks` (one training run's, one task's) reach each other on
    every port and protocol. Policies add up: the namespace's default deny and its other allowances stay."""
    peers = [{"podSelector": {"matchLabels": dict(ranks)}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(ranks)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": peers}],
            "egress": [{"to": peers}],
        },
    }
