"""A SkyPilot-style task as Kubernetes objects: the task YAML model, its validation, and one task's objects.

`parse_task(document)` checks a task YAML (already loaded into Python values) against SkyPilot's field names and
semantics and returns a `Task` plus the fields it accepted but cannot honour on a cluster, or raises `TaskInvalid`
with every problem at once, each naming its field. `task_manifests(task, launch)` builds the objects of one task:
a record ConfigMap (who submitted what, and the final status once known: it outlives the Job, which is deleted
`ttl_seconds_after_finished` after it ends), a headless Service (stable per-rank DNS names) and ONE Indexed Job
(completions = parallelism = num_nodes, one podFailurePolicy for the whole gang). The task launcher (skyrun/)
creates them; `launcher_role_rules()` is what its ServiceAccount may do in the platform namespace (the Pulumi
component and the tests both use it).

In the pod, `setup` and then `run` execute in one container, through a small bash wrapper (`WRAPPER`): a failing
setup exits with `SETUP_FAILED_EXIT_CODE`, which a FailJob rule of its own turns into the task status
`failed_setup`; a run that happens to exit with that code is reported as 1, so the code means setup only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from workloads.pod import (
    GPU_RESOURCE,
    Resources,
    container_security_context,
    pod_security_context,
    recommended_labels,
    resource_requirements,
    tmp_volume,
)
from workloads.quantity import parse_quantity

MANAGED_BY = "skyrun"
# Labels on every object of a task (and its pods). `username` is the user name made label-safe (lossy: for
# display and selectors a person types); ownership is decided on USER_HASH_LABEL and the exact name in
# USER_ANNOTATION.
TASK_LABEL = "skypilot-task"
TASK_ID_LABEL = "task-id"
TASK_NAME_LABEL = "task-name"
USERNAME_LABEL = "username"
USER_HASH_LABEL = "skyrun.ml-platform.dev/user-hash"
# Kubernetes sets this on every pod of an Indexed Job: the node index of the issue's label list.
NODE_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
NODE_INDEX_FIELD = f"metadata.labels['{NODE_INDEX_LABEL}']"
# The record ConfigMap's labels: what kind of object (task or volume) and whether the task still counts
# against its user's cap on running tasks.
KIND_LABEL = "skyrun.ml-platform.dev/kind"
STATE_LABEL = "skyrun.ml-platform.dev/state"
STATE_ACTIVE, STATE_DONE = "active", "done"
USER_ANNOTATION = "skyrun.ml-platform.dev/user"
NAME_ANNOTATION = "skyrun.ml-platform.dev/name"
CONTAINER = "task"
MASTER_PORT = 29500
SETUP_FAILED_EXIT_CODE = 100
TASK_ID_LENGTH = 8
TASK_ID_RE = re.compile(r"^[a-z][a-z0-9]{7}$")
MAX_NUM_NODES = 64
MAX_GPUS_PER_NODE = 16
# SkyPilot's own node label for the accelerator type on Kubernetes (values lower-case, e.g. `h100`).
ACCELERATOR_NODE_LABEL = "skypilot.co/accelerator"
# Job conditions' FailJob rules, in podFailurePolicy order (their index is in the Job's Failed message).
SETUP_RULE_INDEX = 1
RUN_RULE_INDEX = 2

# SkyPilot fields a Kubernetes cluster cannot honour: accepted, left out, reported back.
IGNORED_TOP = ("event_callback",)
IGNORED_RESOURCES = (
    "cloud", "infra", "region", "zone", "instance_type", "use_spot", "spot_recovery", "job_recovery", "disk_size",
    "disk_tier", "network_tier", "ports", "labels", "accelerator_args", "autostop", "priority",
)  # fmt: skip
REFUSED_TOP = {
    "file_mounts": "file_mounts is not supported: put data on a volume (`volumes create`, then `volumes: "
    "{/mount/path: volume-name}` in the task) or fetch it in `setup`",
    "workdir": "workdir is not supported: the task's code comes from its image (`resources.image_id`) or is "
    "fetched in `setup` (e.g. git clone); data goes on a volume",
}
REFUSED_RESOURCES = {
    "any_of": "resources.any_of is not supported: a task runs on this one cluster; give one resources set",
    "ordered": "resources.ordered is not supported: a task runs on this one cluster; give one resources set",
}
KNOWN_TOP = {"name", "num_nodes", "resources", "envs", "volumes", "setup", "run"}
KNOWN_RESOURCES = {"cpus", "memory", "accelerators", "image_id"}
# Variables the launcher sets on every pod; a task may not set them itself.
RESERVED_ENV_PREFIXES = ("SKYPILOT_",)
RESERVED_ENV = {"NODE_RANK", "NUM_NODES", "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX", "HOME"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AMOUNT = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<plus>\+)?$")
_MEMORY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<unit>GB|MB|TB|G|M|T|Gi|Mi|Ti|Ki)?(?P<plus>\+)?$")
_ACCELERATOR = re.compile(r"^(?:(?P<name>[A-Za-z][A-Za-z0-9_.-]*)(?::(?P<count>[0-9]+))?|(?P<bare>[0-9]+))$")
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_VOLUME_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")

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


@dataclass(frozen=True)
class FieldError:
    """One problem with a task or request: the field (dotted path) and what to do about it."""

    field: str
    message: str


class TaskInvalid(ValueError):
    """A task YAML that cannot run; `errors` lists every problem found, each naming its field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


