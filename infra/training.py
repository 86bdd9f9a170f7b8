"""The distributed training run: train.yaml ConfigMap, headless Service and an Indexed Job of DDP workers."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import yaml

from infra.common import (
    AWAIT_CREATED_ONLY,
    checkov_skips,
    container_security_context,
    labels,
    pod_security_context,
    resource_requirements,
    selector_labels,
    tmp_volume,
)
from infra.config import Resources, Toleration, parse_quantity

CONFIG_MOUNT = "/etc/trainer"
CHECKPOINT_MOUNT = "/checkpoints"
CONFIG_ERROR_EXIT_CODE = 2  # the trainer's "bad configuration" exit code: retrying cannot help


@dataclass(frozen=True)
class TrainingArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    run_name: str
    """Run name; the Job is `<run_name>-train`, the headless Service `<run_name>-workers`."""
    image: str
    """Platform image (runs `python -m trainer train`)."""
    image_pull_policy: str
    """Pull policy of `image`."""
    workers: int
    """completions = parallelism = WORLD_SIZE."""
    backend: str
    """gloo or nccl."""
    master_port: int
    """Rank 0's rendezvous port."""
    discovery: str
    """dns (MASTER_ADDR = <job>-0.<service>) or kubernetes-api (list pods; mounts the service-account token)."""
    backoff_limit: int
    """Retriable failures of each rank before the Job fails (backoffLimitPerIndex)."""
    train_yaml: dict[str, dict[str, object]]
    """Contents of train.yaml (sections data, model, train, checkpoint, tracking, distributed)."""
    tracking_uri: pulumi.Input[str]
    """MLflow tracking URI given to every rank (only rank 0 logs)."""
    service_account_name: pulumi.Input[str]
    """ServiceAccount the pods run as."""
    checkpoint_claim: pulumi.Input[str]
    """PVC mounted at /checkpoints."""
    resources: Resources
    """Per-worker requests and limits (GPUs included)."""
    shm_size: str
    """Size limit of the in-memory /dev/shm."""
    node_selector: tuple[tuple[str, str], ...] = ()
    """Required node labels."""
    tolerations: tuple[Toleration, ...] = ()
    """Tolerated taints."""
    wait: bool = False
    """Make `pulumi up` wait for completion (otherwise skip the await)."""
    timeout_minutes: int = 60
    """How long to wait when `wait`."""
    kueue_queue: str = ""
    """Kueue LocalQueue name ("" = none)."""
    checkpoint_sub_path: str | None = None
    """subPath of the claim to mount (host-path volumes), or None for the whole volume."""


def threads_per_rank(cpu_limit: str, ranks_per_pod: int = 1) -> int:
    """One torch thread per whole cpu of the pod's limit that each rank gets (at least one): more threads than cpus
    only thrash."""
    return max(1, math.floor(parse_quantity(cpu_limit) / ranks_per_pod))


