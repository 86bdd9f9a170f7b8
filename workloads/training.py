"""A PyTorch DDP run as Kubernetes objects: the train.yaml ConfigMap, the headless Service and the Indexed Job.

`training_manifests(spec)` is the one definition of these objects. The Pulumi program (infra/training.py) declares
them as resources; a TrainingJob operator creates the same objects for a custom resource. Each pod gets
JOB_COMPLETION_INDEX (its rank) from Kubernetes and WORLD_SIZE/MASTER_ADDR/MASTER_PORT from here; the headless
Service publishes not-ready addresses so `<job>-0.<service>` resolves while rank 0 is still starting. The pod
template carries the checksum of train.yaml, so a changed train.yaml changes the (immutable) template and the
creator has to replace the Job: a new run, which resumes from the run's checkpoints.

With more than one GPU per pod, each pod runs the trainer's launcher, which starts one rank per GPU:
WORLD_SIZE = workers x GPUs, node rank = the pod's completion index.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from workloads.contracts import TRAINER_METRICS_PORT
from workloads.pod import (
    Resources,
    Toleration,
    checkov_skips,
    container_security_context,
    pod_security_context,
    ranks_network_policy,
    recommended_labels,
    resource_requirements,
    selector_labels,
    slot_port_name,
    tmp_volume,
    toleration,
)
from workloads.quantity import parse_quantity

CONFIG_MOUNT = "/etc/trainer"
CONFIG_FILE = f"{CONFIG_MOUNT}/train.yaml"
CHECKPOINT_MOUNT = "/checkpoints"
CONFIG_ERROR_EXIT_CODE = 2  # the trainer's "bad configuration" exit code: retrying cannot help
CONFIG_CHECKSUM_ANNOTATION = "ml-platform/train-config-sha256"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
METRICS_PORT = TRAINER_METRICS_PORT
"""Local rank 0's Prometheus endpoint (trainer/metrics.py), the container port named `metrics`; local rank i serves
METRICS_PORT + i on the port named `metrics-i` (`metrics_ports`)."""
METRICS_PORT_NAME = "metrics"
MAX_RANKS_PER_POD = 16
"""The most ranks (GPUs) one training pod runs: gpusPerWorker's bound, and the metrics ports a scraper looks for."""
POD_METRICS = {"host": "0.0.0.0", "port": METRICS_PORT}  # Prometheus scrapes the pod IP
"""The train.yaml `metrics` section of every pod: bind all interfaces so Prometheus can scrape the pod."""


@dataclass(frozen=True, kw_only=True)
class TrainingJobSpec:
    """Everything the objects of one training run depend on; plain values, so any creator can build them."""

    run_name: str
    """Run name; the Job is `<run_name>-train`, the headless Service `<run_name>-workers`, the ConfigMap
    `<run_name>-train-config`; also the `app.kubernetes.io/instance` label."""
    namespace: str
    """Namespace of every object."""
    image: str
    """Platform image (runs `python -m trainer train`)."""
    image_pull_policy: str
    """Pull policy of `image`."""
    workers: int
    """Pods: completions = parallelism."""
    master_port: int
    """Rank 0's rendezvous port."""
    discovery: str
    """dns (MASTER_ADDR = <job>-0.<service>) or kubernetes-api (list pods; mounts the service-account token)."""
    backoff_limit: int
    """Retriable failures of each rank before the Job fails (backoffLimitPerIndex)."""
    train_config: Mapping[str, Mapping[str, object]]
    """Contents of train.yaml (sections data, model, train, checkpoint, tracking, distributed); the `metrics`
    section is the builder's (POD_METRICS)."""
    tracking_uri: str
    """MLflow tracking URI given to every rank (only rank 0 logs)."""
    service_account_name: str
    """ServiceAccount the pods run as."""
    checkpoint_claim: str
    """PVC mounted at /checkpoints."""
    checkpoint_sub_path: str | None = None
    """subPath of the claim to mount (host-path volumes), or None for the whole volume."""
    resources: Resources
    """Per-pod requests and limits (GPUs included: one rank per GPU)."""
    shm_size: str
    """Size limit of the in-memory /dev/shm."""
    node_selector: tuple[tuple[str, str], ...] = ()
    """Required node labels."""
    tolerations: tuple[Toleration, ...] = ()
    """Tolerated taints."""
    kueue_queue: str = ""
    """Kueue LocalQueue name ("" = none)."""
    priority_class_name: str = ""
    """PriorityClass of the pods ("" = the cluster's default)."""
    managed_by: str
    """Value of `app.kubernetes.io/managed-by` on every object: who creates them (pulumi, an operator)."""
    job_annotations: tuple[tuple[str, str], ...] = ()
    """Annotations the creator adds to the Job for its own tooling (e.g. how Pulumi awaits it)."""
    extra_labels: tuple[tuple[str, str], ...] = ()
    """Labels the creator adds to every object and pod (e.g. an operator's link back to its resource)."""
    pod_annotations: tuple[tuple[str, str], ...] = ()
    """Annotations the creator adds to the pod template (besides the train.yaml checksum)."""
    colocate_ranks: bool = False
    """Keep every pod of the run on one node (required pod affinity): the checkpoint volume is ReadWriteOnce, which
    the pods of one node may share and the pods of two nodes may not (rank 1 would wait on a Multi-Attach error)."""

    @property
    def job_name(self) -> str:
        return f"{self.run_name}-train"

    @property
    def service_name(self) -> str:
        return f"{self.run_name}-workers"

    @property
    def config_map_name(self) -> str:
        return f"{self.run_name}-train-config"

    @property
    def ranks_per_pod(self) -> int:
        return max(1, self.resources.gpus)

    @property
    def ranks_policy_name(self) -> str:
        return f"{self.run_name}-ranks"

    @property
    def rank0_host(self) -> str:
        """Rank 0's stable DNS name inside the namespace."""
        return f"{self.job_name}-0.{self.service_name}"