@dataclass(frozen=True, kw_only=True)
class TaskResources:
    """What each node of a task gets."""

    cpus: str | None = None
    """Kubernetes quantity of cpu per node (request = limit), or None for the launcher's default."""
    memory: str | None = None
    """Kubernetes quantity of memory per node (request = limit), or None for the launcher's default."""
    gpus: int = 0
    """GPUs per node (nvidia.com/gpu limit)."""
    accelerator: str | None = None
    """Accelerator type (e.g. `H100`), a node selector on `skypilot.co/accelerator`; None = any GPU."""
    image: str | None = None
    """Container image, or None for the platform image."""


@dataclass(frozen=True, kw_only=True)
class Task:
    """A validated task YAML."""

    name: str
    """Task name (display and the task-name label); `task` when the YAML has none."""
    num_nodes: int = 1
    """Pods of the Indexed Job (completions = parallelism)."""
    resources: TaskResources = field(default_factory=TaskResources)
    """Per-node resources."""
    envs: tuple[tuple[str, str], ...] = ()
    """The task's environment variables, in YAML order."""
    volumes: tuple[tuple[str, str], ...] = ()
    """(mount path, volume name) pairs."""
    setup: str = ""
    """Commands run once per node before `run` ("" = none)."""
    run: str
    """The task's commands, on every node."""


@dataclass(frozen=True)
class ParsedTask:
    task: Task
    ignored: tuple[str, ...]
    """Dotted paths of accepted fields the cluster cannot honour."""


def _amount(value: Any) -> str:
    return str(value).strip() if isinstance(value, int | float | str) and not isinstance(value, bool) else ""


def parse_cpus(value: Any) -> str:
    """SkyPilot's cpus ("2", "2+", 0.5) or millicores ("500m") as a Kubernetes quantity; "N+" (at least N) is
    granted as N."""
    text = _amount(value)
    match = _AMOUNT.match(text)
    try:
        number = Decimal(match.group("number")) if match else parse_quantity(text)
    except ValueError:
        number = Decimal(0)
    if number <= 0:
        raise ValueError(
            f"{value!r} is not a cpu count: use a positive number (2), at least N (2+) or millicores (500m)"
        )
    return _plain(number) if match else text


def parse_memory(value: Any) -> str:
    """SkyPilot's memory ("4" GiB, "4+", "8GB", "512MB") or a Kubernetes quantity ("4Gi") as a quantity."""
    text = _amount(value)
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f'{value!r} is not a memory size: use GiB ("4", "4+"), "8GB", "512MB" or "4Gi"')
    number, unit = Decimal(match.group("number")), match.group("unit") or "Gi"
    if number <= 0:
        raise ValueError(f"{value!r} is not a memory size: it must be more than 0")
    unit = {"GB": "G", "MB": "M", "TB": "T"}.get(unit, unit)
    if number != number.to_integral_value():  # a fractional amount in a binary unit: say it in Mi
        scale = {"Gi": 1024, "Ti": 1024 * 1024, "G": 1000, "T": 1000 * 1000}.get(unit)
        if scale is None:
            raise ValueError(f"{value!r}: fractions only of G, T, Gi or Ti")
        return f"{_plain(number * scale)}{'Mi' if unit.endswith('i') else 'M'}"
    return f"{_plain(number)}{unit}"


