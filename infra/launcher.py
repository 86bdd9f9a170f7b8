"""The task launcher (skyrun/): its API Deployment, Service, PodDisruptionBudget and RBAC.

What the launcher does is in docs/launcher.md. This component declares its ServiceAccount; a Role in the platform
namespace with exactly `workloads.task.launcher_role_rules(NAME)` (tasks' Jobs, Services and record ConfigMaps, the
users' PVCs, reading pods, their logs and events, the namespace's ResourceQuotas, `get` on its own Deployment) and
its RoleBinding; a ClusterRole with nothing but `create` on tokenreviews and subjectaccessreviews (cluster-scoped
APIs: the only way to check a bearer token and an --all-users right) and its ClusterRoleBinding; the Deployment
(2 replicas, rolling, probes, Pod Security restricted) that runs `python -m skyrun serve`; its Service; and a
PodDisruptionBudget. Its NetworkPolicies (who reaches the API, the server to the Kubernetes API, the tasks' egress)
are infra/network.py's, with the namespace's others; each task brings its own for its ranks (skyrun/manifests.py).

The Deployment owns every task: each task object carries an ownerReference to its uid (SKYRUN_DEPLOYMENT names
it). With protectData the platform namespace outlives the stack, so tasks owned by nothing would keep running after
`pulumi destroy`; owned, they go with this component: destroy deletes the Deployment and the garbage collector
deletes every task. A rolling update keeps the Deployment's uid, and the tasks; a replacement (a new uid) does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.common import (
    MANAGED_BY,
    api_server_pod_spec,
    checkov_skips_with_api_token,
    env_var,
    field_env_var,
    http_probe,
    object_meta,
    policy_rules,
    service_account_subject,
)
from workloads.pod import Resources, recommended_labels, selector_labels
from workloads.task import (
    LAUNCHER_HTTP_PORT,
    LAUNCHER_METRICS_PORT,
    launcher_cluster_role_rules,
    launcher_team_rules,
)

NAME = "skyrun"
"""Name of the launcher's Deployment, Service, ServiceAccount, Role and pods (app.kubernetes.io/name)."""
HTTP_PORT = LAUNCHER_HTTP_PORT
METRICS_PORT = LAUNCHER_METRICS_PORT
"""Prometheus metrics (`/metrics`, no token): a port of their own, so the API port stays token-only."""


@dataclass(frozen=True)
class LauncherTeam:
    """One entry of SKYRUN_TEAMS."""

    name: str
    namespace: str
    users: tuple[str, ...]
    queue: str
    """Kueue LocalQueue in the namespace ("" = no Kueue)."""


def teams_json(teams: tuple[LauncherTeam, ...]) -> str:
    return json.dumps(
        [{"name": t.name, "namespace": t.namespace, "users": list(t.users), "queue": t.queue} for t in teams],
        separators=(",", ":"),
    )


def tasks_cluster_role(namespace: str) -> str:
    """The ClusterRole of the launcher's rights in team namespaces (bound there by infra/teams.py, nowhere else):
    cluster-scoped, so named after the platform namespace."""
    return f"{NAME}-{namespace}-tasks"


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
    max_active_tasks_per_user: int
    """Most pending or running tasks one user may have."""
    ttl_seconds_after_finished: int
    """Seconds a finished task's Job and pods stay (its record and status stay for good)."""
    task_service_account: str
    """ServiceAccount the tasks' pods run as (no token is mounted)."""
    audience: str
    """Audience users' tokens must be bound to (`kubectl create token SA --audience skyrun`)."""
    replicas: int
    """API server pods (the server keeps no state, any replica answers any request)."""
    teams: tuple[LauncherTeam, ...] = ()
    """Where each user's tasks go (SKYRUN_TEAMS)."""
    anchor: str = "skyrun-anchor"
    """The ConfigMap in each team namespace owning its tasks (SKYRUN_ANCHOR; infra/teams.py creates it)."""
    pod_annotations: dict[str, str] = field(default_factory=dict)
    """Annotations of the pod template (the prometheus.io/* scrape annotations without the Prometheus Operator)."""


