"""The rules of ml-platform's policy pack, as pure functions over Kubernetes objects (camelCase, as the engine
passes resource inputs), wrapped into Pulumi policies. Unit-tested offline in tests/infra/test_policy_pack.py.

- containers-have-limits: every container, init containers too, requests and limits cpu and memory.
- restricted-security-context: every pod template meets Pod Security `restricted` (and a read-only root).
- no-latest-image: every image names a tag other than `latest`, or a digest.
- no-nodeport-on-gpu: a GPU stack (any pod requests nvidia.com/gpu) exposes no NodePort Service.
- tls-on-gpu-ingress: on a GPU stack every Ingress terminates TLS for all of its hosts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import (
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

GPU = "nvidia.com/gpu"
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}  # fmt: skip
_WORKLOAD_TYPES = {
    "kubernetes:core/v1:Pod": (),
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec inside a workload's props, or None for anything that runs no pods."""
    if resource_type not in _WORKLOAD_TYPES:
        return None
    node: Any = props
    for key in _WORKLOAD_TYPES[resource_type] or ("spec",):
        node = (node or {}).get(key)
    return node or {}


def all_containers(pod: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def limit_violations(pod: Mapping[str, Any]) -> list[str]:
    problems = []
    for c in all_containers(pod):
        resources = c.get("resources") or {}
        for section in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (resources.get(section) or {})]
            if missing:
                problems.append(f"container {c.get('name')!r} sets no {section} for {', '.join(missing)}")
    return problems


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """Every way a pod spec breaks Pod Security `restricted` (plus our read-only root rule)."""
    problems = [f"{field} is set" for field in ("hostNetwork", "hostPID", "hostIPC") if pod.get(field)]
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume.get('name')!r} is of type {', '.join(sorted(kinds))}")
    pod_sc = pod.get("securityContext") or {}
    for c in all_containers(pod):
        sc = c.get("securityContext") or {}
        name = repr(c.get("name"))
        if sc.get("privileged"):
            problems.append(f"container {name} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name} must set allowPrivilegeEscalation: false")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problems.append(f"container {name} must run as non-root (runAsNonRoot: true)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"container {name} runs as uid 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"container {name} needs seccompProfile RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"container {name} must drop ALL capabilities")
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"container {name} adds capabilities {sorted(added)}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {name} must set readOnlyRootFilesystem: true")
        if any((p or {}).get("hostPort") for p in c.get("ports") or []):
            problems.append(f"container {name} uses a hostPort")
    return problems


def image_violations(pod: Mapping[str, Any]) -> list[str]:
    problems = []
    for c in all_containers(pod):
        image = str(c.get("image", ""))
        if "@sha256:" in image:
            continue
        name_part = image.rsplit("/", 1)[-1]
        tag = name_part.split(":", 1)[1] if ":" in name_part else ""
        if tag in ("", "latest"):
            problems.append(
                f"container {c.get('name')!r} image {image!r} must name a version tag (not latest) or digest"
            )
    return problems


def requests_gpus(resource_type: str, props: Mapping[str, Any]) -> bool:
    pod = pod_spec(resource_type, props)
    if pod is None:
        return False
    return any(GPU in ((c.get("resources") or {}).get("limits") or {}) for c in all_containers(pod))


def nodeport_violations(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type == "kubernetes:core/v1:Service" and (props.get("spec") or {}).get("type") == "NodePort":
        return ["NodePort Services expose every node of a GPU cluster; use ClusterIP behind the Ingress"]
    return []


def ingress_tls_violations(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    if resource_type != "kubernetes:networking.k8s.io/v1:Ingress":
        return []
    spec = props.get("spec") or {}
    covered = {h for t in spec.get("tls") or [] for h in t.get("hosts") or []}
    hosts = [r.get("host") for r in spec.get("rules") or []]
    uncovered = [h for h in hosts if h not in covered]
    if not spec.get("tls") or uncovered:
        return [f"Ingress must terminate TLS for every host; not covered: {uncovered or hosts or ['(no host)']}"]
    return []


def _pod_rule(check: Any) -> Any:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        pod = pod_spec(args.resource_type, args.props)
        if pod is None:
            return
        for problem in check(pod):
            report_violation(f"{args.name}: {problem}", None)

    return validate


def _gpu_stack_rule(check: Any) -> Any:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        if not any(requests_gpus(r.resource_type, r.props) for r in args.resources):
            return
        for r in args.resources:
            for problem in check(r.resource_type, r.props):
                report_violation(f"{r.name}: {problem}", r.urn)

    return validate


POLICIES = [
    ResourceValidationPolicy(
        name="containers-have-limits",
        description="Every container, init containers included, requests and limits cpu and memory.",
        validate=_pod_rule(limit_violations),
    ),
    ResourceValidationPolicy(
        name="restricted-security-context",
        description="Every pod meets Pod Security `restricted` and has a read-only root filesystem.",
        validate=_pod_rule(restricted_violations),
    ),
    ResourceValidationPolicy(
        name="no-latest-image",
        description="Images name a version tag other than latest, or a digest.",
        validate=_pod_rule(image_violations),
    ),
    StackValidationPolicy(
        name="no-nodeport-on-gpu",
        description="A GPU stack exposes no NodePort Service.",
        validate=_gpu_stack_rule(nodeport_violations),
    ),
    StackValidationPolicy(
        name="tls-on-gpu-ingress",
        description="On a GPU stack every Ingress terminates TLS for all of its hosts.",
        validate=_gpu_stack_rule(ingress_tls_violations),
    ),
]
