"""Refusing at submission a task or a TrainingJob that a ResourceQuota of the namespace can never admit.

A task asks num_nodes x its per-node resources (request = limit, skyrun/manifests.py `task_resources`) and one Job,
Service, NetworkPolicy and record ConfigMap. When that total alone is over a quota's `spec.hard`, the Job
controller could never create all of its pods: the task would stay pending for good. Current use is not counted:
it only makes a task wait, and the status says so (the Job's FailedCreate "exceeded quota" event, skyrun/status.py).

Pure functions over plain dicts, so every number and message is testable without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from workloads.pod import GPU_RESOURCE, Resources
from workloads.quantity import format_quantity, parse_quantity


@dataclass(frozen=True)
class FieldError:
    """One problem with a task or request: the field (dotted path) and what to do about it."""

    field: str
    message: str


PLATFORM_QUOTA = "platform-quota"
"""The name infra/namespace.py gives the namespace's quota: its limits come from the stack's config keys below."""
CONFIG_KEYS = {"cpu": "quotaCpu", "memory": "quotaMemory", GPU_RESOURCE: "quotaGpus", "pods": "quotaPods"}
# A quota with scopes counts only the pods they match. A task's pods are never BestEffort (they have requests)
# and never Terminating (no activeDeadlineSeconds); a quota with any other scope (PriorityClass, ...) is left
# out rather than guessed at: at worst the task waits and its status names the quota.
TASK_POD_SCOPES = frozenset({"NotBestEffort", "NotTerminating"})
# Object-count keys (core names and `count/<resource>.<group>`): one of each per task.
OBJECT_KEYS = frozenset({
    "services", "count/services", "configmaps", "count/configmaps", "count/jobs.batch",
    "count/networkpolicies.networking.k8s.io",
})  # fmt: skip


@dataclass(frozen=True)
class Demand:
    """What a task asks of one resource: `count` x `each`."""

    field: str
    """The task YAML field to change."""
    each: str
    """Per node (or per object) as the task gives it (a Kubernetes quantity)."""
    count: int
    """Nodes (or objects)."""
    noun: str = ""
    """What is counted, for the message (`pods (one per node)`); empty for a per-node quantity."""
    remedy: str = "ask for less"
    """What the user can change; empty when nothing (one Job per task)."""

    @property
    def total(self) -> Decimal:
        return self.count * parse_quantity(self.each)


ONE_OBJECT = Demand("task", "1", 1, "", "")


def task_demands(per_node: Resources, num_nodes: int) -> dict[str, Demand]:
    """Resource name (as after `requests.`/`limits.` in a quota key) -> what the task asks in all."""
    demands = {
        "cpu": Demand("resources.cpus", per_node.cpu_limit, num_nodes),
        "memory": Demand("resources.memory", per_node.memory_limit, num_nodes),
        "pods": Demand("num_nodes", "1", num_nodes, "pods (one per node)", "ask for fewer nodes"),
    }
    if per_node.gpus:
        demands[GPU_RESOURCE] = Demand("resources.accelerators", str(per_node.gpus), num_nodes)
    return demands


def _resource(key: str) -> str:
    """`limits.memory` -> memory; `requests.nvidia.com/gpu` -> nvidia.com/gpu; `cpu`, `pods` stay."""
    for prefix in ("requests.", "limits."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return "pods" if key == "count/pods" else key


def _scopes(spec: Mapping[str, Any]) -> set[str]:
    expressions = (spec.get("scopeSelector") or {}).get("matchExpressions") or []
    return {*(spec.get("scopes") or []), *(e.get("scopeName", "") for e in expressions)}


def _applies(spec: Mapping[str, Any]) -> bool:
    return _scopes(spec) <= TASK_POD_SCOPES


def trainingjob_demands(per_worker: Resources, workers: int) -> dict[str, Demand]:
    """Quota key (or resource name) -> what a TrainingJob's gang asks in all: its requests and limits differ."""
    field = "spec.resources"
    demands = {
        "requests.cpu": Demand(f"{field}.requests.cpu", per_worker.cpu_request, workers),
        "limits.cpu": Demand(f"{field}.limits.cpu", per_worker.cpu_limit, workers),
        "requests.memory": Demand(f"{field}.requests.memory", per_worker.memory_request, workers),
        "limits.memory": Demand(f"{field}.limits.memory", per_worker.memory_limit, workers),
        "pods": Demand("spec.workers", "1", workers, "pods (one per worker)", "ask for fewer workers"),
    }
    demands["cpu"], demands["memory"] = demands["requests.cpu"], demands["requests.memory"]
    if per_worker.gpus:
        demands[GPU_RESOURCE] = Demand("spec.gpusPerWorker", str(per_worker.gpus), workers)
    return demands


def _over(key: str, quota: str, demand: Demand, hard: Decimal, resource: str, subject: str) -> FieldError:
    binary = resource == "memory"
    total = format_quantity(demand.total, binary=binary)
    if demand.noun:
        asks = f"{total} {demand.noun}"
    elif demand.count > 1:
        asks = f"{demand.count} x {demand.each} = {total}"
    else:
        asks = total
    over = format_quantity(demand.total - hard, binary=binary)
    config_key = CONFIG_KEYS.get(resource) if quota == PLATFORM_QUOTA else None
    raise_it = f"raise {config_key}" if config_key else f"have ResourceQuota {quota} raised"
    message = (
        f"{key}: {subject} asks {asks}, the namespace quota {quota} allows {format_quantity(hard, binary=binary)} "
        f"in all ({over} over); {' or '.join(filter(None, (demand.remedy, raise_it)))}"
    )
    return FieldError(demand.field, message)


def quota_problems(per_node: Resources, num_nodes: int, quotas: Iterable[Mapping[str, Any]]) -> list[FieldError]:
    """One problem per quota key whose `spec.hard` is below what the task alone asks (every quota, every key)."""
    return over_quota(task_demands(per_node, num_nodes), quotas, "the task")


def over_quota(demands: Mapping[str, Demand], quotas: Iterable[Mapping[str, Any]], subject: str) -> list[FieldError]:
    """One problem per quota key whose `spec.hard` is below what `subject` alone asks; `demands` by quota key
    (`limits.memory`) or by resource name (`memory`, for both requests and limits)."""
    problems = []
    for quota in sorted(quotas, key=lambda q: str(q["metadata"]["name"])):
        spec = quota.get("spec") or {}
        if not _applies(spec):
            continue
        name = str(quota["metadata"]["name"])
        for key, hard_text in sorted((spec.get("hard") or {}).items()):
            resource = _resource(key)
            demand = ONE_OBJECT if key in OBJECT_KEYS else demands.get(key) or demands.get(resource)
            if demand is None:
                continue  # a resource tasks never ask for (storage, load balancers, ...)
            hard = parse_quantity(str(hard_text))
            if demand.total > hard:
                problems.append(_over(key, name, demand, hard, resource, subject))
    return problems
