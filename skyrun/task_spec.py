"""The SkyPilot task YAML as a typed, validated model.

`parse_task(document)` checks a task YAML (already loaded into Python values) against SkyPilot's field names and
semantics and returns a `Task` plus the fields it accepted but cannot honour on a cluster, or raises `TaskInvalid`
with every problem at once, each naming its field. The objects a task runs as are built in `workloads.task`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from workloads.quantity import split_quantity
from workloads.quota import FieldError

MAX_NUM_NODES = 64
MAX_GPUS_PER_NODE = 16

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
# SkyPilot's amounts are Kubernetes quantities (workloads.quantity) with SkyPilot's own meanings on top: a trailing
# "+" (at least N, granted as N), a bare memory number in GiB, and GB/MB/TB for G/M/T.
_SKYPILOT_UNITS = {"GB": "G", "MB": "M", "TB": "T"}
_MEMORY_UNITS = ("Ki", "Mi", "Gi", "Ti", "M", "G", "T")
_ACCELERATOR = re.compile(r"^(?:(?P<name>[A-Za-z][A-Za-z0-9_.-]*)(?::(?P<count>[0-9]+))?|(?P<bare>[0-9]+))$")
_VOLUME_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")


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


def _split(text: str) -> tuple[Decimal, str]:
    """split_quantity, or (0, "?") for text that is not a quantity ("4 +" is not "4+")."""
    try:
        return split_quantity(text) if text == text.strip() else (Decimal(0), "?")
    except ValueError:
        return Decimal(0), "?"


def parse_cpus(value: Any) -> str:
    """SkyPilot's cpus ("2", "2+", 0.5) or millicores ("500m") as a Kubernetes quantity; "N+" (at least N) is
    granted as N."""
    text = _amount(value)
    number, suffix = _split(text.removesuffix("+"))
    if number <= 0 or (suffix and text.endswith("+")):
        raise ValueError(
            f"{value!r} is not a cpu count: use a positive number (2), at least N (2+) or millicores (500m)"
        )
    return text if suffix else _plain(number)


def parse_memory(value: Any) -> str:
    """SkyPilot's memory ("4" GiB, "4+", "8GB", "512MB") or a Kubernetes quantity ("4Gi") as a quantity."""
    text = _amount(value).removesuffix("+")
    if text[-2:] in _SKYPILOT_UNITS:
        text = text[:-2] + _SKYPILOT_UNITS[text[-2:]]
    number, unit = _split(text)
    if unit not in ("", *_MEMORY_UNITS):
        raise ValueError(f'{value!r} is not a memory size: use GiB ("4", "4+"), "8GB", "512MB" or "4Gi"')
    if number <= 0:
        raise ValueError(f"{value!r} is not a memory size: it must be more than 0")
    unit = unit or "Gi"
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
