"""A namespace per team: where its users' tasks, volumes and logs live, apart from the platform's objects.

Each team's namespace `<namespace>-<team>` gets the platform's baseline: Pod Security `restricted` enforced; a
ResourceQuota (cpu and memory requests and limits at the team's max*, GPUs, `requests.storage` and
`persistentvolumeclaims`) and LimitRange defaults; NetworkPolicies denying everything but DNS, the tasks' egress
to MLflow in the platform namespace and to `taskEgressCidrs`, and a task's ranks to each other (each task brings
that policy). With the launcher: the anchor ConfigMap that owns every task object (`pulumi destroy` deletes it,
the garbage collector then the tasks) and a RoleBinding giving the launcher's ServiceAccount the task rights
here, and nowhere else. With Kueue: the team's LocalQueue (named after the team) on its ClusterQueue.

Why a namespace per team and not per user: the team is the unit of quota and of fair share (one ClusterQueue
each), users of a team share volumes' storage budget, and a namespace per user would multiply quotas and queues
an administrator must keep; users inside a team are still kept apart by the launcher (every object carries its
user's hash and exact name, every read checks them).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import GPU_RESOURCE, allow_dns_spec, container_defaults, labels, pod_security_labels
from infra.config.settings import NetworkSettings
from infra.config.teams import TeamSettings
from infra.kueue import local_queue
from workloads.pod import Resources
from workloads.task import TASK_LABEL

TEAM_LABEL = "ml-platform.dev/team"
"""On each team namespace: the team's name (the platform's NetworkPolicies select team namespaces by it)."""
PLATFORM_LABEL = "ml-platform.dev/platform"
"""On each team namespace: the platform namespace it belongs to."""
ANCHOR = "skyrun-anchor"
"""The ConfigMap in each team namespace that owns every task object there (SKYRUN_ANCHOR)."""
QUOTA_NAME = "team-quota"


def team_quota(team: TeamSettings) -> dict[str, str]:
    """The ResourceQuota's hard lines of a team namespace."""
    hard = {
        "requests.cpu": team.max_cpu,
        "limits.cpu": team.max_cpu,
        "requests.memory": team.max_memory,
        "limits.memory": team.max_memory,
        "requests.storage": team.storage,
        "persistentvolumeclaims": str(team.volumes),
    }
    if team.max_gpus:
        hard[f"requests.{GPU_RESOURCE}"] = str(team.max_gpus)
    return hard


@dataclass(frozen=True)
class TeamsArgs:
    platform_namespace: pulumi.Input[str]
    instance: str
    teams: tuple[TeamSettings, ...]
    defaults: Resources
    """LimitRange defaults (the platform namespace's)."""
    network: NetworkSettings
    mlflow_port: int
    launcher_cluster_role: pulumi.Input[str] | None
    """ClusterRole of the launcher's task rights, bound in each team namespace (None: no launcher)."""
    launcher_subject: k8s.rbac.v1.SubjectArgs | None
    kueue: bool
    """Declare each team's LocalQueue."""
    kueue_ready: list[pulumi.Resource]
    """What the LocalQueues wait for (Kueue installed, the ClusterQueues)."""
    protect: bool
    """protectData: the namespaces (and the volumes in them) outlive `pulumi destroy`."""