@dataclass(frozen=True)
class TrainingManifests:
    """The objects of one run, as the API server takes them."""

    config_map: dict[str, Any]
    """ConfigMap holding train.yaml."""
    service: dict[str, Any]
    """Headless Service that gives each pod a DNS name."""
    network_policy: dict[str, Any]
    """The run's ranks reach each other on every port, and no other run's (rendezvous, gloo and NCCL open
    pairwise connections on ephemeral ports)."""
    job: dict[str, Any]
    """Indexed Job of the workers."""

    def objects(self) -> list[dict[str, Any]]:
        """In creation order: the Job mounts the ConfigMap, its pods' names come from the Service, and its ranks
        find each other through the NetworkPolicy."""
        return [self.config_map, self.service, self.network_policy, self.job]


def threads_per_rank(cpu_limit: str, ranks_per_pod: int = 1) -> int:
    """One torch thread per whole cpu of the pod's limit that each rank gets (at least one): more threads than cpus
    only thrash."""
    return max(1, math.floor(parse_quantity(cpu_limit) / ranks_per_pod))


def train_config_text(train_config: Mapping[str, Mapping[str, object]]) -> str:
    """train.yaml as the ConfigMap holds it (keys sorted, so equal configs give equal checksums)."""
    return yaml.safe_dump({k: dict(v) for k, v in train_config.items()}, sort_keys=True)


def training_manifests(spec: TrainingJobSpec) -> TrainingManifests:
    labels = {**recommended_labels("trainer", spec.run_name, "training", spec.managed_by), **dict(spec.extra_labels)}
    train_yaml = train_config_text({**spec.train_config, "metrics": POD_METRICS})

    def metadata(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": spec.namespace, "labels": dict(labels), **extra}

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec.config_map_name),
        "data": {"train.yaml": train_yaml},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec.service_name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels("trainer", spec.run_name),
            "ports": [{"name": "rendezvous", "port": spec.master_port, "targetPort": "rendezvous"}],
        },
    }
    network_policy = ranks_network_policy(metadata(spec.ranks_policy_name), selector_labels("trainer", spec.run_name))
    job_labels = dict(labels)
    if spec.kueue_queue:
        job_labels[KUEUE_QUEUE_LABEL] = spec.kueue_queue
    job_annotations = {**checkov_skips(images=[spec.image], pull_policy=spec.image_pull_policy)}
    job_annotations.update(spec.job_annotations)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(spec.job_name, labels=job_labels, annotations=job_annotations),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.workers,
            "parallelism": spec.workers,
            # Per rank, not per pod: when one rank dies its peers fail too, and with a Job-wide backoffLimit one
            # incident would use up to `workers` of the budget. Any rank over its limit fails the Job.
            "backoffLimitPerIndex": spec.backoff_limit,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {
                "rules": [
                    # Preemption and node drains are not the run's fault: do not count them.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "trainer",
                            "operator": "In",
                            "values": [CONFIG_ERROR_EXIT_CODE],
                        },
                    },
                ]
            },
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        **dict(spec.pod_annotations),
                        CONFIG_CHECKSUM_ANNOTATION: hashlib.sha256(train_yaml.encode()).hexdigest(),
                    },
                },
                "spec": _pod_spec(spec),
            },
        },
    }
    return TrainingManifests(config_map=config_map, service=service, network_policy=network_policy, job=job)


