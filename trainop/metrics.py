"""The operator's Prometheus metrics (served on METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from workloads.trainingjob import PHASES

RECONCILIATIONS = Counter("trainop_reconciliations_total", "Reconciliations of TrainingJobs, by result", ["result"])
TRAININGJOBS = Gauge("trainop_trainingjobs", "TrainingJobs in the watched namespace, by phase", ["phase"])
RESTARTS = Counter("trainop_restarts_total", "Whole-gang restarts, by cause (failure, preemption)", ["cause"])
RECONCILE_DURATION = Histogram(
    "trainop_reconcile_duration_seconds",
    "Time of one reconciliation (seconds)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

_phase_of: dict[str, str] = {}


def record_phase(uid: str, phase: str | None) -> None:
    """Remember a TrainingJob's phase (None: it is gone) and update the per-phase gauge."""
    if phase is None:
        _phase_of.pop(uid, None)
    else:
        _phase_of[uid] = phase
    for known in PHASES:
        TRAININGJOBS.labels(known).set(sum(1 for p in _phase_of.values() if p == known))