def launcher_env(args: TaskLauncherArgs) -> list[k8s.core.v1.EnvVarArgs]:
    return [
        field_env_var("SKYRUN_NAMESPACE", "metadata.namespace"),
        env_var("SKYRUN_TEAMS", teams_json(args.teams)),
        # The owner of every task in a team namespace: deleting it (pulumi destroy) garbage-collects them all.
        env_var("SKYRUN_ANCHOR", args.anchor),
        env_var("SKYRUN_IMAGE", args.task_image),
        env_var("SKYRUN_IMAGE_PULL_POLICY", args.image_pull_policy),
        env_var("SKYRUN_MAX_ACTIVE_TASKS_PER_USER", str(args.max_active_tasks_per_user)),
        env_var("SKYRUN_TTL_SECONDS_AFTER_FINISHED", str(args.ttl_seconds_after_finished)),
        env_var("SKYRUN_TASK_SERVICE_ACCOUNT", args.task_service_account),
        env_var("SKYRUN_AUDIENCE", args.audience),
        env_var("SKYRUN_HOST", "0.0.0.0"),
        env_var("SKYRUN_PORT", str(HTTP_PORT)),
        env_var("SKYRUN_METRICS_PORT", str(METRICS_PORT)),
        env_var("PYTHONUNBUFFERED", "1"),
        env_var("HOME", "/tmp"),
    ]


def launcher_pod_spec(args: TaskLauncherArgs) -> k8s.core.v1.PodSpecArgs:
    return api_server_pod_spec(
        name=NAME,
        image=args.image,
        image_pull_policy=args.image_pull_policy,
        command=["python", "-m", "skyrun", "serve"],
        env=launcher_env(args),
        ports={"http": HTTP_PORT, "metrics": METRICS_PORT},
        resources=args.resources,
        startup_probe=http_probe("/livez", "http", period_s=2, timeout_s=5, failure_threshold=30),
        liveness_probe=http_probe("/livez", "http", period_s=10, timeout_s=5, failure_threshold=3),
        # Ready only while the Kubernetes API answers: every request needs it.
        readiness_probe=http_probe("/readyz", "http", period_s=10, timeout_s=5),
    )


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

        def metadata(annotations: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
            return object_meta(NAME, args.namespace, meta_labels, annotations or {})

        subject = service_account_subject(NAME, args.namespace)
        account = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(), opts=child)
        # Its task rights: a ClusterRole bound by a RoleBinding in each team namespace (infra/teams.py), none in the
        # platform namespace: the launcher cannot read, change or delete the platform's own objects.
        self.tasks_role = k8s.rbac.v1.ClusterRole(
            f"{name}-tasks",
            metadata=object_meta(tasks_cluster_role(args.namespace), None, meta_labels),
            rules=policy_rules(launcher_team_rules()),
            opts=child,
        )
        self.subject = subject
        # Cluster-scoped, so named after the namespace: two stacks in one cluster must not share it.
        cluster_name = f"{NAME}-{args.namespace}-reviews"
        cluster_meta = object_meta(cluster_name, None, meta_labels)
        reviews = k8s.rbac.v1.ClusterRole(
            f"{name}-reviews", metadata=cluster_meta, rules=policy_rules(launcher_cluster_role_rules()), opts=child
        )
        reviews_binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-reviews-binding",
            metadata=cluster_meta,
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=cluster_name
            ),
            subjects=[subject],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, reviews]),
        )
        match_selector = k8s.meta.v1.LabelSelectorArgs(match_labels=selector)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=metadata(launcher_checkov_skips(args)),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=args.replicas,
                # Stateless: a rolling update keeps one replica answering throughout.
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_unavailable=0, max_surge=1),
                ),
                selector=match_selector,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    # No empty annotations map: that alone would be a template change.
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=meta_labels, annotations=dict(args.pod_annotations) or None
                    ),
                    spec=launcher_pod_spec(args),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[reviews_binding, self.tasks_role]),
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=metadata(),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=selector,
                ports=[k8s.core.v1.ServicePortArgs(name="http", port=HTTP_PORT, target_port="http")],
            ),
            opts=child,
        )
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=metadata(),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                # One of the replicas may go at a time: drains proceed, the API stays up.
                max_unavailable=1,
                selector=match_selector,
                unhealthy_pod_eviction_policy="AlwaysAllow",
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
