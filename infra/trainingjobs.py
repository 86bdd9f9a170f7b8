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

from infra.common import MANAGED_BY, as_input, checkov_skips_with_api_token
from workloads import trainingjob as tj
from workloads.pod import (
    Resources,
    container_security_context,
    pod_security_context,
    recommended_labels,
    resource_requirements,
    selector_labels,
    tmp_volume,
)

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
    pod_annotations: dict[str, str] = field(default_factory=dict)
    """Annotations of the pod template (the prometheus.io/* scrape annotations without the Prometheus Operator)."""
    scrape_annotations: bool = False
    """Whether the operator gives the training pods it creates the prometheus.io/* scrape annotations (a
    Prometheus without the Operator; with it, the trainer PodMonitor selects those pods by label)."""


def operator_env(args: OperatorArgs) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": tj.ENV_WATCH_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": tj.ENV_PLATFORM_IMAGE, "value": args.training_image},
        {"name": tj.ENV_IMAGE_PULL_POLICY, "value": args.image_pull_policy},
        {"name": tj.ENV_MLFLOW_TRACKING_URI, "value": args.tracking_uri},
        {"name": tj.ENV_CHECKPOINT_CLAIM, "value": args.checkpoint_claim},
        {"name": tj.ENV_CHECKPOINT_ACCESS_MODE, "value": args.checkpoint_access_mode},
        {"name": tj.ENV_TRAINER_SERVICE_ACCOUNT, "value": args.trainer_service_account},
        {"name": tj.ENV_GPUS_AVAILABLE, "value": "true" if args.gpus_available else "false"},
        {"name": tj.ENV_HEALTH_PORT, "value": str(tj.HEALTH_PORT)},
        {"name": tj.ENV_METRICS_PORT, "value": str(tj.METRICS_PORT)},
        {"name": tj.ENV_SCRAPE_ANNOTATIONS, "value": "true" if args.scrape_annotations else "false"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if args.checkpoint_sub_path:
        env.append({"name": tj.ENV_CHECKPOINT_SUB_PATH, "value": args.checkpoint_sub_path})
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


def operator_pod_spec(args: OperatorArgs) -> dict[str, Any]:
    return {
        "serviceAccountName": NAME,
        "securityContext": pod_security_context(),
        "containers": [
            {
                "name": NAME,
                "image": args.image,
                "imagePullPolicy": args.image_pull_policy,
                "command": ["python", "-m", "trainop"],
                "env": operator_env(args),
                "ports": [
                    {"name": "health", "containerPort": tj.HEALTH_PORT},
                    {"name": "metrics", "containerPort": tj.METRICS_PORT},
                ],
                "livenessProbe": {
                    "httpGet": {"path": tj.HEALTH_PATH, "port": "health"},
                    "initialDelaySeconds": 20,
                    "periodSeconds": 20,
                    "timeoutSeconds": 5,
                    "failureThreshold": 3,
                },
                # Ready once Kopf serves its health endpoint (it does after connecting to the API server).
                "readinessProbe": {
                    "httpGet": {"path": tj.HEALTH_PATH, "port": "health"},
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
            definition = tj.crd()
            self.crd = k8s.apiextensions.v1.CustomResourceDefinition(
                f"{name}-crd",
                metadata={**definition["metadata"], "labels": meta_labels},
                spec=definition["spec"],
                opts=child,
            )
            after.append(self.crd)

        # Plain dicts, as the API takes them (Any: the SDK's overloads want its TypedDicts).
        def metadata(**extra: Any) -> Any:
            return {"name": NAME, "namespace": args.namespace, "labels": meta_labels, **extra}

        account = k8s.core.v1.ServiceAccount(f"{name}-sa", metadata=metadata(), opts=child)
        role = k8s.rbac.v1.Role(
            f"{name}-role", metadata=metadata(), rules=as_input(tj.operator_role_rules()), opts=child
        )
        binding = k8s.rbac.v1.RoleBinding(
            f"{name}-rolebinding",
            metadata=metadata(),
            role_ref=as_input({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}),
            subjects=as_input([{"kind": "ServiceAccount", "name": NAME, "namespace": args.namespace}]),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, role]),
        )
        selector = selector_labels(NAME, args.instance)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=metadata(annotations=operator_checkov_skips(args)),
            spec=as_input(
                {
                    "replicas": 1,
                    # Never two operators at once: a rolling update would briefly run both against the same objects.
                    "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": selector},
                    "template": {
                        # No empty annotations map: that alone would be a template change.
                        "metadata": {
                            "labels": meta_labels,
                            **({"annotations": dict(args.pod_annotations)} if args.pod_annotations else {}),
                        },
                        "spec": operator_pod_spec(args),
                    },
                }
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, binding]),
        )
        self.deployment_name = self.deployment.metadata.name
        self.register_outputs({"deployment_name": self.deployment_name})
