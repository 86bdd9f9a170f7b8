"""Kueue: the platform's queues. Kueue itself is cluster infrastructure that the administrator installs once per
cluster (docs/teams.md), as Kueue's own docs install it: the stack reads its ClusterQueue CRD and fails the preview
naming `kueue` when it is missing. Why not install it from the stack: its eleven CRDs (the Workload CRD alone is
1.4 MB) went into the stack's state (5.4 MB, 0.74 MB without them), and every `pulumi up` diffed them (on the
cluster tier a one-key change took 169 s to rolled out, 85 s with Kueue installed apart); and two stacks sharing a
cluster cannot both own it.

Queues (kueue.x-k8s.io/v1beta2, CustomResources: Kueue has no typed Python SDK):
- ResourceFlavors: `<namespace>-cpu` (any node), and on a GPU stack `<namespace>-gpu` (the gpuNodeSelector's labels
  and the gpuTolerations). A workload takes the first flavor it fits, so a CPU task never lands on GPU nodes.
- One ClusterQueue per team, named after the team's namespace and admitting only from it, in the cohort named after
  the platform namespace: the team's `cpu`/`memory`/`gpus` are its nominal (guaranteed) quota, `max*` minus those
  its borrowingLimit; `weight` its fair-sharing weight. Preemption: a team reclaims its nominal quota from teams
  that borrowed it (`reclaimWithinCohort: Any`), and a higher-priority workload preempts a lower one of its own
  team (`withinClusterQueue: LowerPriority`); no team preempts another to borrow (`borrowWithinCohort: Never`).
- With `kueueQueue`, the ClusterQueue `<namespace>-training` (the platform namespace's quota, in the same cohort:
  idle training quota is lent to the teams and reclaimed when a run needs it) and its LocalQueue in the platform
  namespace, for the stack's training Job and TrainingJobs.
- A LocalQueue named after the team in each team's namespace (infra/teams.py declares it with the namespace).

Fair sharing itself is a setting of Kueue's manager (`fairSharing` in its Configuration): docs/teams.md gives the
Configuration to install Kueue with (kind/kueue-config.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.common import GPU_RESOURCE, labels
from infra.config.teams import KueueSettings, TeamSettings
from workloads.pod import Toleration
from workloads.quantity import parse_quantity

API_VERSION = "kueue.x-k8s.io/v1beta2"
CLUSTER_QUEUE_CRD = "clusterqueues.kueue.x-k8s.io"
PREEMPTION = {
    "reclaimWithinCohort": "Any",
    "borrowWithinCohort": {"policy": "Never"},
    "withinClusterQueue": "LowerPriority",
}


def cpu_flavor(namespace: str) -> str:
    return f"{namespace}-cpu"


def gpu_flavor(namespace: str) -> str:
    return f"{namespace}-gpu"


def training_cluster_queue(namespace: str) -> str:
    return f"{namespace}-training"


def _amount(value: str) -> Decimal:
    return parse_quantity(value)


def _resource(name: str, nominal: str, most: str) -> dict[str, object]:
    out: dict[str, object] = {"name": name, "nominalQuota": nominal}
    # What it may borrow from the cohort: a quantity in base units (cores, bytes, GPUs).
    out["borrowingLimit"] = f"{(_amount(most) - _amount(nominal)).normalize():f}"
    return out


def team_cluster_queue_spec(team: TeamSettings, cohort: str, gpu: bool, namespace: str) -> dict[str, Any]:
    """The ClusterQueue of one team (module docstring)."""
    covered = ["cpu", "memory", *([GPU_RESOURCE] if gpu else [])]
    cpu_resources = [_resource("cpu", team.cpu, team.max_cpu), _resource("memory", team.memory, team.max_memory)]
    flavors: list[dict[str, Any]] = []
    if gpu:
        zero = {"name": GPU_RESOURCE, "nominalQuota": "0", "borrowingLimit": "0"}
        flavors.append({"name": cpu_flavor(namespace), "resources": [*cpu_resources, zero]})
        gpus = _resource(GPU_RESOURCE, str(team.gpus), str(team.max_gpus))
        flavors.append({"name": gpu_flavor(namespace), "resources": [*cpu_resources, gpus]})
    else:
        flavors.append({"name": cpu_flavor(namespace), "resources": cpu_resources})
    return {
        "cohortName": cohort,
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": team.namespace}},
        "queueingStrategy": "BestEffortFIFO",
        "resourceGroups": [{"coveredResources": covered, "flavors": flavors}],
        "preemption": PREEMPTION,
        "fairSharing": {"weight": team.weight},
    }


@dataclass(frozen=True)
class QueuesArgs:
    namespace: str
    """The platform namespace: the cohort's name and the training queue's namespace."""
    instance: str
    settings: KueueSettings
    teams: tuple[TeamSettings, ...]
    gpu: bool
    """A GPU stack: the gpu flavor and GPU quota lines."""
    gpu_tolerations: tuple[Toleration, ...]
    training_queue: str
    """kueueQueue ("" = no training queue)."""
    training_quota: dict[str, str]
    """Nominal quota of the training ClusterQueue (cpu, memory, and nvidia.com/gpu on a GPU stack)."""


class Queues(pulumi.ComponentResource):
    """The cluster-scoped queues (Kueue must run: its CRD is read); `ready` is what LocalQueues must depend on."""

    ready: list[pulumi.Resource]

    def __init__(self, name: str, args: QueuesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:kueue:Queues", name, None, opts)
        meta_labels = labels("kueue", args.instance, "scheduling")
        s = args.settings
        # Kueue is cluster infrastructure, installed once per cluster (docs/teams.md): read its ClusterQueue CRD, so
        # `pulumi preview` fails naming what is missing before anything is declared.
        depends: list[pulumi.Resource] = [
            k8s.apiextensions.v1.CustomResourceDefinition.get(
                f"{name}-kueue=true:clusterqueue-crd", CLUSTER_QUEUE_CRD, opts=pulumi.ResourceOptions(parent=self)
            )
        ]
        after = pulumi.ResourceOptions(parent=self, depends_on=depends)

        def custom(resource: str, kind: str, obj_name: str, spec: dict[str, Any], ns: str | None = None) -> Any:
            return k8s.apiextensions.CustomResource(
                f"{name}-{resource}",
                api_version=API_VERSION,
                kind=kind,
                metadata=k8s.meta.v1.ObjectMetaArgs(name=obj_name, namespace=ns, labels=meta_labels),
                spec=spec,
                opts=after,
            )

        flavors = [custom("flavor-cpu", "ResourceFlavor", cpu_flavor(args.namespace), {})]
        if args.gpu:
            gpu_spec: dict[str, Any] = {"nodeLabels": dict(s.gpu_flavor_labels)}
            if args.gpu_tolerations:
                gpu_spec["tolerations"] = [
                    {"key": t.key, "operator": "Exists" if t.value is None else "Equal", "effect": t.effect}
                    | ({} if t.value is None else {"value": t.value})
                    for t in args.gpu_tolerations
                ]
            flavors.append(custom("flavor-gpu", "ResourceFlavor", gpu_flavor(args.namespace), gpu_spec))
        after_flavors = pulumi.ResourceOptions(parent=self, depends_on=[*depends, *flavors])
        self.cluster_queues: list[k8s.apiextensions.CustomResource] = []
        for team in args.teams:
            self.cluster_queues.append(
                k8s.apiextensions.CustomResource(
                    f"{name}-cq-{team.name}",
                    api_version=API_VERSION,
                    kind="ClusterQueue",
                    metadata=k8s.meta.v1.ObjectMetaArgs(name=team.namespace, labels=meta_labels),
                    spec=team_cluster_queue_spec(team, args.namespace, args.gpu, args.namespace),
                    opts=after_flavors,
                )
            )
        if args.training_queue:
            q = args.training_quota
            training = TeamSettings(
                name="training",
                namespace=args.namespace,
                users=(),
                cpu=q["cpu"],
                memory=q["memory"],
                gpus=int(q.get(GPU_RESOURCE, "0")),
                max_cpu=q["cpu"],
                max_memory=q["memory"],
                max_gpus=int(q.get(GPU_RESOURCE, "0")),
                storage="0",
                volumes=0,
                weight="1",
            )
            cq = k8s.apiextensions.CustomResource(
                f"{name}-cq-training",
                api_version=API_VERSION,
                kind="ClusterQueue",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=training_cluster_queue(args.namespace), labels=meta_labels),
                spec=team_cluster_queue_spec(training, args.namespace, args.gpu, args.namespace),
                opts=after_flavors,
            )
            self.cluster_queues.append(cq)
            local_queue(
                f"{name}-lq-training", args.training_queue, args.namespace, training_cluster_queue(args.namespace),
                meta_labels, pulumi.ResourceOptions(parent=self, depends_on=[cq]),
            )  # fmt: skip
        self.ready = [*depends, *self.cluster_queues]
        self.register_outputs({})


def local_queue(
    resource_name: str,
    name: str,
    namespace: pulumi.Input[str],
    cluster_queue: str,
    meta_labels: dict[str, str],
    opts: pulumi.ResourceOptions,
) -> k8s.apiextensions.CustomResource:
    return k8s.apiextensions.CustomResource(
        resource_name,
        api_version=API_VERSION,
        kind="LocalQueue",
        metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=meta_labels),
        spec={"clusterQueue": cluster_queue},
        opts=opts,
    )