def _command(spec: TrainingJobSpec) -> list[str]:
    if spec.ranks_per_pod == 1:
        return ["python", "-m", "trainer", "train", "--config", CONFIG_FILE]
    # One rank per GPU; the launcher gives each the torchrun variables (RANK = node rank x GPUs + local rank).
    # $(JOB_COMPLETION_INDEX) is expanded by the kubelet from the env the Job controller injects.
    return [
        "python", "-m", "trainer", "launch", "--nproc", str(spec.ranks_per_pod), "--nnodes", str(spec.workers),
        "--node-rank", "$(JOB_COMPLETION_INDEX)", "--config", CONFIG_FILE,
    ]  # fmt: skip


def _env(spec: TrainingJobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "WORLD_SIZE", "value": str(spec.workers * spec.ranks_per_pod)},
        {"name": "MASTER_PORT", "value": str(spec.master_port)},
        {"name": "TRAINER_JOB_NAME", "value": spec.job_name},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MLFLOW_TRACKING_URI", "value": spec.tracking_uri},
        # Pods have lo and eth0; without these gloo/NCCL may bind the loopback and hang at the first collective.
        {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"},
        {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
        {"name": "OMP_NUM_THREADS", "value": str(threads_per_rank(spec.resources.cpu_limit, spec.ranks_per_pod))},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if spec.discovery == "dns":
        env.insert(2, {"name": "MASTER_ADDR", "value": spec.rank0_host})
    return env


def metrics_ports(ranks_per_pod: int) -> list[dict[str, Any]]:
    """The container ports of the ranks' metrics endpoints: local rank i binds METRICS_PORT + i (the trainer's
    `metrics_port`), named `metrics`, `metrics-1`, ... so that a PodMonitor finds every rank of the pod."""
    if not 1 <= ranks_per_pod <= MAX_RANKS_PER_POD:
        raise ValueError(f"ranks per pod must be between 1 and {MAX_RANKS_PER_POD}, got {ranks_per_pod}")
    return [
        {"name": slot_port_name(METRICS_PORT_NAME, slot), "containerPort": METRICS_PORT + slot}
        for slot in range(ranks_per_pod)
    ]


def _pod_spec(spec: TrainingJobSpec) -> dict[str, Any]:
    checkpoints_mount: dict[str, Any] = {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}
    if spec.checkpoint_sub_path is not None:
        checkpoints_mount["subPath"] = spec.checkpoint_sub_path
    container = {
        "name": "trainer",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": _command(spec),
        "env": _env(spec),
        "ports": [{"name": "rendezvous", "containerPort": spec.master_port}, *metrics_ports(spec.ranks_per_pod)],
        "resources": resource_requirements(spec.resources),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            checkpoints_mount,
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": spec.service_name,
        "serviceAccountName": spec.service_account_name,
        "automountServiceAccountToken": spec.discovery == "kubernetes-api",
        "securityContext": pod_security_context(),
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [toleration(t) for t in spec.tolerations]
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    if spec.colocate_ranks and spec.workers > 1:
        pod["affinity"] = {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": selector_labels("trainer", spec.run_name)},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        }
    pod["containers"] = [container]
    pod["volumes"] = [
        {"name": "config", "configMap": {"name": spec.config_map_name}},
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoint_claim}},
        # The 64 MiB default /dev/shm makes DataLoader workers and NCCL die with bus errors.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        tmp_volume(size="1Gi"),
    ]
    return pod
