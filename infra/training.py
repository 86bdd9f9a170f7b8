"""The distributed training run as Pulumi resources: the objects `workloads.training` builds, declared as they are.

The objects themselves (train.yaml ConfigMap, headless Service, Indexed Job) are defined once, in
`workloads.training.training_manifests`, which a TrainingJob operator calls too. This component adds only what is
Pulumi's: resource options (the Job's fixed name needs deleteBeforeReplace; how long `pulumi up` waits) and the
await annotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pulumi
import pulumi_kubernetes as k8s

from infra.common import AWAIT_CREATED_ONLY
from workloads.training import TrainingJobSpec, training_manifests


@dataclass(frozen=True)
class TrainingArgs:
    spec: TrainingJobSpec
    """The run: names, image, workers, train.yaml, resources (`managed_by` should be infra.common.MANAGED_BY)."""
    depends_on: Sequence[pulumi.Resource] = ()
    """What must exist before any of the run's objects (the namespace, the ServiceAccount, the claim, MLflow's
    Service): the spec names them by plain strings, which carry no dependency, so the order is stated here."""
    wait: bool = False
    """Make `pulumi up` wait for the Job to complete (otherwise it returns once the Job exists)."""
    timeout_minutes: int = 60
    """How long to wait when `wait`."""


class TrainingJob(pulumi.ComponentResource):
    """A PyTorch DDP run as a Kubernetes Indexed Job (see workloads/training.py for the objects).

    A changed train.yaml changes the pod template's checksum annotation, so Pulumi replaces the Job and a new run
    starts, resuming from the run's checkpoints. The name is fixed, so the old Job is deleted first and Pulumi
    waits until it and its pods are gone (foreground deletion) before creating the new one; `pulumi up` itself
    does not wait for training (see `wait`)."""

    job_name: pulumi.Output[str]
    """Name of the Job."""
    rank0_address: pulumi.Output[str]
    """host:port of rank 0's rendezvous, as the workers use it."""

    def __init__(self, name: str, args: TrainingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:training:TrainingJob", name, None, opts)
        self.spec = declared_spec(args)
        """The spec the objects were built from: `args.spec` plus this component's Job annotations."""
        manifests = training_manifests(self.spec)
        after = list(args.depends_on)
        child = pulumi.ResourceOptions(parent=self, depends_on=after)

        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=manifests.config_map["metadata"],
            data=manifests.config_map["data"],
            opts=child,
        )
        self.service = k8s.core.v1.Service(
            f"{name}-workers",
            metadata=manifests.service["metadata"],
            spec=manifests.service["spec"],
            opts=child,
        )
        self.network_policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-ranks",
            metadata=manifests.network_policy["metadata"],
            spec=manifests.network_policy["spec"],
            opts=child,
        )
        custom_timeouts = None
        if args.wait:
            custom_timeouts = pulumi.CustomTimeouts(
                create=f"{args.timeout_minutes}m", update=f"{args.timeout_minutes}m"
            )
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=manifests.job["metadata"],
            spec=manifests.job["spec"],
            opts=pulumi.ResourceOptions(
                parent=self,
                # Its pods mount the ConfigMap, take their DNS names from the Service and reach each other through
                # the NetworkPolicy.
                depends_on=[*after, self.config_map, self.service, self.network_policy],
                delete_before_replace=True,
                custom_timeouts=custom_timeouts,
            ),
        )
        self.job_name = self.job.metadata.name
        self.rank0_address = pulumi.Output.concat(
            self.job.metadata.name, "-0.", self.service.metadata.name, ".", self.spec.namespace,
            f".svc.cluster.local:{self.spec.master_port}",
        )  # fmt: skip
        self.register_outputs({"job_name": self.job_name, "rank0_address": self.rank0_address})


def declared_spec(args: TrainingArgs) -> TrainingJobSpec:
    """`args.spec` with the Job annotations Pulumi needs: unless `wait`, `pulumi up` returns once the API server
    has the Job (a training run takes hours; follow it with kubectl or MLflow), and a replacement still waits for
    the old Job to be gone."""
    if args.wait:
        return args.spec
    return replace(args.spec, job_annotations=(*args.spec.job_annotations, *AWAIT_CREATED_ONLY.items()))
