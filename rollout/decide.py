"""The decision, a pure function of what the window measured: promote, roll back or wait, with the figures.

Quantiles follow Prometheus' `histogram_quantile`: the bucket holding the rank is found from cumulative counts and
the value is interpolated linearly inside it (from 0 for the first bucket); a rank in the +Inf bucket answers the
highest finite bound."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["promote", "rollback", "wait"]
PROMOTE: Outcome = "promote"
ROLLBACK: Outcome = "rollback"
WAIT: Outcome = "wait"

Buckets = Sequence[tuple[float, float]]
"""A histogram as (upper bound `le`, cumulative count) pairs, +Inf included."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What a challenger must meet (validated in rollout.settings)."""

    window_s: float
    """Seconds the challenger is watched before it may be promoted."""
    min_requests: int
    """Challenger requests needed in the window before any verdict on them (promotion or rollback)."""
    max_error_rate_increase: float
    """Largest allowed challenger 5xx share minus champion 5xx share (absolute, 0..1)."""
    max_latency_ratio: float
    """Largest allowed challenger p95 request latency / champion p95."""
    max_ttft_ratio: float
    """Largest allowed challenger p95 time to first token / champion p95 (streams)."""
    quantile: float = 0.95
    """The latency quantile compared."""


@dataclass(frozen=True, slots=True)
class VersionStats:
    """What one version served in the window, summed over the replicas."""

    requests: float = 0.0
    errors: float = 0.0
    """Requests answered 5xx."""
    latency: Buckets = field(default_factory=tuple)
    first_token: Buckets = field(default_factory=tuple)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str
    """Human-readable, with the measured figures; recorded in MLflow and logged."""


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The `q` quantile of a cumulative histogram, as Prometheus computes it; None when it holds no observation."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][0] != math.inf:
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == math.inf:
                return lower  # the highest finite bound: nothing above it is known
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")


def decide(champion: VersionStats, challenger: VersionStats, elapsed_s: float, limits: Thresholds) -> Decision:
    """Promote, roll back or wait. An error-rate breach rolls back as soon as `min_requests` challenger requests
    show it, window over or not, so that clients see failures only for a bounded time; latency and time to first
    token are judged at the end of the window, when their quantiles rest on the most data. Nothing is judged on
    fewer than `min_requests` challenger requests: the gate waits, without a deadline (a challenger that gets no
    traffic harms nobody)."""
    served = f"{challenger.requests:.0f} challenger requests in {elapsed_s:.0f} s"
    window = (
        f"window {elapsed_s:.0f} of {limits.window_s:.0f} s"
        if elapsed_s < limits.window_s
        else f"the {limits.window_s:.0f} s window is over"
    )
    if challenger.requests < limits.min_requests:
        return Decision(WAIT, f"{served}: waiting for {limits.min_requests} ({window})")
    errors = (
        f"error rate {challenger.error_rate:.2f} vs {champion.error_rate:.2f} "
        f"(max increase {limits.max_error_rate_increase:g})"
    )
    if challenger.error_rate - champion.error_rate > limits.max_error_rate_increase:
        return Decision(ROLLBACK, f"{errors} over {served}")
    if elapsed_s < limits.window_s:
        return Decision(WAIT, f"{errors} so far over {served}; {window}")
    figures = [errors]
    for what, ours, theirs, limit in (
        ("p95 latency", challenger.latency, champion.latency, limits.max_latency_ratio),
        ("p95 time to first token", challenger.first_token, champion.first_token, limits.max_ttft_ratio),
    ):
        mine, base = histogram_quantile(limits.quantile, ours), histogram_quantile(limits.quantile, theirs)
        if mine is None or base is None:
            # No baseline (the champion served none, e.g. a 100% canary) or nothing measured (no streams).
            figures.append(f"{what} not compared ({'no challenger data' if mine is None else 'no champion data'})")
            continue
        ratio = mine / base if base > 0 else (1.0 if mine == 0 else math.inf)
        figure = f"{what} {mine:.3f} s vs {base:.3f} s (ratio {ratio:.2f}, max {limit:g})"
        if ratio > limit:
            return Decision(ROLLBACK, f"{figure} over {served}")
        figures.append(figure)
    return Decision(PROMOTE, f"{'; '.join(figures)} over {served}")
