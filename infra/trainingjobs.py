"""The TrainingJob custom resource and its operator (trainop/), installed by the Pulumi program.

What a TrainingJob is and how the operator reconciles it: workloads/trainingjob.py and docs/operator.md. This
component declares the CustomResourceDefinition (cluster-scoped: one stack per cluster installs it, see
`install_crd`), the operator's ServiceAccount, its namespaced Role (the rules `operator_role_rules()` lists, the
same the tests give the operator) and RoleBinding, and its Deployment: one replica, Recreate (two operators must
never reconcile the same resources at once), a liveness probe, a metrics port, Pod Security restricted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
from workloads import trainingjob as tj
from workloads.pod import Resources, recommended_labels, selector_labels

NAME = "trainop"
"""Name of the operator's Deployment, ServiceAccount, Role and pods (app.kubernetes.io/name)."""


@dataclass(frozen=True)
class OperatorArgs:
    namespace: str
    """The platform namespace: the operator watches TrainingJobs there and creates their children there."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    image: str
    """The services image (no torch): runs the operator."""
    training_image: str
    """The image with torch: every TrainingJob's pods run it unless spec.image says otherwise."""
    image_pull_policy: str
    """Pull policy of the operator and of the training pods."""
    tracking_uri: pulumi.Input[str]
    """MLflow tracking URI given to the trainer and read by the operator for progress."""
    checkpoint_claim: pulumi.Input[str]
    """PVC holding every run's checkpoints."""
    checkpoint_sub_path: str | None
    """subPath of that claim (host-path stacks), or None."""
    checkpoint_access_mode: str
    """Access mode of that claim (ReadWriteOnce keeps a run's pods on one node; ReadWriteOncePod allows 1 worker)."""
    trainer_service_account: str
    """ServiceAccount of the training pods."""
    gpus_available: bool
    """Whether the stack has GPUs (a TrainingJob asking for GPUs on a CPU stack is InvalidSpec)."""
    resources: Resources
    """Requests and limits of the operator pod."""
    install_crd: bool = True
    """Declare the CRD (false when another stack in the same cluster owns it)."""
    default_queue: str = ""
    """The Kueue LocalQueue a TrainingJob that names none goes through (the CRD's default for spec.queueName; the
    stack's kueueQueue with kueue on, "" = none)."""
    pod_annotations: dict[str, str] = field(default_factory=dict)
    """Annotations of the pod template (the prometheus.io/* scrape annotations without the Prometheus Operator)."""
    scrape_annotations: bool = False
    """Whether the operator gives the training pods it creates the prometheus.io/* scrape annotations (a
    Prometheus without the Operator; with it, the trainer PodMonitor selects those pods by label)."""


def with_default_queue(definition: dict[str, Any], queue: str) -> dict[str, Any]:
    """The CRD with `queue` as the default of spec.queueName in every version (unchanged when queue is "")."""
    if queue:
        for version in definition["spec"]["versions"]:
            spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
            spec["properties"]["queueName"]["default"] = queue
    return definition


def operator_env(args: OperatorArgs) -> list[k8s.core.v1.EnvVarArgs]:
    env = [
        field_env_var(tj.ENV_WATCH_NAMESPACE, "metadata.namespace"),
        env_var(tj.ENV_PLATFORM_IMAGE, args.training_image),
        env_var(tj.ENV_IMAGE_PULL_POLICY, args.image_pull_policy),
        env_var(tj.ENV_MLFLOW_TRACKING_URI, args.tracking_uri),
        env_var(tj.ENV_CHECKPOINT_CLAIM, args.checkpoint_claim),
        env_var(tj.ENV_CHECKPOINT_ACCESS_MODE, args.checkpoint_access_mode),
        env_var(tj.ENV_TRAINER_SERVICE_ACCOUNT, args.trainer_service_account),
        env_var(tj.ENV_GPUS_AVAILABLE, "true" if args.gpus_available else "false"),
        env_var(tj.ENV_HEALTH_PORT, str(tj.HEALTH_PORT)),
        env_var(tj.ENV_METRICS_PORT, str(tj.METRICS_PORT)),
        env_var(tj.ENV_SCRAPE_ANNOTATIONS, "true" if args.scrape_annotations else "false"),
        env_var("PYTHONUNBUFFERED", "1"),
        env_var("HOME", "/tmp"),
    ]
    if args.checkpoint_sub_path:
        env.append(env_var(tj.ENV_CHECKPOINT_SUB_PATH, args.checkpoint_sub_path))
    return env


