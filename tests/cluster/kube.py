"""Small helpers over tests.harness.api.Api (lightkube) for the real-cluster tests: namespaces, pods, waiting with a
diagnosis (pod status, events, kubelet log tail) when something does not happen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.cluster.realcluster import RealCluster
from tests.harness.wait import eventually

# Pods run under the cluster's own cgroup root, outside the caller's memory cgroup: every pod gets limits.
SMALL = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}


def create_namespace(cluster: RealCluster, name: str, labels: Mapping[str, str] | None = None) -> str:
    """Create a namespace and wait for its default ServiceAccount (pods created before it are refused)."""
    meta = {"name": name, "labels": dict(labels or {})}
    cluster.api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    eventually(
        f"ServiceAccount {name}/default",
        lambda: cluster.api.get("v1", "ServiceAccount", "default", name) is not None,
        60,
    )
    return name


def diagnose(cluster: RealCluster, namespace: str) -> str:
    lines = []
    for pod in cluster.api.items("v1", "Pod", namespace):
        status = pod.get("status") or {}
        states = [
            f"{c['name']}={next(iter(c.get('state') or {'?': 0}))}" for c in status.get("containerStatuses") or []
        ]
        lines.append(f"pod {pod['metadata']['name']}: {status.get('phase')} {states} {status.get('message', '')}")
    for event in cluster.api.events(namespace)[-15:]:
        lines.append(f"event {event['involvedObject']['kind']}/{event['involvedObject']['name']}: "
                     f"{event.get('reason')}: {event.get('message')}")  # fmt: skip
    lines.append("kubelet log tail:\n" + cluster.log_tail("kubelet", 15))
    return "\n".join(lines)


def crash_looping(cluster: RealCluster, namespace: str | None, min_restarts: int = 3) -> list[str]:
    """Containers (of `namespace`, or of every namespace) that keep dying, restarted at least `min_restarts`
    times: why they died last."""
    found = []
    for pod in cluster.api.items("v1", "Pod", namespace):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            last = (status.get("lastState") or {}).get("terminated")
            if last and status.get("restartCount", 0) >= min_restarts:
                found.append(
                    f"{pod['metadata']['namespace']}/{pod['metadata']['name']}/{status['name']}: {last.get('reason')}"
                    f" (exit {last.get('exitCode')}),"
                    f" {status['restartCount']} restarts"
                )
    return found


def wait_or_diagnose(cluster: RealCluster, namespace: str, what: str, check: Any, timeout_s: float) -> Any:
    try:
        return eventually(what, check, timeout_s, 1.0)
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{diagnose(cluster, namespace)}") from None


def pod_phase(cluster: RealCluster, namespace: str, name: str) -> str | None:
    pod = cluster.api.get("v1", "Pod", name, namespace)
    return None if pod is None else (pod.get("status") or {}).get("phase")


def wait_pod_done(cluster: RealCluster, namespace: str, name: str, timeout_s: float = 120) -> str:
    """Wait until the pod Succeeded or Failed; its phase."""
    phase = wait_or_diagnose(
        cluster,
        namespace,
        f"pod {namespace}/{name} to finish",
        lambda: (p := pod_phase(cluster, namespace, name)) in ("Succeeded", "Failed") and p,
        timeout_s,
    )
    return str(phase)


def python_pod(
    name: str, namespace: str, image: str, code: str, *, labels: Mapping[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A pod that runs `python3 -c code` once in `image` (imported, never pulled)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", code],
                    "resources": SMALL,
                }
            ],
            **spec,
        },
    }