def _plain(number: Decimal) -> str:
    return format(number.normalize(), "f")


def parse_accelerators(value: Any) -> tuple[str | None, int]:
    """("H100", 2) from "H100:2" or {"H100": 2}; (None, 1) from 1 or "1"; the count is per node."""
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ValueError('give one accelerator type, e.g. {H100: 2} or "H100:2"')
        ((name, count),) = value.items()
        value = f"{name}:{count}"
    text = _amount(value)
    match = _ACCELERATOR.match(text)
    if not match:
        raise ValueError(f'{value!r} is not an accelerator spec: use a count ("1") or TYPE:COUNT ("H100:2")')
    name = match.group("name")
    count = int(match.group("bare") or match.group("count") or 1)
    if not 1 <= count <= MAX_GPUS_PER_NODE:
        raise ValueError(f"{value!r}: the count per node must be 1 to {MAX_GPUS_PER_NODE}")
    return name, count


def parse_task(document: Any, *, env_overrides: Mapping[str, str] | None = None) -> ParsedTask:
    """Validate a task YAML's value (as `yaml.safe_load` returns it); every problem is reported together."""
    errors: list[FieldError] = []

    def bad(path: str, message: str) -> None:
        errors.append(FieldError(path, message))

    if not isinstance(document, Mapping):
        raise TaskInvalid([FieldError("task", "a task is a YAML mapping with at least `run`")])
    ignored = [key for key in IGNORED_TOP if key in document]
    for key in document:
        if not isinstance(key, str):
            bad(str(key), "field names are strings")
        elif key in REFUSED_TOP:
            bad(key, REFUSED_TOP[key])
        elif key not in KNOWN_TOP and key not in IGNORED_TOP:
            bad(key, f"unknown field; a task has {', '.join(sorted(KNOWN_TOP))}")

    name = document.get("name", "task")
    if name is None:
        name = "task"
    if not isinstance(name, str) or not name.strip() or len(name) > 128:
        bad("name", "a non-empty string of at most 128 characters")
        name = "task"

    num_nodes = document.get("num_nodes", 1)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or not 1 <= num_nodes <= MAX_NUM_NODES:
        bad("num_nodes", f"an integer from 1 to {MAX_NUM_NODES}")
        num_nodes = 1

    run = document.get("run")
    if not isinstance(run, str) or not run.strip():
        bad("run", "required: the commands to run on every node (a string)")
        run = ""
    setup = document.get("setup") or ""
    if not isinstance(setup, str):
        bad("setup", "a string of commands")
        setup = ""

    resources = TaskResources()
    raw = document.get("resources") or {}
    if not isinstance(raw, Mapping):
        bad("resources", "a mapping (cpus, memory, accelerators, image_id)")
        raw = {}
    res_values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"resources.{key}"
        if key in REFUSED_RESOURCES:
            bad(path, REFUSED_RESOURCES[key])
        elif key in IGNORED_RESOURCES:
            ignored.append(path)
        elif key not in KNOWN_RESOURCES:
            bad(
                path,
                f"unknown field; resources has {', '.join(sorted(KNOWN_RESOURCES))} (and SkyPilot's cloud "
                f"fields, which are ignored here)",
            )
        elif value is None:
            continue
        elif key == "cpus":
            try:
                res_values["cpus"] = parse_cpus(value)
            except ValueError as err:
                bad(path, str(err))
        elif key == "memory":
            try:
                res_values["memory"] = parse_memory(value)
            except ValueError as err:
                bad(path, str(err))
        elif key == "accelerators":
            try:
                res_values["accelerator"], res_values["gpus"] = parse_accelerators(value)
            except ValueError as err:
                bad(path, str(err))
        elif key == "image_id":
            image = value.removeprefix("docker:") if isinstance(value, str) else ""
            if not image or any(c.isspace() for c in image):
                bad(path, 'an image reference, e.g. "docker:python:3.12-slim" or "python:3.12-slim"')
            else:
                res_values["image"] = image
    resources = TaskResources(**res_values)

    envs: dict[str, str] = {}
    raw_envs = document.get("envs") or {}
    if not isinstance(raw_envs, Mapping):
        bad("envs", "a mapping of variable names to values")
        raw_envs = {}
    merged = {**raw_envs, **(env_overrides or {})}
    for key, value in merged.items():
        path = f"envs.{key}"
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            bad(path, "variable names are letters, digits and _ and do not start with a digit")
        elif key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
            bad(path, "set by the launcher on every node; choose another name")
        elif value is None:
            bad(path, "no value: give one in the YAML or with --env KEY=VALUE")
        elif isinstance(value, Mapping | list):
            bad(path, "values are strings or numbers")
        else:
            envs[key] = str(value).lower() if isinstance(value, bool) else str(value)

    volumes: dict[str, str] = {}
    raw_volumes = document.get("volumes") or {}
    if not isinstance(raw_volumes, Mapping):
        bad("volumes", "a mapping of mount paths to volume names, e.g. {/data: my-data}")
        raw_volumes = {}
    for path_key, volume in raw_volumes.items():
        path = f"volumes.{path_key}"
        mount = str(path_key)
        if not mount.startswith("/") or mount == "/" or ".." in mount.split("/") or ":" in mount:
            bad(path, "the mount path is an absolute directory path (not /, no ..)")
        elif mount.rstrip("/") in ("/tmp", "/dev/shm", "/dev", "/proc", "/sys", "/etc", "/usr", "/bin", "/lib"):
            bad(path, "that path belongs to the container; mount volumes elsewhere (e.g. /data)")
        elif not isinstance(volume, str) or not _VOLUME_NAME.match(volume):
            bad(path, "a volume name (lower-case letters, digits and -, at most 40 characters)")
        else:
            volumes[mount.rstrip("/")] = volume

    if errors:
        raise TaskInvalid(errors)
    task = Task(
        name=name.strip(),
        num_nodes=num_nodes,
        resources=resources,
        envs=tuple(envs.items()),
        volumes=tuple(volumes.items()),
        setup=setup,
        run=run,
    )
    return ParsedTask(task=task, ignored=tuple(ignored))


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


