"""One SkyPilot-style task as Kubernetes objects.

`task_manifests(task, launch)` builds the objects of one task (a `Task` validated by skyrun/task_spec.py): a record
ConfigMap (who submitted what, and the final status once known: it outlives the Job, which is deleted
`ttl_seconds_after_finished` after it ends), a headless Service (stable per-rank DNS names), a NetworkPolicy for
its ranks, and ONE Indexed Job (completions = parallelism = num_nodes, one podFailurePolicy for the whole gang).

In the pod, `setup` and then `run` execute in one container, through a small bash wrapper (`WRAPPER`): a failing
setup exits with `SETUP_FAILED_EXIT_CODE`, which a FailJob rule of its own turns into the task status
`failed_setup`; a run that happens to exit with that code is reported as 1, so the code means setup only.

Every object of a task is owned (a non-controller ownerReference) by its namespace's `Anchor`: in a team's
namespace the anchor ConfigMap the stack creates there (an ownerReference cannot cross namespaces), without teams
the launcher's own Deployment. The stack destroys both with the launcher, so `pulumi destroy` garbage-collects every
task even where a namespace is kept (protectData). Volumes are not owned: they are the users' data.

With a Kueue queue, the Job carries Kueue's queue-name label and is created suspended: Kueue admits it by
unsuspending it (workloads/training.py does the same for TrainingJobs).

The labels, annotations and exit codes the launcher, the stack's NetworkPolicies and the tests share are in
workloads/task.py, with the launcher's RBAC rules.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from skyrun.task_spec import Task
from workloads.contracts import MASTER_PORT
from workloads.pod import (
    GPU_RESOURCE,
    Resources,
    container_security_context,
    pod_security_context,
    ranks_network_policy,
    recommended_labels,
    resource_requirements,
    tmp_volume,
)
from workloads.task import (
    ACCELERATOR_NODE_LABEL,
    CONTAINER,
    KIND_LABEL,
    MANAGED_BY,
    NAME_ANNOTATION,
    NODE_INDEX_FIELD,
    SETUP_FAILED_EXIT_CODE,
    STATE_ACTIVE,
    STATE_LABEL,
    TASK_ID_LABEL,
    TASK_ID_RE,
    TASK_LABEL,
    TASK_NAME_LABEL,
    USER_ANNOTATION,
    USER_HASH_LABEL,
    USERNAME_LABEL,
)
from workloads.training import KUEUE_QUEUE_LABEL

_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")

# bash as PID 1 ignores SIGTERM unless it traps it: the trap forwards a stop to the running part, so a stopped
# task's processes really end within the grace period. `$1` is setup, `$2` is run.
WRAPPER = """\
child=
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi' TERM INT
part() {
  /bin/bash -c "$1" & child=$!
  while :; do
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || return "$rc"
  done
}
if [ -n "$1" ]; then
  part "$1" || { echo "skyrun: setup failed" >&2; exit @SETUP_CODE@; }
fi
part "$2"; rc=$?
if [ "$rc" -eq @SETUP_CODE@ ]; then rc=1; fi
exit "$rc"
""".replace("@SETUP_CODE@", str(SETUP_FAILED_EXIT_CODE))


def sanitize_label(value: str) -> str:
    """A label value from free text: invalid characters become `-`, at most 63 characters, alphanumeric ends."""
    text = _LABEL_VALUE_BAD.sub("-", value)[:63].strip("-_.")
    return text or "x"


def user_hash(user: str) -> str:
    """The exact user name as a label value (labels cannot hold `:` or `@`; sanitizing alone would merge users)."""
    return hashlib.sha256(user.encode()).hexdigest()[:40]


def task_object_name(task_id: str) -> str:
    """Name of a task's Job, Service and record ConfigMap."""
    return f"sky-{task_id}"


@dataclass(frozen=True)
class Anchor:
    """The object that owns every object of every task of one namespace: a team namespace's anchor ConfigMap, or
    (without teams) the launcher's Deployment. When it is deleted, the garbage collector deletes the tasks (and,
    through their Jobs, their pods); a rolling update of the launcher keeps either's uid, and the tasks with it."""

    name: str
    """The owner's name, in the task's namespace."""
    uid: str
    """Its metadata.uid: an ownerReference names one incarnation, not a name."""
    api_version: str = "apps/v1"
    """apiVersion of the owner."""
    kind: str = "Deployment"
    """kind of the owner."""


def owner_reference(anchor: Anchor) -> dict[str, Any]:
    """Owned, not controlled (no controller adopts task objects through it), and blockOwnerDeletion false: deleting
    the launcher never waits on its tasks, and the launcher needs no `update` on deployments/finalizers."""
    return {
        "apiVersion": anchor.api_version,
        "kind": anchor.kind,
        "name": anchor.name,
        "uid": anchor.uid,
        "controller": False,
        "blockOwnerDeletion": False,
    }


