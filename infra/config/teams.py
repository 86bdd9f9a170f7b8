"""The `teams` and `kueue*` keys: who shares the cluster, with which quota, through which queues.

A team is the unit of isolation, quota and fair share: one namespace (`<namespace>-<team>`) holding its users'
tasks, volumes and logs, one ResourceQuota, and (with `kueue`) one ClusterQueue in the platform's cohort with a
LocalQueue of the team's name. docs/teams.md explains the choice of a namespace per team over one per user.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from infra.config.validation import DNS_LABEL, Validator
from workloads.quantity import parse_quantity

WILDCARD_USER = "*"
"""In a team's `users`: every authenticated user that no other team lists."""
TEAM_FIELDS: dict[str, str] = {
    "name": "DNS-1123 label, at most 30 characters; the namespace is <namespace>-<name>",
    "users": "list of Kubernetes user names (what TokenReview answers, e.g. system:serviceaccount:NS:SA), or ['*']",
    "cpu": "cpu the team is guaranteed (Kueue nominal quota; quantity)",
    "memory": "memory the team is guaranteed (quantity)",
    "gpus": "nvidia.com/gpu the team is guaranteed (integer, default 0)",
    "maxCpu": "cpu the team may use at most, borrowing from the cohort (default cpu; the ResourceQuota's line)",
    "maxMemory": "memory at most (default memory)",
    "maxGpus": "GPUs at most (default gpus)",
    "storage": "sum of the team's volume requests (ResourceQuota requests.storage; quantity)",
    "volumes": "most PersistentVolumeClaims (integer)",
    "weight": "fair-sharing weight against the other teams (number > 0, default 1)",
}
REQUIRED_FIELDS = ("name", "users", "cpu", "memory", "storage", "volumes")


@dataclass(frozen=True)
class TeamSettings:
    name: str
    """The team (LocalQueue and ClusterQueue name suffix)."""
    namespace: str
    """`<platform namespace>-<name>`: the team's tasks, volumes and logs."""
    users: tuple[str, ...]
    """User names, or ('*',)."""
    cpu: str
    memory: str
    gpus: int
    max_cpu: str
    max_memory: str
    max_gpus: int
    storage: str
    volumes: int
    weight: str
    """Decimal string (Kueue's fairSharing.weight is a quantity)."""


@dataclass(frozen=True)
class KueueSettings:
    enabled: bool
    """Declare the queues: ResourceFlavors, a ClusterQueue per team (and for the platform's training) in one cohort,
    LocalQueues; every task, TrainingJob and the stack's training Job are submitted through them."""
    gpu_flavor_labels: tuple[tuple[str, str], ...]
    """Node labels of the gpu ResourceFlavor (the gpuNodeSelector)."""


def _quantity(v: Validator, where: str, raw: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        v.problems.append(f'{where}.{key}={value!r}: must be a quantity string, e.g. "2", "500m", "4Gi"')
        return "0"
    try:
        if parse_quantity(value) < 0:
            raise ValueError
    except ValueError:
        v.problems.append(f"{where}.{key}={value!r}: must be a non-negative Kubernetes quantity, e.g. 2, 500m, 4Gi")
        return "0"
    return value


def _int(v: Validator, where: str, raw: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        v.problems.append(f"{where}.{key}={value!r}: must be an integer >= 0")
        return 0
    return value


def parse_teams(v: Validator, namespace: str) -> tuple[TeamSettings, ...]:
    items = v.raw.get("teams")
    if not isinstance(items, list):
        v.problem("teams", "must be a list of teams, e.g. [{name: team-a, users: ['*'], cpu: '2', ...}]")
        return ()
    teams: list[TeamSettings] = []
    owner: dict[str, str] = {}
    for i, raw in enumerate(items):
        where = f"teams[{i}]"
        if not isinstance(raw, dict):
            v.problems.append(f"{where}={raw!r}: must be an object with {', '.join(REQUIRED_FIELDS)}")
            continue
        if unknown := sorted(set(raw) - set(TEAM_FIELDS)):
            v.problems.append(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(TEAM_FIELDS)}")
        if missing := [f for f in REQUIRED_FIELDS if f not in raw]:
            v.problems.append(
                f"{where}: missing {', '.join(missing)} (" + "; ".join(f"{f}: {TEAM_FIELDS[f]}" for f in missing) + ")"
            )
            continue
        name = raw["name"]
        if not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 30:
            v.problems.append(f"{where}.name={name!r}: must be {TEAM_FIELDS['name']}")
            continue
        where = f"teams[{name}]"
        users = raw["users"]
        if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
            v.problems.append(f"{where}.users={users!r}: must be a non-empty {TEAM_FIELDS['users']}")
            users = []
        for user in users:
            if user in owner:
                v.problems.append(
                    f"{where}.users: {user!r} is also in team {owner[user]}; a user belongs to one team (the "
                    "launcher puts their tasks in that team's namespace)"
                )
            owner[user] = name
        cpu, memory = _quantity(v, where, raw, "cpu"), _quantity(v, where, raw, "memory")
        gpus = _int(v, where, raw, "gpus", 0)
        max_cpu = _quantity(v, where, raw, "maxCpu", cpu)
        max_memory = _quantity(v, where, raw, "maxMemory", memory)
        max_gpus = _int(v, where, raw, "maxGpus", gpus)
        for key, low, high in (("maxCpu", cpu, max_cpu), ("maxMemory", memory, max_memory)):
            try:
                if parse_quantity(high) < parse_quantity(low):
                    v.problems.append(f"{where}.{key}={high!r}: must be at least {key[3:].lower()}={low!r}")
            except ValueError:
                pass
        if max_gpus < gpus:
            v.problems.append(f"{where}.maxGpus={max_gpus}: must be at least gpus={gpus}")
        weight = raw.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            v.problems.append(f"{where}.weight={weight!r}: must be a number > 0 (fair-sharing weight)")
            weight = 1
        teams.append(
            TeamSettings(
                name=name,
                namespace=f"{namespace}-{name}",
                users=tuple(users),
                cpu=cpu,
                memory=memory,
                gpus=gpus,
                max_cpu=max_cpu,
                max_memory=max_memory,
                max_gpus=max_gpus,
                storage=_quantity(v, where, raw, "storage"),
                volumes=_int(v, where, raw, "volumes"),
                weight=f"{Decimal(str(weight)).normalize():f}",
            )
        )
    names = [t.name for t in teams]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        v.problem("teams", f"team {dup!r} is declared twice")
    return tuple(teams)


def parse_kueue(v: Validator, gpu_labels: tuple[tuple[str, str], ...]) -> KueueSettings:
    return KueueSettings(enabled=v.boolean("kueue"), gpu_flavor_labels=gpu_labels)
