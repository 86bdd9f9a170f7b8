"""The decision on its own: quantiles from histogram buckets, and promote / roll back / wait on hand-made windows.
Expected values are computed by hand from the rules in docs/rollout.md."""

from __future__ import annotations

import math

import pytest

from rollout.decide import PROMOTE, ROLLBACK, WAIT, Thresholds, VersionStats, decide, histogram_quantile

INF = math.inf
LIMITS = Thresholds(
    window_s=60, min_requests=100, max_error_rate_increase=0.01, max_latency_ratio=1.2, max_ttft_ratio=1.5
)


def latency(*per_bucket: tuple[float, int]) -> tuple[tuple[float, float], ...]:
    """Cumulative buckets from (upper bound, observations in that bucket alone), +Inf added."""
    out, total = [], 0
    for bound, count in per_bucket:
        total += count
        out.append((bound, float(total)))
    return (*out, (INF, float(total)))


# 100 observations: 10 up to 0.1 s, 50 in (0.1, 0.5], 40 in (0.5, 1.0].
SPREAD = latency((0.1, 10), (0.5, 50), (1.0, 40))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.95, 0.5 + 0.5 * 35 / 40),  # rank 95: 35th of the 40 in (0.5, 1.0] -> 0.9375
        (0.50, 0.1 + 0.4 * 40 / 50),  # rank 50: 40th of the 50 in (0.1, 0.5] -> 0.42
        (0.05, 0.1 * 5 / 10),  # rank 5 in the first bucket, interpolated from 0 -> 0.05
        (0.60, 0.5),  # rank 60: the last of the second bucket, its upper bound
    ],
)
def test_quantiles_interpolate_inside_the_bucket_like_histogram_quantile(q: float, expected: float) -> None:
    assert histogram_quantile(q, SPREAD) == pytest.approx(expected)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound_and_an_empty_histogram_has_none() -> None:
    assert histogram_quantile(0.95, ((0.1, 10.0), (0.5, 20.0), (INF, 100.0))) == 0.5
    assert histogram_quantile(0.95, ((0.1, 0.0), (INF, 0.0))) is None
    assert histogram_quantile(0.95, ()) is None
    assert histogram_quantile(0.95, ((0.1, 3.0), (0.5, 4.0))) is None, "no +Inf bucket: not a histogram"
    assert histogram_quantile(0.95, tuple(reversed(SPREAD))) == pytest.approx(0.9375), "order does not matter"


def stats(requests: int, errors: int = 0, lat: float = 1.0, ttft: float | None = None) -> VersionStats:
    """`requests` with `errors` 5xx; latencies spread like SPREAD scaled by `lat` (so p95 = 0.9375 * lat)."""
    scale = requests / 100

    def spread(factor: float) -> tuple[tuple[float, float], ...]:
        return tuple((b * factor if b != INF else INF, c * scale) for b, c in SPREAD)

    return VersionStats(requests=requests, errors=errors, latency=spread(lat), first_token=spread(ttft) if ttft else ())


def test_a_challenger_within_every_threshold_after_the_window_is_promoted() -> None:
    decision = decide(stats(1000, 2, ttft=0.2), stats(212, 0, lat=1.1, ttft=0.25), 63, LIMITS)
    assert decision.outcome == PROMOTE
    assert decision.reason == (
        "error rate 0.00 vs 0.00 (max increase 0.01); "
        "p95 latency 1.031 s vs 0.938 s (ratio 1.10, max 1.2); "
        "p95 time to first token 0.234 s vs 0.188 s (ratio 1.25, max 1.5) over 212 challenger requests in 63 s"
    )


def test_an_error_rate_breach_rolls_back_with_the_figures() -> None:
    decision = decide(stats(1000, 0), stats(212, 102), 63, LIMITS)
    assert decision.outcome == ROLLBACK
    assert decision.reason == "error rate 0.48 vs 0.00 (max increase 0.01) over 212 challenger requests in 63 s"


def test_the_error_threshold_is_an_increase_over_the_champion() -> None:
    # The champion fails 5%, the challenger 5.5%: an increase of 0.005, within 0.01.
    assert decide(stats(1000, 50), stats(200, 11), 61, LIMITS).outcome == PROMOTE
    # 6.5%: 0.015 more, outside.
    assert decide(stats(1000, 50), stats(200, 13), 61, LIMITS).outcome == ROLLBACK


def test_an_error_rate_breach_rolls_back_early_once_min_requests_show_it() -> None:
    decision = decide(stats(500), stats(100, 50), 10, LIMITS)
    assert decision.outcome == ROLLBACK, "failures must not go on for the whole window"
    assert (
        decision.reason.startswith("error rate 0.50 vs 0.00") and "100 challenger requests in 10 s" in decision.reason
    )


def test_errors_on_fewer_than_min_requests_only_wait() -> None:
    decision = decide(stats(500), stats(99, 99), 120, LIMITS)
    assert decision.outcome == WAIT
    assert decision.reason == "99 challenger requests in 120 s: waiting for 100 (the 60 s window is over)"
    early = decide(stats(500), stats(5, 5), 20, LIMITS)
    assert early.reason == "5 challenger requests in 20 s: waiting for 100 (window 20 of 60 s)"


def test_a_healthy_challenger_waits_for_the_window_to_end() -> None:
    decision = decide(stats(5000), stats(1000), 59.5, LIMITS)
    assert decision.outcome == WAIT
    assert decision.reason == (
        "error rate 0.00 vs 0.00 (max increase 0.01) so far over 1000 challenger requests in 60 s; window 60 of 60 s"
    ), "59.5 s shows rounded, but the window is not over"
    assert decide(stats(5000), stats(1000), 60, LIMITS).outcome == PROMOTE


def test_a_slow_challenger_is_rolled_back_at_the_end_of_the_window() -> None:
    assert decide(stats(1000), stats(200, lat=1.3), 30, LIMITS).outcome == WAIT, "latency is judged on the window"
    decision = decide(stats(1000), stats(200, lat=1.3), 60, LIMITS)
    assert decision.outcome == ROLLBACK
    assert decision.reason == (
        "p95 latency 1.219 s vs 0.938 s (ratio 1.30, max 1.2) over 200 challenger requests in 60 s"
    )


def test_a_slow_first_token_rolls_back_even_with_a_good_latency() -> None:
    decision = decide(stats(1000, ttft=0.1), stats(200, ttft=0.16), 60, LIMITS)
    assert decision.outcome == ROLLBACK
    assert decision.reason.startswith("p95 time to first token 0.150 s vs 0.094 s (ratio 1.60, max 1.5)")


def test_the_ratio_limit_itself_is_allowed() -> None:
    assert decide(stats(1000), stats(200, lat=1.2), 60, LIMITS).outcome == PROMOTE


def test_without_a_baseline_the_latencies_are_not_compared_and_say_so() -> None:
    # A 100% canary: the champion served nothing, so only the error rate (against 0) is judged.
    decision = decide(VersionStats(), stats(200, lat=3.0), 60, LIMITS)
    assert decision.outcome == PROMOTE
    assert "p95 latency not compared (no champion data)" in decision.reason
    assert "p95 time to first token not compared (no challenger data)" in decision.reason
    assert decide(VersionStats(), stats(200, errors=3), 60, LIMITS).outcome == ROLLBACK