@dataclass(frozen=True, kw_only=True)
class Launch:
    """What the launcher decides for one task; plain values."""

    task_id: str
    """8 characters, a lower-case letter then letters or digits."""
    user: str
    """The authenticated user (exact, e.g. `system:serviceaccount:team:alice`)."""
    namespace: str
    """The platform namespace."""
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


@dataclass(frozen=True)
class TaskManifests:
    record: dict[str, Any]
    """ConfigMap: the task as submitted, its user, and (once finished) its final status; outlives the Job."""
    service: dict[str, Any]
    """Headless Service: `<job>-<rank>.<service>` names for every node."""
    job: dict[str, Any]
    """The Indexed Job of the task's nodes."""

    def objects(self) -> list[dict[str, Any]]:
        """Creation order: the record first (the task exists once it does), the Job last."""
        return [self.record, self.service, self.job]


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

    def metadata(**extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": launch.namespace, "labels": dict(labels), **extra}

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
    job = {
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
    return TaskManifests(record=record, service=service, job=job)


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


def launcher_role_rules() -> list[dict[str, Any]]:
    """What the launcher's ServiceAccount may do in the platform namespace: run tasks (Jobs, their Services and
    record ConfigMaps), own volumes (PVCs), and read pods, their logs and events (statuses, pending reasons)."""
    write = ["get", "list", "watch", "create", "update", "patch", "delete"]
    return [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": write},
        {"apiGroups": [""], "resources": ["services", "configmaps", "persistentvolumeclaims"], "verbs": write},
        # Stop deletes a task's pods with its Job (propagation) and also directly, so they end at once.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    ]


def launcher_cluster_role_rules() -> list[dict[str, Any]]:
    """The only cluster-scoped rights: checking bearer tokens and asking whether a user may act for all users."""
    return [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
