"""The trainer's identity: a ServiceAccount, and read access to pods in its own namespace when it needs it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import labels


@dataclass(frozen=True)
class TrainerRbacArgs:
    namespace: pulumi.Input[str]
    """Namespace of the ServiceAccount, Role and RoleBinding (nothing here is cluster-scoped)."""
    service_account_name: str
    """Name the training pods run as."""
    instance: str
    """Value of app.kubernetes.io/instance (the run)."""


class TrainerRbac(pulumi.ComponentResource):
    """ServiceAccount + Role (get/list/watch pods) + RoleBinding, all namespaced.

    Rank discovery through the Kubernetes API lists pods of the Job to find rank 0's IP; nothing else in the
    platform talks to the API server, so every other pod runs without a token."""

    service_account_name: pulumi.Output[str]
    """Name of the trainer's ServiceAccount."""

    def __init__(self, name: str, args: TrainerRbacArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:rbac:TrainerRbac", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels("trainer", args.instance, "training")

        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.service_account_name, namespace=args.namespace, labels=meta_labels
            ),
            automount_service_account_token=False,  # pods opt in explicitly
            opts=child,
        )
        self.role = k8s.rbac.v1.Role(
            f"{name}-role",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=f"{args.service_account_name}-pod-reader", namespace=args.namespace, labels=meta_labels
            ),
            rules=[k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"])],
            opts=child,
        )
        self.role_binding = k8s.rbac.v1.RoleBinding(
            f"{name}-binding",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=f"{args.service_account_name}-pod-reader", namespace=args.namespace, labels=meta_labels
            ),
            role_ref=k8s.rbac.v1.RoleRefArgs(
                api_group="rbac.authorization.k8s.io", kind="Role", name=self.role.metadata.name
            ),
            subjects=[
                k8s.rbac.v1.SubjectArgs(
                    kind="ServiceAccount", name=self.service_account.metadata.name, namespace=args.namespace
                )
            ],
            opts=child,
        )
        self.service_account_name = self.service_account.metadata.name
        self.register_outputs({"service_account_name": self.service_account_name, "role": self.role.metadata.name})
