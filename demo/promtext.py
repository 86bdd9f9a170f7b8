"""Numbers from a Prometheus `/metrics` page, read with prometheus_client's text parser: a sample's value, a
histogram's cumulative buckets, the difference of two scrapes, and quantiles estimated as PromQL's
`histogram_quantile` estimates them (linear interpolation inside the bucket the quantile falls in)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Buckets = dict[float, float]
"""Cumulative count per upper bound (`le`), +Inf included, as a histogram exposes them."""


def samples(text: str, name: str, labels: Mapping[str, str] | None = None) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` (the full sample name: `_total`, `_bucket` included) whose
    labels include `labels`."""
    wanted = dict(labels or {})
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and wanted.items() <= sample.labels.items()
    ]


def value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the matching samples (0 when there is none: a labelled counter appears on its first increment)."""
    return sum(found for _, found in samples(text, name, labels))


def buckets(text: str, histogram: str, labels: Mapping[str, str] | None = None) -> Buckets:
    """The cumulative buckets of `histogram` (its base name) over the series matching `labels`, summed."""
    out: Buckets = {}
    for found_labels, count in samples(text, f"{histogram}_bucket", labels):
        bound = float(found_labels["le"])
        out[bound] = out.get(bound, 0.0) + count
    return dict(sorted(out.items()))


def bucket_increase(before: Mapping[float, float], after: Mapping[float, float]) -> Buckets:
    """What was observed between two scrapes of one histogram (a bucket first seen in `after` started at 0)."""
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(q: float, cumulative: Mapping[float, float]) -> float:
    """The q-quantile (0 <= q <= 1) of the observations in `cumulative`, computed as PromQL's
    `histogram_quantile` does (promql/quantile.go): NaN without observations; in the first bucket whose count
    reaches q x total, linear interpolation between its lower and upper bound (the first bucket starts at 0);
    when that is the +Inf bucket, the largest finite bound."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not in [0, 1]")
    bounds = sorted(cumulative)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        raise ValueError("a histogram has at least one finite bucket and ends with le=+Inf")
    total = cumulative[bounds[-1]]
    if total <= 0:
        return math.nan
    rank = q * total
    b = next(i for i, bound in enumerate(bounds) if math.isinf(bound) or cumulative[bound] >= rank)
    if math.isinf(bounds[b]):
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[b - 1] if b else 0.0
    below = cumulative[bounds[b - 1]] if b else 0.0
    count = cumulative[bounds[b]] - below
    return start + (bounds[b] - start) * ((rank - below) / count if count else 0.0)