class Teams(pulumi.ComponentResource):
    namespaces: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: TeamsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:teams:Teams", name, None, opts)
        np = k8s.networking.v1
        self.namespaces = {}
        for team in args.teams:
            prefix = f"{name}-{team.name}"
            meta_labels = labels("team", args.instance, "tenancy")
            namespace = k8s.core.v1.Namespace(
                f"{prefix}-namespace",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=team.namespace,
                    labels={
                        **meta_labels,
                        **pod_security_labels(),
                        TEAM_LABEL: team.name,
                        PLATFORM_LABEL: args.instance,
                    },
                ),
                # Like the platform's data volumes: with protectData the namespace, and the users' volumes in it,
                # survive `pulumi destroy --exclude-protected` (what runs in it goes: the anchor is not protected).
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
            )
            self.namespaces[team.name] = namespace.metadata.name
            in_ns = pulumi.ResourceOptions(parent=self, depends_on=[namespace])

            def meta(
                obj_name: str, namespace: str = team.namespace, meta_labels: dict[str, str] = meta_labels
            ) -> k8s.meta.v1.ObjectMetaArgs:
                return k8s.meta.v1.ObjectMetaArgs(name=obj_name, namespace=namespace, labels=meta_labels)

            k8s.core.v1.ResourceQuota(
                f"{prefix}-quota",
                metadata=meta(QUOTA_NAME),
                spec=k8s.core.v1.ResourceQuotaSpecArgs(hard=team_quota(team)),
                opts=in_ns,
            )
            k8s.core.v1.LimitRange(
                f"{prefix}-limits", metadata=meta("team-defaults"), spec=container_defaults(args.defaults), opts=in_ns
            )
            everything = k8s.meta.v1.LabelSelectorArgs()
            k8s.networking.v1.NetworkPolicy(
                f"{prefix}-default-deny",
                metadata=meta("default-deny"),
                spec=np.NetworkPolicySpecArgs(pod_selector=everything, policy_types=["Ingress", "Egress"]),
                opts=in_ns,
            )
            k8s.networking.v1.NetworkPolicy(
                f"{prefix}-allow-dns",
                metadata=meta("allow-dns"),
                spec=allow_dns_spec(args.network.dns_pod_labels, args.network.dns_cidrs),
                opts=in_ns,
            )
            mlflow = np.NetworkPolicyPeerArgs(
                namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels={"kubernetes.io/metadata.name": args.instance}
                ),
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": "mlflow"}),
            )
            tcp = np.NetworkPolicyPortArgs(protocol="TCP", port=args.mlflow_port)
            egress = [np.NetworkPolicyEgressRuleArgs(to=[mlflow], ports=[tcp])]
            if args.network.task_egress_cidrs:
                egress.append(
                    np.NetworkPolicyEgressRuleArgs(
                        to=[
                            np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=c))
                            for c in args.network.task_egress_cidrs
                        ],
                        ports=[
                            np.NetworkPolicyPortArgs(protocol="TCP", port=p) for p in args.network.task_egress_ports
                        ],
                    )
                )
            k8s.networking.v1.NetworkPolicy(
                f"{prefix}-tasks-egress",
                metadata=meta("tasks-egress"),
                spec=np.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={TASK_LABEL: "true"}),
                    policy_types=["Egress"],
                    egress=egress,
                ),
                opts=in_ns,
            )
            if args.launcher_cluster_role is not None and args.launcher_subject is not None:
                k8s.core.v1.ConfigMap(
                    f"{prefix}-anchor",
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        name=ANCHOR,
                        namespace=team.namespace,
                        labels=meta_labels,
                        # `pulumi destroy` waits until the garbage collector has deleted every task (and Kueue has
                        # released their Workloads): after Kueue (kueue_ready), never while it is being removed.
                        annotations={"pulumi.com/deletionPropagationPolicy": "foreground"},
                    ),
                    data={"purpose": "owns every task object of this namespace; deleting it deletes the tasks"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace, *args.kueue_ready]),
                )
                k8s.rbac.v1.RoleBinding(
                    f"{prefix}-launcher",
                    metadata=meta("skyrun-tasks"),
                    role_ref=k8s.rbac.v1.RoleRefArgs(
                        api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=args.launcher_cluster_role
                    ),
                    subjects=[args.launcher_subject],
                    opts=in_ns,
                )
            if args.kueue:
                local_queue(
                    f"{prefix}-queue",
                    team.name,
                    team.namespace,
                    team.namespace,
                    meta_labels,
                    pulumi.ResourceOptions(parent=self, depends_on=[namespace, *args.kueue_ready]),
                )
        self.register_outputs({"namespaces": self.namespaces})