@dataclass(frozen=True, kw_only=True)
class Launch:
    """What the launcher decides for one task; plain values."""

    task_id: str
    """8 characters, a lower-case letter then letters or digits."""
    user: str
    """The authenticated user (exact, e.g. `system:serviceaccount:team:alice`)."""
    namespace: str
    """The user's team's namespace (the platform namespace without teams)."""
    default_image: str
    """Image when the task names none."""
    image_pull_policy: str
    """Pull policy of the task's image."""
    default_cpus: str
    """cpu per node when the task gives none."""
    default_memory: str
    """memory per node when the task gives none."""
    claims: tuple[tuple[str, str], ...] = ()
    """(mount path, PVC name) for the task's volumes, resolved to the user's own claims."""
    ttl_seconds_after_finished: int = 3600
    """Seconds a finished Job and its pods stay before Kubernetes deletes them (the record stays)."""
    service_account_name: str = "default"
    """ServiceAccount of the task's pods (its token is not mounted)."""
    pod_annotations: tuple[tuple[str, str], ...] = ()
    """Annotations the launcher's operator adds to every pod."""
    submitted_at: str = ""
    """RFC 3339 submission time, kept on the record."""
    task_yaml: str = ""
    """The task as submitted, kept on the record."""
    ignored: tuple[str, ...] = ()
    """Ignored fields, kept on the record."""
    anchor: Anchor | None = None
    """Owner of every object of the task (the namespace's anchor); None: owned by nothing (local development)."""
    queue: str = ""
    """The team's Kueue LocalQueue: the Job is labelled for it and created suspended; empty: no Kueue."""


@dataclass(frozen=True)
class TaskManifests:
    record: dict[str, Any]
    """ConfigMap: the task as submitted, its user, and (once finished) its final status; outlives the Job."""
    service: dict[str, Any]
    """Headless Service: `<job>-<rank>.<service>` names for every node."""
    network_policy: dict[str, Any]
    """The task's nodes reach each other on every port, and no other task's (workloads/training.py
    ranks_network_policy)."""
    job: dict[str, Any]
    """The Indexed Job of the task's nodes."""

    def objects(self) -> list[dict[str, Any]]:
        """Creation order: the record first (the task exists once it does), the Job last."""
        return [self.record, self.service, self.network_policy, self.job]


def task_labels(task: Task, launch: Launch) -> dict[str, str]:
    return {
        **recommended_labels("skyrun-task", task_object_name(launch.task_id), "task", MANAGED_BY),
        TASK_LABEL: "true",
        TASK_ID_LABEL: launch.task_id,
        TASK_NAME_LABEL: sanitize_label(task.name),
        USERNAME_LABEL: sanitize_label(launch.user),
        USER_HASH_LABEL: user_hash(launch.user),
    }


def node_names(task_id: str, num_nodes: int) -> list[str]:
    """Rank-ordered stable DNS names of a task's nodes inside the namespace."""
    name = task_object_name(task_id)
    return [f"{name}-{rank}.{name}" for rank in range(num_nodes)]


def task_resources(task: Task, launch: Launch) -> Resources:
    cpus = task.resources.cpus or launch.default_cpus
    memory = task.resources.memory or launch.default_memory
    # request = limit: a task gets what it asked for, the namespace quota counts it once, and "N+" means N.
    return Resources(cpu_request=cpus, cpu_limit=cpus, memory_request=memory, memory_limit=memory,
                     gpus=task.resources.gpus)  # fmt: skip


def task_summary(task: Task, launch: Launch) -> dict[str, str]:
    """What a task asked for, as `jobs list` shows it (kept on the record: the Job goes after its TTL)."""
    res = task_resources(task, launch)
    accelerators = str(task.resources.gpus) if task.resources.gpus else ""
    if task.resources.accelerator:
        accelerators = f"{task.resources.accelerator}:{task.resources.gpus}"
    image = task.resources.image or launch.default_image
    return {"cpus": res.cpu_limit, "memory": res.memory_limit, "accelerators": accelerators, "image": image}


def _escape(script: str) -> str:
    # The kubelet expands $(VAR) in args; a script's own $(...) is bash's command substitution: keep it.
    return script.replace("$(", "$$(")


def task_env(task: Task, launch: Launch) -> list[dict[str, Any]]:
    names = node_names(launch.task_id, task.num_nodes)
    # Pods have lo and eth0: unset, gloo and NCCL may bind the loopback and hang at the first collective. First,
    # so that a task's own envs override them.
    env: list[dict[str, Any]] = [
        {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"},
        {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
    ]
    user = {k for k, _ in task.envs}
    env = [e for e in env if e["name"] not in user]
    env += [{"name": k, "value": v} for k, v in task.envs]
    env += [
        {"name": "SKYPILOT_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": NODE_INDEX_FIELD}}},
        {"name": "SKYPILOT_NUM_NODES", "value": str(task.num_nodes)},
        {"name": "SKYPILOT_NODE_IPS", "value": "\n".join(names)},
        {"name": "SKYPILOT_NUM_GPUS_PER_NODE", "value": str(task.resources.gpus)},
        {"name": "SKYPILOT_TASK_ID", "value": launch.task_id},
        {"name": "NODE_RANK", "value": "$(SKYPILOT_NODE_RANK)"},
        {"name": "NUM_NODES", "value": str(task.num_nodes)},
        {"name": "MASTER_ADDR", "value": names[0]},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]  # fmt: skip
    return env


