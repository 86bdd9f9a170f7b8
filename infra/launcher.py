"""The task launcher (skyrun/): its API Deployment, Service, PodDisruptionBudget and RBAC.

What the launcher does is in docs/launcher.md. This component declares its ServiceAccount; a Role in the platform
namespace with exactly `workloads.task.launcher_role_rules(NAME)` (tasks' Jobs, Services and record ConfigMaps, the
users' PVCs, reading pods, their logs and events, the namespace's ResourceQuotas, `get` on its own Deployment) and
its RoleBinding; a ClusterRole with nothing but `create` on tokenreviews and subjectaccessreviews (cluster-scoped
APIs: the only way to check a bearer token and an --all-users right) and its ClusterRoleBinding; the Deployment
(2 replicas, rolling, probes, Pod Security restricted) that runs `python -m skyrun serve`; its Service; and a
PodDisruptionBudget. Its NetworkPolicies (who reaches the API, the server to the Kubernetes API, the tasks' egress)
are infra/network.py's, with the namespace's others; each task brings its own for its ranks (workloads/task.py).

The Deployment owns every task: each task object carries an ownerReference to its uid (SKYRUN_DEPLOYMENT names
it). With protectData the platform namespace outlives the stack, so tasks owned by nothing would keep running after
`pulumi destroy`; owned, they go with this component: destroy deletes the Deployment and the garbage collector
deletes every task. A rolling update keeps the Deployment's uid, and the tasks; a replacement (a new uid) does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.common import MANAGED_BY, as_input, checkov_skips_with_api_token
from workloads.pod import (
    Resources,
    container_security_context,
    pod_security_context,
    recommended_labels,
    resource_requirements,
    selector_labels,
    tmp_volume,
)
from workloads.task import launcher_cluster_role_rules, launcher_role_rules

NAME = "skyrun"
"""Name of the launcher's Deployment, Service, ServiceAccount, Role and pods (app.kubernetes.io/name)."""
HTTP_PORT = 8000
METRICS_PORT = 9090
"""Prometheus metrics (`/metrics`, no token): a port of their own, so the API port stays token-only."""


@dataclass(frozen=True)
class TaskLauncherArgs:
    namespace: str
    """The platform namespace: the launcher's objects, and every task and volume it creates."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    image: str
    """The services image (no torch): runs the API server."""
    task_image: str
    """The image with torch: every task's pods run it unless the task names its own."""
    image_pull_policy: str
    """Pull policy of the server and of the tasks' pods."""
    resources: Resources
    """Requests and limits of one API server pod."""
    service_type: str = "ClusterIP"
    """Type of the API Service (NodePort on kind, so the CLI reaches it from the host)."""
    node_port: int = 0
    """The Service's node port when service_type is NodePort (0 = any)."""
    max_active_tasks_per_user: int = 4
    """Most pending or running tasks one user may have."""
    ttl_seconds_after_finished: int = 3600
    """Seconds a finished task's Job and pods stay (its record and status stay for good)."""
    task_service_account: str = "default"
    """ServiceAccount the tasks' pods run as (no token is mounted)."""
    audience: str = "skyrun"
    """Audience users' tokens must be bound to (`kubectl create token SA --audience skyrun`)."""
    replicas: int = 2
    """API server pods (the server keeps no state, any replica answers any request)."""
    pod_annotations: dict[str, str] = field(default_factory=dict)
    """Annotations of the pod template (the prometheus.io/* scrape annotations without the Prometheus Operator)."""