def operator_checkov_skips(args: OperatorArgs) -> dict[str, str]:
    return checkov_skips_with_api_token(
        image=args.image,
        pull_policy=args.image_pull_policy,
        why=(
            "the operator's work is the Kubernetes API (watch TrainingJobs, create Jobs); its token is "
            "bound to a namespaced Role with only what workloads/trainingjob.py operator_role_rules() lists"
        ),
    )


def operator_pod_spec(args: OperatorArgs) -> k8s.core.v1.PodSpecArgs:
    return api_server_pod_spec(
        name=NAME,
        image=args.image,
        image_pull_policy=args.image_pull_policy,
        command=["python", "-m", "trainop"],
        env=operator_env(args),
        ports={"health": tj.HEALTH_PORT, "metrics": tj.METRICS_PORT},
        resources=args.resources,
        liveness_probe=http_probe(
            tj.HEALTH_PATH, "health", period_s=20, timeout_s=5, failure_threshold=3, initial_delay_s=20
        ),
        # Ready once Kopf serves its health endpoint (it does after connecting to the API server).
        readiness_probe=http_probe(tj.HEALTH_PATH, "health", period_s=10, timeout_s=5),
    )


class TrainingJobOperator(pulumi.ComponentResource):
    """The TrainingJob API and the operator that runs it (see the module docstring)."""

    deployment_name: pulumi.Output[str]
    """Name of the operator's Deployment."""

    def __init__(self, name: str, args: OperatorArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:trainingjobs:TrainingJobOperator", name, None, opts)
        meta_labels = recommended_labels(NAME, args.instance, "training-operator", MANAGED_BY)
        child = pulumi.ResourceOptions(parent=self)
        after: list[pulumi.Resource] = []
        if args.install_crd:
            definition = with_default_queue(tj.crd(), args.default_queue)
            self.crd = k8s.apiextensions.v1.CustomResourceDefinition(
                f"{name}-crd",
                metadata={**definition["metadata"], "labels": meta_labels},
                spec=definition["spec"],
                opts=child,
            )
            after.append(self.crd)

        def metadata(annotations: dict[str, str] | None = None) -> k8s.meta.v1.ObjectMetaArgs:
            return object_meta(NAME, args.namespace, meta_labels, annotations or {})

        account = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(), opts=child)
        role = k8s.rbac.v1.Role(
            f"{name}-role", metadata=metadata(), rules=policy_rules(tj.operator_role_rules()), opts=child
        )
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-rolebinding",
            metadata=metadata(),
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=NAME),
            subjects=[service_account_subject(NAME, args.namespace)],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, role]),
        )
        # ClusterQueues are cluster-scoped: reading them (what a queue could ever admit) needs a ClusterRole, named
        # after the namespace so that two stacks in one cluster do not share it.
        queues_name = f"{NAME}-{args.namespace}-clusterqueues"
        cluster_meta = object_meta(queues_name, None, meta_labels)
        queues_role = k8s.rbac.v1.ClusterRole(
            f"{name}-clusterqueues", metadata=cluster_meta, rules=policy_rules(tj.operator_cluster_role_rules()),
            opts=child,
        )  # fmt: skip
        queues_binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-clusterqueues-binding",
            metadata=cluster_meta,
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=queues_name
            ),
            subjects=[service_account_subject(NAME, args.namespace)],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, queues_role]),
        )
        selector = selector_labels(NAME, args.instance)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=metadata(operator_checkov_skips(args)),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                # Never two operators at once: a rolling update would briefly run both against the same objects.
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    # No empty annotations map: that alone would be a template change.
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=meta_labels, annotations=dict(args.pod_annotations) or None
                    ),
                    spec=operator_pod_spec(args),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, binding, queues_binding]),
        )
        self.deployment_name = self.deployment.metadata.name
        self.register_outputs({"deployment_name": self.deployment_name})
