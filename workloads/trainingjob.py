"""The TrainingJob custom resource: its CustomResourceDefinition, the operator's Role, and the run it stands for.

`crd()` and `operator_role_rules()` are what the Pulumi program installs (and what the tests apply), so the schema
and the least-privilege rules exist once. `attempt_manifests(tj, attempt, platform)` turns a validated TrainingJob
into the objects of one attempt through `workloads.training.training_manifests`, the builder the stack's own run
uses; the operator (trainop/) creates them. Every attempt is a new Job (`<runName>-a<attempt>-train`), all
attempts share the checkpoint directory, so a restarted gang resumes from the newest checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workloads.contracts import GROUP, MASTER_PORT, UID_TAG
from workloads.pod import Resources, Toleration
from workloads.train_yaml import Decisions, train_yaml, user_sections
from workloads.training import CHECKPOINT_MOUNT, TrainingJobSpec, training_manifests
from workloads.trainingjob_schema import spec_schema, status_schema

VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SHORT_NAME = "tj"
MANAGED_BY = "trainop"
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
# Labels on every child: which TrainingJob (by name) and which attempt it belongs to.
TRAININGJOB_LABEL = f"{GROUP}/trainingjob"
ATTEMPT_LABEL = f"{GROUP}/attempt"
RUN_NAME_MAX = 40  # + "-a<attempt>-train" and the pod index keeps pod host names within 63 characters
DISCOVERY = "dns"  # every attempt finds rank 0 by its DNS name: the pods need no API token
# The operator's ports and settings (environment variables), for its Deployment.
HEALTH_PORT = 8080
METRICS_PORT = 9090
HEALTH_PATH = "/healthz"
ENV_WATCH_NAMESPACE = "WATCH_NAMESPACE"
ENV_PLATFORM_IMAGE = "PLATFORM_IMAGE"
ENV_IMAGE_PULL_POLICY = "IMAGE_PULL_POLICY"
ENV_MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_CHECKPOINT_CLAIM = "CHECKPOINT_CLAIM"
ENV_CHECKPOINT_SUB_PATH = "CHECKPOINT_SUB_PATH"
ENV_CHECKPOINT_ACCESS_MODE = "CHECKPOINT_ACCESS_MODE"
READ_WRITE_ONCE_POD = "ReadWriteOncePod"
CHECKPOINT_ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", READ_WRITE_ONCE_POD)
"""Access modes of the checkpoint claim: the stack's storageAccessMode and the operator's CHECKPOINT_ACCESS_MODE."""
ENV_TRAINER_SERVICE_ACCOUNT = "TRAINER_SERVICE_ACCOUNT"
ENV_GPUS_AVAILABLE = "GPUS_AVAILABLE"
ENV_HEALTH_PORT = "HEALTH_PORT"
ENV_METRICS_PORT = "METRICS_PORT"
ENV_RECONCILE_INTERVAL_S = "RECONCILE_INTERVAL_S"
ENV_SCRAPE_ANNOTATIONS = "SCRAPE_ANNOTATIONS"
"""true: the training pods get the prometheus.io/* scrape annotations (the stack sets it when it does not use the
Prometheus Operator, whose PodMonitors select the pods by label instead)."""
PHASES = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
DEFAULT_RESOURCES = Resources(cpu_request="1", cpu_limit="2", memory_request="2Gi", memory_limit="4Gi")


@dataclass(frozen=True, kw_only=True)
class Platform:
    """What the platform decides for every TrainingJob (the operator's settings)."""

    namespace: str
    """Namespace of the TrainingJobs and their children."""
    image: str
    """Image when spec.image is not set."""
    image_pull_policy: str
    """Pull policy of the training pods."""
    tracking_uri: str
    """MLflow tracking URI given to the trainer."""
    checkpoint_claim: str
    """PVC holding every run's checkpoints (mounted at /checkpoints)."""
    checkpoint_sub_path: str | None
    """subPath of the claim (host-path stacks), or None."""
    service_account_name: str
    """ServiceAccount of the training pods."""
    shm_size: str = "1Gi"
    """Size limit of each pod's in-memory /dev/shm."""
    checkpoint_access_mode: str = "ReadWriteOnce"
    """Access mode of that claim: ReadWriteOnce keeps a run's pods on one node, ReadWriteOncePod allows one worker."""


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "description": "why, in one word"},
    {"name": "Queue", "type": "string", "jsonPath": ".spec.queueName", "description": "Kueue LocalQueue"},
    {
        "name": "Position",
        "type": "integer",
        "jsonPath": ".status.queuePosition",
        "description": "in the LocalQueue while Kueue has not admitted the run (0 = next)",
    },
    {"name": "Workers", "type": "integer", "jsonPath": ".spec.workers"},
    {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent", "description": "percent"},
    {"name": "Val loss", "type": "number", "jsonPath": ".status.progress.valLoss"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of TrainingJob (apiextensions.k8s.io/v1)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": "trainingjob",
                "shortNames": [SHORT_NAME],
                "listKind": f"{KIND}List",
                "categories": ["ml-platform"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {"spec": spec_schema(RUN_NAME_MAX), "status": status_schema(PHASES)},
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"has(self.spec.runName) || self.metadata.name.size() <= {RUN_NAME_MAX}",
                                    "message": f"a metadata.name over {RUN_NAME_MAX} characters needs spec.runName",
                                }
                            ],
                        }
                    },
                }
            ],
        },
    }


def operator_role_rules() -> list[dict[str, Any]]:
    """The operator's namespaced Role: its own resource, the children it creates, pods to observe, events."""
    return [
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch", "delete"]},
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": ["get", "list", "create", "delete"]},
        # Each attempt's ranks reach each other through a NetworkPolicy of their own (workloads/training.py).
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "verbs": ["get", "list", "create", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        # Kueue (spec.queueName): the LocalQueue must exist before anything is created; the Job's Workload says
        # whether it waits, was admitted or evicted; the visibility API gives its position in the queue.
        {"apiGroups": [KUEUE_GROUP], "resources": ["localqueues", "workloads"], "verbs": ["get", "list"]},
        {"apiGroups": [KUEUE_VISIBILITY_GROUP], "resources": ["localqueues/pendingworkloads"], "verbs": ["get"]},
    ]


def operator_cluster_role_rules() -> list[dict[str, Any]]:
    """The operator's one cluster-wide read: ClusterQueues (cluster-scoped), to refuse at submission a gang that the
    LocalQueue's ClusterQueue could never admit, even borrowing all its cohort lends. Without it that check is
    skipped and such a run waits in the queue (Kueue's message says why)."""
    return [{"apiGroups": [KUEUE_GROUP], "resources": ["clusterqueues"], "verbs": ["get", "list"]}]


def run_name(tj: Mapping[str, Any]) -> str:
    return str(tj["spec"].get("runName") or tj["metadata"]["name"])


def checkpoint_dir(tj: Mapping[str, Any]) -> str:
    """The run's directory under /checkpoints, the same for every attempt."""
    return f"{CHECKPOINT_MOUNT}/{tj['spec'].get('checkpointDir') or f'trainingjobs/{run_name(tj)}'}"


def attempt_run_name(tj: Mapping[str, Any], attempt: int) -> str:
    return f"{run_name(tj)}-a{attempt}"


def job_name(tj: Mapping[str, Any], attempt: int) -> str:
    return f"{attempt_run_name(tj, attempt)}-train"


def train_config(tj: Mapping[str, Any]) -> dict[str, dict[str, object]]:
    """train.yaml of the run (workloads/train_yaml.py): spec.train, then what the resource decides (checkpoint
    dir, tracking names, backend, the uid tag)."""
    spec = tj["spec"]
    tracking = spec.get("tracking") or {}
    decisions = Decisions(
        checkpoint_dir=checkpoint_dir(tj),
        backend=spec.get("backend", "gloo"),
        discovery=DISCOVERY,
        experiment=tracking.get("experiment"),
        model_name=tracking.get("modelName"),
        alias=tracking.get("alias"),
        tags={UID_TAG: tj["metadata"]["uid"]},
    )
    user = user_sections(copy.deepcopy(dict(spec.get("train") or {})), "trainingjob")
    return train_yaml(user, decisions, resources(spec))


def resources(spec: Mapping[str, Any]) -> Resources:
    res = spec.get("resources")
    gpus = int(spec.get("gpusPerWorker", 0))
    if not res:
        return Resources(**{**DEFAULT_RESOURCES.__dict__, "gpus": gpus})
    req, lim = res["requests"], res["limits"]
    return Resources(
        cpu_request=str(req["cpu"]),
        cpu_limit=str(lim["cpu"]),
        memory_request=str(req["memory"]),
        memory_limit=str(lim["memory"]),
        gpus=gpus,
    )


def training_spec(tj: Mapping[str, Any], attempt: int, platform: Platform) -> TrainingJobSpec:
    """The TrainingJobSpec of one attempt. The Job gets no per-pod retries: any failure fails it, and the operator
    restarts the whole gang (a new attempt)."""
    spec, meta = tj["spec"], tj["metadata"]
    tolerations = tuple(
        Toleration(key=t["key"], value=t.get("value"), effect=t["effect"]) for t in spec.get("tolerations") or ()
    )
    return TrainingJobSpec(
        run_name=attempt_run_name(tj, attempt),
        namespace=platform.namespace,
        image=spec.get("image") or platform.image,
        image_pull_policy=platform.image_pull_policy,
        workers=int(spec.get("workers", 1)),
        master_port=MASTER_PORT,
        discovery=DISCOVERY,
        backoff_limit=0,
        train_config=train_config(tj),
        tracking_uri=platform.tracking_uri,
        service_account_name=platform.service_account_name,
        checkpoint_claim=platform.checkpoint_claim,
        checkpoint_sub_path=platform.checkpoint_sub_path,
        resources=resources(spec),
        shm_size=platform.shm_size,
        node_selector=tuple(sorted((spec.get("nodeSelector") or {}).items())),
        tolerations=tolerations,
        kueue_queue=spec.get("queueName", ""),
        priority_class_name=spec.get("priorityClassName", ""),
        managed_by=MANAGED_BY,
        extra_labels=((TRAININGJOB_LABEL, meta["name"]), (ATTEMPT_LABEL, str(attempt))),
        pod_annotations=tuple(sorted((spec.get("podAnnotations") or {}).items())),
        colocate_ranks=platform.checkpoint_access_mode == "ReadWriteOnce",
    )


def owner_reference(tj: Mapping[str, Any]) -> dict[str, Any]:
    meta = tj["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def attempt_manifests(
    tj: Mapping[str, Any], attempt: int, platform: Platform, *, suspend: bool
) -> list[dict[str, Any]]:
    """ConfigMap, headless Service and Job of one attempt, in creation order, owned by the TrainingJob (deleting
    it deletes them); the Job starts suspended when `suspend`."""
    objects = training_manifests(training_spec(tj, attempt, platform)).objects()
    for obj in objects:
        obj["metadata"]["ownerReferences"] = [owner_reference(tj)]
    objects[-1]["spec"]["suspend"] = suspend
    return objects