def _pod_spec(task: Task, launch: Launch) -> dict[str, Any]:
    name = task_object_name(launch.task_id)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes: list[dict[str, Any]] = [
        tmp_volume(size="10Gi"),
        # The 64 MiB default /dev/shm makes DataLoader workers and NCCL die with bus errors.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
    ]
    for i, (path, claim) in enumerate(launch.claims):
        mounts.append({"name": f"vol-{i}", "mountPath": path})
        volumes.append({"name": f"vol-{i}", "persistentVolumeClaim": {"claimName": claim}})
    container = {
        "name": CONTAINER,
        "image": task.resources.image or launch.default_image,
        "imagePullPolicy": launch.image_pull_policy,
        "command": ["/bin/bash", "-c", WRAPPER, "skyrun-task", _escape(task.setup), _escape(task.run)],
        "env": task_env(task, launch),
        "ports": [{"name": "rendezvous", "containerPort": MASTER_PORT}],
        "resources": resource_requirements(task_resources(task, launch)),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": name,
        "serviceAccountName": launch.service_account_name,
        # A task is the user's code: it gets no Kubernetes API credentials.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if task.resources.gpus:
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if task.resources.accelerator:
        pod["nodeSelector"] = {ACCELERATOR_NODE_LABEL: task.resources.accelerator.lower()}
    return pod


def task_manifests(task: Task, launch: Launch) -> TaskManifests:
    if not TASK_ID_RE.match(launch.task_id):
        raise ValueError(f"task id {launch.task_id!r} must be 8 characters: a lower-case letter, then [a-z0-9]")
    name = task_object_name(launch.task_id)
    labels = task_labels(task, launch)
    annotations = {USER_ANNOTATION: launch.user, NAME_ANNOTATION: task.name}

    owners = {"ownerReferences": [owner_reference(launch.anchor)]} if launch.anchor else {}

    def metadata(**extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": launch.namespace, "labels": dict(labels), **owners, **extra}

    record = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            labels={**labels, KIND_LABEL: "task", STATE_LABEL: STATE_ACTIVE}, annotations=dict(annotations)
        ),
        "data": {
            "task.yaml": launch.task_yaml,
            "submitted_at": launch.submitted_at,
            "num_nodes": str(task.num_nodes),
            "ignored": "\n".join(launch.ignored),
            "volumes": "\n".join(f"{path}={claim}" for path, claim in launch.claims),
            "summary": json.dumps(task_summary(task, launch), sort_keys=True),
            "queue": launch.queue,
        },
    }
    selector = {TASK_LABEL: "true", TASK_ID_LABEL: launch.task_id}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(annotations=dict(annotations)),
        "spec": {
            "clusterIP": "None",
            # Rank 0's name must resolve while the pods still start, so every rank can find it.
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": "rendezvous"}],
        },
    }
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(annotations=dict(annotations)),
        "spec": {
            "completionMode": "Indexed",
            "completions": task.num_nodes,
            "parallelism": task.num_nodes,
            # A gang: when one rank fails, the others cannot finish; fail the task at once and stop every pod
            # (no retries: a retried rank would wait for peers that are gone).
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": launch.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    # Preemption and node drains are not the task's fault: do not count them.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [SETUP_FAILED_EXIT_CODE],
                        },
                    },
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]},
                    },
                ]
            },
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {**annotations, **dict(launch.pod_annotations)}},
                "spec": _pod_spec(task, launch),
            },
        },
    }
    if launch.queue:
        job["metadata"] = {**job["metadata"], "labels": {**labels, KUEUE_QUEUE_LABEL: launch.queue}}
        job["spec"] = {**job["spec"], "suspend": True}  # Kueue admits the Job by unsuspending it
    network_policy = ranks_network_policy(metadata(annotations=dict(annotations)), selector)
    return TaskManifests(record=record, service=service, network_policy=network_policy, job=job)


def volume_claim(
    *,
    volume_id: str,
    name: str,
    user: str,
    namespace: str,
    size: str,
    storage_class: str | None,
    access_modes: tuple[str, ...],
) -> dict[str, Any]:
    """A user's volume: a PVC named `vol-<id>`, labelled with its owner (and its name, for lookups)."""
    labels = {
        **recommended_labels("skyrun-volume", f"vol-{volume_id}", "volume", MANAGED_BY),
        KIND_LABEL: "volume",
        "volume-name": name,
        USERNAME_LABEL: sanitize_label(user),
        USER_HASH_LABEL: user_hash(user),
    }
    spec: dict[str, Any] = {"accessModes": list(access_modes), "resources": {"requests": {"storage": size}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": f"vol-{volume_id}",
            "namespace": namespace,
            "labels": labels,
            "annotations": {USER_ANNOTATION: user, NAME_ANNOTATION: name},
        },
        "spec": spec,
    }
