"""Pieces every component uses: recommended labels, the restricted security contexts, resource requirements.

The dict forms of these live in `workloads.pod` (the pure builders use them); the typed `*Args` forms here are for
components that build their children from pulumi_kubernetes' classes. tests/infra/test_stacks.py checks that every
rendered pod carries exactly the `workloads.pod` contexts, whichever form built it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
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
    "APP_UID", "AWAIT_CREATED_ONLY", "GPU_RESOURCE", "MANAGED_BY", "PART_OF", "api_server_pod_spec", "checkov_skips",
    "checkov_skips_with_api_token", "container_security_context", "env_var", "field_env_var", "http_probe",
    "http_service_spec", "labels", "object_meta", "pod_security_context", "pod_security_labels", "policy_rules",
    "resource_requirements", "selector_labels", "service_account_subject", "tmp_volume",
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


def object_meta(
    name: str, namespace: pulumi.Input[str] | None, labels: Mapping[str, str], annotations: Mapping[str, str] = {}
) -> k8s.meta.v1.ObjectMetaArgs:
    """Metadata of a child object (`namespace` None: cluster-scoped); no empty annotations map."""
    return k8s.meta.v1.ObjectMetaArgs(
        name=name, namespace=namespace, labels=dict(labels), annotations=dict(annotations) or None
    )


def policy_rules(rules: Sequence[Mapping[str, Any]]) -> list[k8s.rbac.v1.PolicyRuleArgs]:
    """RBAC rules as `workloads` writes them (the API's camelCase dicts, which the operator and launcher tests bind
    too), in the SDK's typed form."""
    known = {"apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"}
    typed = []
    for rule in rules:
        if unknown := set(rule) - known:
            raise ValueError(f"policy rule {rule} has fields this converter does not know: {sorted(unknown)}")
        typed.append(
            k8s.rbac.v1.PolicyRuleArgs(
                api_groups=rule.get("apiGroups"),
                resources=rule.get("resources"),
                verbs=list(rule["verbs"]),
                resource_names=rule.get("resourceNames"),
                non_resource_urls=rule.get("nonResourceURLs"),
            )
        )
    return typed


def service_account_subject(name: str, namespace: pulumi.Input[str]) -> k8s.rbac.v1.SubjectArgs:
    return k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=name, namespace=namespace)


def env_var(name: str, value: pulumi.Input[str]) -> k8s.core.v1.EnvVarArgs:
    return k8s.core.v1.EnvVarArgs(name=name, value=value)


def field_env_var(name: str, field_path: str) -> k8s.core.v1.EnvVarArgs:
    """An environment variable from the downward API (e.g. metadata.namespace)."""
    return k8s.core.v1.EnvVarArgs(
        name=name,
        value_from=k8s.core.v1.EnvVarSourceArgs(field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path=field_path)),
    )


def api_server_pod_spec(
    *,
    name: str,
    image: str,
    image_pull_policy: str,
    command: list[str],
    env: list[k8s.core.v1.EnvVarArgs],
    ports: Mapping[str, int],
    resources: Resources,
    startup_probe: k8s.core.v1.ProbeArgs | None = None,
    liveness_probe: k8s.core.v1.ProbeArgs | None = None,
    readiness_probe: k8s.core.v1.ProbeArgs | None = None,
) -> k8s.core.v1.PodSpecArgs:
    """The pod of a platform server that talks to the Kubernetes API (the operator, the launcher): one container
    `name` under its own ServiceAccount `name`, Pod Security restricted, a read-only root with a writable /tmp."""
    return k8s.core.v1.PodSpecArgs(
        service_account_name=name,
        security_context=pod_security_context(),
        containers=[
            k8s.core.v1.ContainerArgs(
                name=name,
                image=image,
                image_pull_policy=image_pull_policy,
                command=command,
                env=env,
                ports=[k8s.core.v1.ContainerPortArgs(name=port, container_port=n) for port, n in ports.items()],
                startup_probe=startup_probe,
                liveness_probe=liveness_probe,
                readiness_probe=readiness_probe,
                resources=resource_requirements(resources),
                security_context=container_security_context(),
                volume_mounts=[k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")],
            )
        ],
        volumes=[tmp_volume()],
    )


def http_probe(
    path: str,
    port: str,
    *,
    period_s: int,
    timeout_s: int,
    failure_threshold: int | None = None,
    initial_delay_s: int | None = None,
) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=port),
        period_seconds=period_s,
        timeout_seconds=timeout_s,
        failure_threshold=failure_threshold,
        initial_delay_seconds=initial_delay_s,
    )


def checkov_skips_with_api_token(*, image: str, pull_policy: str, why: str) -> dict[str, str]:
    """`checkov_skips` plus the justified CKV_K8S_38 skip of a pod whose work is the Kubernetes API."""
    skips = checkov_skips(images=[image], pull_policy=pull_policy)
    skips[f"checkov.io/skip{len(skips) + 1}"] = f"CKV_K8S_38={why}"
    return skips


def container_defaults(d: Resources) -> k8s.core.v1.LimitRangeSpecArgs:
    """The LimitRange of a namespace with a cpu/memory quota: defaults for containers that declare none (the API
    server would reject their pods), the platform namespace's and every team namespace's."""
    return k8s.core.v1.LimitRangeSpecArgs(
        limits=[
            k8s.core.v1.LimitRangeItemArgs(
                type="Container",
                default={"cpu": d.cpu_limit, "memory": d.memory_limit},
                default_request={"cpu": d.cpu_request, "memory": d.memory_request},
            )
        ]
    )


def allow_dns_spec(dns_pod_labels: Sequence[tuple[str, str]], dns_cidrs: Sequence[str]) -> Any:
    """Every pod of the namespace may query DNS (53, UDP and TCP): the pods labelled `dns_pod_labels` in any
    namespace (kube-system on kind and kubeadm, elsewhere on some managed clusters) and `dns_cidrs`."""
    np = k8s.networking.v1
    everything = k8s.meta.v1.LabelSelectorArgs()
    peers = [np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=c)) for c in dns_cidrs]
    if dns_pod_labels:
        dns_pods = k8s.meta.v1.LabelSelectorArgs(match_labels=dict(dns_pod_labels))
        peers.insert(0, np.NetworkPolicyPeerArgs(namespace_selector=everything, pod_selector=dns_pods))
    ports = [np.NetworkPolicyPortArgs(protocol="UDP", port=53), np.NetworkPolicyPortArgs(protocol="TCP", port=53)]
    return np.NetworkPolicySpecArgs(
        pod_selector=everything, policy_types=["Egress"], egress=[np.NetworkPolicyEgressRuleArgs(to=peers, ports=ports)]
    )