def launcher_env(args: TaskLauncherArgs) -> list[dict[str, Any]]:
    return [
        {"name": "SKYRUN_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        # The owner of every task: deleting this Deployment (pulumi destroy) garbage-collects them all.
        {"name": "SKYRUN_DEPLOYMENT", "value": NAME},
        {"name": "SKYRUN_IMAGE", "value": args.task_image},
        {"name": "SKYRUN_IMAGE_PULL_POLICY", "value": args.image_pull_policy},
        {"name": "SKYRUN_MAX_ACTIVE_TASKS_PER_USER", "value": str(args.max_active_tasks_per_user)},
        {"name": "SKYRUN_TTL_SECONDS_AFTER_FINISHED", "value": str(args.ttl_seconds_after_finished)},
        {"name": "SKYRUN_TASK_SERVICE_ACCOUNT", "value": args.task_service_account},
        {"name": "SKYRUN_AUDIENCE", "value": args.audience},
        {"name": "SKYRUN_HOST", "value": "0.0.0.0"},
        {"name": "SKYRUN_PORT", "value": str(HTTP_PORT)},
        {"name": "SKYRUN_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
    ]


def launcher_pod_spec(args: TaskLauncherArgs) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    return {
        "serviceAccountName": NAME,
        "securityContext": pod_security_context(),
        "containers": [
            {
                "name": NAME,
                "image": args.image,
                "imagePullPolicy": args.image_pull_policy,
                "command": ["python", "-m", "skyrun", "serve"],
                "env": launcher_env(args),
                "ports": [
                    {"name": "http", "containerPort": HTTP_PORT},
                    {"name": "metrics", "containerPort": METRICS_PORT},
                ],
                "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 30},
                "livenessProbe": {**probe, "failureThreshold": 3},
                # Ready only while the Kubernetes API answers: every request needs it.
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "http"},
                    "periodSeconds": 10,
                    "timeoutSeconds": 5,
                },
                "resources": resource_requirements(args.resources),
                "securityContext": container_security_context(),
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [tmp_volume()],
    }


def launcher_checkov_skips(args: TaskLauncherArgs) -> dict[str, str]:
    return checkov_skips_with_api_token(
        image=args.image,
        pull_policy=args.image_pull_policy,
        why=(
            "the launcher's work is the Kubernetes API (TokenReview, Jobs, PVCs); its token is bound to "
            "a namespaced Role with only workloads/task.py launcher_role_rules() and a ClusterRole for the two reviews"
        ),
    )


class TaskLauncher(pulumi.ComponentResource):
    """The task launcher's API server and its rights (see the module docstring)."""

    deployment_name: pulumi.Output[str]
    """Name of the API Deployment."""
    service_name: pulumi.Output[str]
    """Name of the API Service."""
    url: pulumi.Output[str]
    """In-cluster URL of the API (SKYRUN_API_URL for a CLI inside the cluster)."""

    def __init__(self, name: str, args: TaskLauncherArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:launcher:TaskLauncher", name, None, opts)
        meta_labels = recommended_labels(NAME, args.instance, "task-launcher", MANAGED_BY)
        selector = selector_labels(NAME, args.instance)
        child = pulumi.ResourceOptions(parent=self)

        # Plain dicts, as the API takes them (Any: the SDK's overloads want its TypedDicts).
        def metadata(**extra: Any) -> Any:
            return {"name": NAME, "namespace": args.namespace, "labels": meta_labels, **extra}

        subject = as_input([{"kind": "ServiceAccount", "name": NAME, "namespace": args.namespace}])
        account = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(), opts=child)
        role = k8s.rbac.v1.Role(
            f"{name}-role", metadata=metadata(), rules=as_input(launcher_role_rules(NAME)), opts=child
        )
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-rolebinding",
            metadata=metadata(),
            role_ref=as_input({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}),
            subjects=subject,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, role]),
        )
        # Cluster-scoped, so named after the namespace: two stacks in one cluster must not share it.
        cluster_name = f"{NAME}-{args.namespace}-reviews"
        cluster_meta = as_input({"name": cluster_name, "labels": meta_labels})
        reviews = k8s.rbac.v1.ClusterRole(
            f"{name}-reviews", metadata=cluster_meta, rules=as_input(launcher_cluster_role_rules()), opts=child
        )
        reviews_binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-reviews-binding",
            metadata=cluster_meta,
            role_ref=as_input({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name}),
            subjects=subject,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, reviews]),
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=metadata(annotations=launcher_checkov_skips(args)),
            spec=as_input(
                {
                    "replicas": args.replicas,
                    # Stateless: a rolling update keeps one replica answering throughout.
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                    "selector": {"matchLabels": selector},
                    "template": {
                        # No empty annotations map: that alone would be a template change.
                        "metadata": {
                            "labels": meta_labels,
                            **({"annotations": dict(args.pod_annotations)} if args.pod_annotations else {}),
                        },
                        "spec": launcher_pod_spec(args),
                    },
                }
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[binding, reviews_binding]),
        )
        port: dict[str, Any] = {"name": "http", "port": HTTP_PORT, "targetPort": "http"}
        if args.service_type == "NodePort" and args.node_port:
            port["nodePort"] = args.node_port
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=metadata(),
            spec=as_input({"type": args.service_type, "selector": selector, "ports": [port]}),
            opts=child,
        )
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=metadata(),
            spec=as_input(
                {
                    # One of the replicas may go at a time: drains proceed, the API stays up.
                    "maxUnavailable": 1,
                    "selector": {"matchLabels": selector},
                    "unhealthyPodEvictionPolicy": "AlwaysAllow",
                }
            ),
            opts=child,
        )
        self.deployment_name = self.deployment.metadata.name
        self.service_name = self.service.metadata.name
        self.url = pulumi.Output.concat(
            "http://", self.service.metadata.name, ".", args.namespace, f".svc.cluster.local:{HTTP_PORT}"
        )
        self.register_outputs(
            {"deployment_name": self.deployment_name, "service_name": self.service_name, "url": self.url}
        )