class TrainingJob(pulumi.ComponentResource):
    """A PyTorch DDP run as a Kubernetes Indexed Job.

    Each pod gets JOB_COMPLETION_INDEX (its rank) from Kubernetes and WORLD_SIZE/MASTER_ADDR/MASTER_PORT from
    here; the headless Service publishes not-ready addresses so `<job>-0.<service>` resolves while rank 0 is
    still starting. A changed train.yaml changes the pod template's checksum annotation, so Pulumi replaces
    the Job and a new run starts, resuming from the run's checkpoints. The name is fixed, so the old Job is
    deleted first and Pulumi waits until it and its pods are gone (foreground deletion) before creating the new
    one; `pulumi up` itself does not wait for training (see `wait`).

    With more than one GPU per pod, each pod runs the trainer's launcher, which starts one rank per GPU:
    WORLD_SIZE = workers x GPUs, node rank = the pod's completion index."""

    job_name: pulumi.Output[str]
    """Name of the Job."""
    rank0_address: pulumi.Output[str]
    """host:port of rank 0's rendezvous, as the workers use it."""

    def __init__(self, name: str, args: TrainingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:training:TrainingJob", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels("trainer", args.run_name, "training")
        selector = selector_labels("trainer", args.run_name)
        job_name = f"{args.run_name}-train"
        service_name = f"{args.run_name}-workers"
        train_yaml = yaml.safe_dump(args.train_yaml, sort_keys=True)

        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=f"{args.run_name}-train-config", namespace=args.namespace, labels=meta_labels
            ),
            data={"train.yaml": train_yaml},
            opts=child,
        )
        self.service = k8s.core.v1.Service(
            f"{name}-workers",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=service_name, namespace=args.namespace, labels=meta_labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None",
                publish_not_ready_addresses=True,
                selector=selector,
                ports=[k8s.core.v1.ServicePortArgs(name="rendezvous", port=args.master_port, target_port="rendezvous")],
            ),
            opts=child,
        )
        rank0_host = f"{job_name}-0.{service_name}"
        ranks_per_pod = max(1, args.resources.gpus)
        config_file = f"{CONFIG_MOUNT}/train.yaml"
        if ranks_per_pod == 1:
            command = ["python", "-m", "trainer", "train", "--config", config_file]
        else:
            # One rank per GPU; the launcher gives each the torchrun variables (RANK = node rank x GPUs + local
            # rank). $(JOB_COMPLETION_INDEX) is expanded by the kubelet from the env the Job controller injects.
            command = [
                "python", "-m", "trainer", "launch", "--nproc", str(ranks_per_pod), "--nnodes", str(args.workers),
                "--node-rank", "$(JOB_COMPLETION_INDEX)", "--config", config_file,
            ]  # fmt: skip
        env = [
            k8s.core.v1.EnvVarArgs(name="WORLD_SIZE", value=str(args.workers * ranks_per_pod)),
            k8s.core.v1.EnvVarArgs(name="MASTER_PORT", value=str(args.master_port)),
            k8s.core.v1.EnvVarArgs(name="TRAINER_JOB_NAME", value=job_name),
            k8s.core.v1.EnvVarArgs(
                name="POD_NAMESPACE",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="metadata.namespace")
                ),
            ),
            k8s.core.v1.EnvVarArgs(name="MLFLOW_TRACKING_URI", value=args.tracking_uri),
            # Pods have lo and eth0; without these gloo/NCCL may bind the loopback and hang at the first collective.
            k8s.core.v1.EnvVarArgs(name="GLOO_SOCKET_IFNAME", value="eth0"),
            k8s.core.v1.EnvVarArgs(name="NCCL_SOCKET_IFNAME", value="eth0"),
            k8s.core.v1.EnvVarArgs(
                name="OMP_NUM_THREADS", value=str(threads_per_rank(args.resources.cpu_limit, ranks_per_pod))
            ),
            k8s.core.v1.EnvVarArgs(name="PYTHONUNBUFFERED", value="1"),
            k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
        ]
        if args.discovery == "dns":
            env.insert(2, k8s.core.v1.EnvVarArgs(name="MASTER_ADDR", value=rank0_host))

        job_annotations = checkov_skips(images=[args.image], pull_policy=args.image_pull_policy)
        custom_timeouts = None
        if args.wait:
            custom_timeouts = pulumi.CustomTimeouts(
                create=f"{args.timeout_minutes}m", update=f"{args.timeout_minutes}m"
            )
        else:
            # A training run takes hours; `pulumi up` returns once the API server has the Job (follow it with
            # kubectl or MLflow), and a replacement still waits for the old Job to be gone.
            job_annotations.update(AWAIT_CREATED_ONLY)
        job_labels = dict(meta_labels)
        if args.kueue_queue:
            job_labels["kueue.x-k8s.io/queue-name"] = args.kueue_queue

        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=job_name, namespace=args.namespace, labels=job_labels, annotations=job_annotations
            ),
            spec=k8s.batch.v1.JobSpecArgs(
                completion_mode="Indexed",
                completions=args.workers,
                parallelism=args.workers,
                # Per rank, not per pod: when one rank dies its peers fail too, and with a Job-wide backoffLimit
                # one incident would use up to `workers` of the budget. Any rank over its limit fails the Job.
                backoff_limit_per_index=args.backoff_limit,
                max_failed_indexes=0,
                pod_failure_policy=k8s.batch.v1.PodFailurePolicyArgs(
                    rules=[
                        # Preemption and node drains are not the run's fault: do not count them.
                        k8s.batch.v1.PodFailurePolicyRuleArgs(
                            action="Ignore",
                            on_pod_conditions=[
                                k8s.batch.v1.PodFailurePolicyOnPodConditionsPatternArgs(
                                    type="DisruptionTarget", status="True"
                                )
                            ],
                        ),
                        k8s.batch.v1.PodFailurePolicyRuleArgs(
                            action="FailJob",
                            on_exit_codes=k8s.batch.v1.PodFailurePolicyOnExitCodesRequirementArgs(
                                container_name="trainer", operator="In", values=[CONFIG_ERROR_EXIT_CODE]
                            ),
                        ),
                    ]
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        labels=meta_labels,
                        annotations={
                            "ml-platform/train-config-sha256": hashlib.sha256(train_yaml.encode()).hexdigest()
                        },
                    ),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="Never",
                        subdomain=self.service.metadata.name,
                        service_account_name=args.service_account_name,
                        automount_service_account_token=args.discovery == "kubernetes-api",
                        security_context=pod_security_context(),
                        node_selector=dict(args.node_selector) or None,
                        tolerations=[
                            k8s.core.v1.TolerationArgs(
                                key=t.key,
                                operator="Exists" if t.value is None else "Equal",
                                value=t.value,
                                effect=t.effect,
                            )
                            for t in args.tolerations
                        ]
                        or None,
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="trainer",
                                image=args.image,
                                image_pull_policy=args.image_pull_policy,
                                command=command,
                                env=env,
                                ports=[
                                    k8s.core.v1.ContainerPortArgs(name="rendezvous", container_port=args.master_port)
                                ],
                                resources=resource_requirements(args.resources),
                                security_context=container_security_context(),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONFIG_MOUNT, read_only=True),
                                    k8s.core.v1.VolumeMountArgs(
                                        name="checkpoints",
                                        mount_path=CHECKPOINT_MOUNT,
                                        sub_path=args.checkpoint_sub_path,
                                    ),
                                    k8s.core.v1.VolumeMountArgs(name="dshm", mount_path="/dev/shm"),
                                    k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                                ],
                            )
                        ],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="config",
                                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=self.config_map.metadata.name),
                            ),
                            k8s.core.v1.VolumeArgs(
                                name="checkpoints",
                                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                                    claim_name=args.checkpoint_claim
                                ),
                            ),
                            # The 64 MiB default /dev/shm makes DataLoader workers and NCCL die with bus errors.
                            k8s.core.v1.VolumeArgs(
                                name="dshm",
                                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                                    medium="Memory", size_limit=args.shm_size
                                ),
                            ),
                            tmp_volume(size="1Gi"),
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                delete_before_replace=True,
                custom_timeouts=custom_timeouts,
            ),
        )
        self.job_name = self.job.metadata.name
        self.rank0_address = pulumi.Output.concat(
            self.job.metadata.name, "-0.", self.service.metadata.name, ".", args.namespace,
            f".svc.cluster.local:{args.master_port}",
        )  # fmt: skip
        self.register_outputs({"job_name": self.job_name, "rank0_address": self.rank0_address})
