"""Refusing at submission a gang that its Kueue ClusterQueue could never admit, however long it waited.

Kueue admits a workload when, for every resource its pods request, ONE flavor of the resource group that covers the
resource has room for all of it (the pods of a pod set share a flavor). The most a ClusterQueue can ever give is,
per (flavor, resource):

    nominalQuota + min(borrowingLimit, sum over the other ClusterQueues of the cohort of what they can lend)

where what another ClusterQueue can lend is its nominalQuota, capped by its `lendingLimit` when it sets one (Kueue:
"lendingLimit is the maximum amount of unused quota ... this ClusterQueue can lend"), and a missing
`borrowingLimit` means no cap on borrowing. A ClusterQueue without `spec.cohortName` borrows nothing. Quota that
Cohort objects hold themselves (hierarchical cohorts) is not counted: at worst a task that a parent cohort could
have admitted is refused, with a message that names the numbers used.

What is in use is not counted (it only makes the task wait: its status says so). Plain dicts in (the ClusterQueue
objects as the API returns them), FieldErrors out; no skyrun import, so the TrainingJob operator can use it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from workloads.quantity import format_quantity, parse_quantity
from workloads.quota import Demand, FieldError

# Kueue counts `pods` only where a ClusterQueue covers it; every other resource a pod requests must be covered.
OPTIONAL_RESOURCES = frozenset({"pods"})


@dataclass(frozen=True)
class Capacity:
    """The most one (flavor, resource) of a ClusterQueue can ever admit."""

    flavor: str
    nominal: Decimal
    borrowable: Decimal
    """What the cohort can lend it (0 without a cohort), after its own borrowingLimit."""

    @property
    def total(self) -> Decimal:
        return self.nominal + self.borrowable


def cohort_of(cluster_queue: Mapping[str, Any]) -> str:
    spec = cluster_queue.get("spec") or {}
    return str(spec.get("cohortName") or spec.get("cohort") or "")  # `cohort` in kueue.x-k8s.io/v1beta1


def _quotas(cluster_queue: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(flavor, resource) -> its quota entry (nominalQuota, borrowingLimit, lendingLimit)."""
    out = {}
    for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []:
        for flavor in group.get("flavors") or []:
            for entry in flavor.get("resources") or []:
                out[(str(flavor["name"]), str(entry["name"]))] = entry
    return out


def _lendable(entry: Mapping[str, Any]) -> Decimal:
    nominal = parse_quantity(str(entry.get("nominalQuota", "0")))
    if entry.get("lendingLimit") is None:
        return nominal
    return min(nominal, parse_quantity(str(entry["lendingLimit"])))


def capacities(
    cluster_queue: Mapping[str, Any], cluster_queues: Iterable[Mapping[str, Any]]
) -> dict[str, list[Capacity]]:
    """resource -> its capacity in each flavor of the ClusterQueue (in the order the ClusterQueue lists them)."""
    name, cohort = cluster_queue["metadata"]["name"], cohort_of(cluster_queue)
    peers = [q for q in cluster_queues if cohort and cohort_of(q) == cohort and q["metadata"]["name"] != name]
    peer_quotas = [_quotas(q) for q in peers]
    out: dict[str, list[Capacity]] = {}
    for (flavor, resource), entry in _quotas(cluster_queue).items():
        lendable = sum((_lendable(q[(flavor, resource)]) for q in peer_quotas if (flavor, resource) in q), Decimal(0))
        if entry.get("borrowingLimit") is not None:
            lendable = min(lendable, parse_quantity(str(entry["borrowingLimit"])))
        nominal = parse_quantity(str(entry.get("nominalQuota", "0")))
        out.setdefault(resource, []).append(Capacity(flavor, nominal, lendable if cohort else Decimal(0)))
    return out


def _fmt(value: Decimal, resource: str) -> str:
    return format_quantity(value, binary=resource == "memory")


def _asks(demand: Demand, resource: str) -> str:
    total = _fmt(demand.total, resource)
    if demand.noun:
        return f"{total} {demand.noun}"
    if demand.count > 1:
        return f"{total} ({demand.count} nodes x {demand.each})"
    return total


def queue_problems(
    demands: Mapping[str, Demand],
    queue: str,
    cluster_queue: Mapping[str, Any],
    cluster_queues: Iterable[Mapping[str, Any]],
    subject: str = "the task",
) -> list[FieldError]:
    """One problem per resource `subject` asks more of than the LocalQueue `queue`'s ClusterQueue could ever admit
    (by resource name: `cpu`, `memory`, `nvidia.com/gpu`, `pods`), and one when each resource fits some flavor but
    no single flavor fits them all."""
    cq_name = str(cluster_queue["metadata"]["name"])
    cohort = cohort_of(cluster_queue)
    caps = capacities(cluster_queue, cluster_queues)
    raise_it = f"ask for less or have ClusterQueue {cq_name}'s quota raised"
    problems = []
    for resource, demand in sorted(demands.items()):
        if demand.total <= 0 or (resource in OPTIONAL_RESOURCES and resource not in caps):
            continue
        if resource not in caps:
            message = (f"{resource}: {subject} asks for {_asks(demand, resource)}, queue {queue} (ClusterQueue "
                       f"{cq_name}) has no quota for {resource} at all; ask for none or use another queue")  # fmt: skip
            problems.append(FieldError(demand.field, message))
            continue
        best = max(caps[resource], key=lambda c: c.total)
        if demand.total <= best.total:
            continue
        source = f"nominal {_fmt(best.nominal, resource)}"
        if cohort:
            source += f" + {_fmt(best.borrowable, resource)} borrowable from cohort {cohort}"
        message = (
            f"{resource}: {subject} asks for {_asks(demand, resource)}, queue {queue} can admit at most "
            f"{_fmt(best.total, resource)} ({source}): {_fmt(demand.total - best.total, resource)} too many; "
            f"{raise_it}"
        )
        problems.append(FieldError(demand.field, message))
    if problems:
        return problems
    asked = {r: d for r, d in demands.items() if r in caps and d.total > 0}
    for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []:
        in_group = {r: d for r, d in asked.items() if r in (group.get("coveredResources") or [])}
        flavors = [str(f["name"]) for f in group.get("flavors") or []]
        fits = [
            f
            for f in flavors
            if all(any(c.flavor == f and d.total <= c.total for c in caps[r]) for r, d in in_group.items())
        ]
        if len(in_group) > 1 and not fits:
            wanted = ", ".join(f"{r} {_fmt(d.total, r)}" for r, d in sorted(in_group.items()))
            message = (f"{subject} asks for {wanted}: each fits some flavor of queue {queue} (ClusterQueue "
                       f"{cq_name}) but no single flavor fits them all, and a task's pods share one flavor; "
                       f"{raise_it}")  # fmt: skip
            problems.append(FieldError("resources", message))
    return problems
