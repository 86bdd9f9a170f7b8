"""From the replicas' `/metrics` text to what each (alias, version) served in the window.

Every scrape is parsed into counters (cumulative, as the replica exposes them); a `Window` adds up each counter's
increase from one scrape to the next per target, like Prometheus' `increase()`:
- a counter lower than at the previous scrape was reset (the pod restarted): its new value is the increase since 0;
- a series a known target did not have before (a version's first request there) counts from 0;
- a target first seen after the window began (a new replica, or one that was unreachable) starts from its first
  scrape, so nothing it served before the window is ever counted (at most one interval of its traffic is missed);
- a target that disappears keeps what it served while it was seen."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from rollout.decide import VersionStats

# The inference server's families (inference/metrics.py); the gate reads them over HTTP, never by import.
REQUESTS = "inference_requests"
LATENCY = "inference_request_duration_seconds"
FIRST_TOKEN = "inference_first_token_duration_seconds"
SAMPLES = {f"{REQUESTS}_total": "requests", f"{LATENCY}_bucket": "latency", f"{FIRST_TOKEN}_bucket": "first_token"}

Role = tuple[str, str]
"""(alias role, version): `champion` or `challenger`, and the version that served."""
SeriesKey = tuple[str, str, str, str, str]
"""(what, alias, version, status or "", le or ""): what is `requests`, `errors`, `latency` or `first_token`."""


def parse(text: str) -> dict[SeriesKey, float]:
    """The counters of one scrape that the gate compares, per series. Series no version served (empty alias, e.g.
    probes) are left out. Several routes of one version are added together."""
    out: dict[SeriesKey, float] = defaultdict(float)
    # By sample name, whatever family the parser grouped a sample in (a `# TYPE` line naming `..._total` or none
    # at all makes an untyped family of the same samples).
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            what = SAMPLES.get(sample.name)
            alias, version = sample.labels.get("alias", ""), sample.labels.get("version", "")
            if what is None or not alias:
                continue
            if what == "requests":
                out[("requests", alias, version, "", "")] += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    out[("errors", alias, version, "", "")] += sample.value
            else:
                out[(what, alias, version, "", sample.labels["le"])] += sample.value
    return dict(out)


@dataclass
class Window:
    """Increases of every series since the window started, summed over targets."""

    started_at: float
    """Monotonic seconds when the window began."""
    _last: dict[str, dict[SeriesKey, float]] = field(default_factory=dict)
    _increase: dict[SeriesKey, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, target: str, counters: dict[SeriesKey, float]) -> None:
        """One scrape of `target`; its first one is only a baseline."""
        previous = self._last.get(target)
        self._last[target] = counters
        if previous is None:
            return
        for key, value in counters.items():
            before = previous.get(key, 0.0)
            self._increase[key] += value - before if value >= before else value

    def stats(self, alias: str, version: str) -> VersionStats:
        def total(what: str) -> float:
            return self._increase.get((what, alias, version, "", ""), 0.0)

        def buckets(what: str) -> tuple[tuple[float, float], ...]:
            return tuple(
                sorted(
                    (float(le), count)
                    for (kind, a, v, _, le), count in self._increase.items()
                    if (kind, a, v) == (what, alias, version)
                )
            )

        return VersionStats(
            requests=total("requests"),
            errors=total("errors"),
            latency=_monotonic(buckets("latency")),
            first_token=_monotonic(buckets("first_token")),
        )


def _monotonic(buckets: Iterable[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Cumulative counts never decrease with `le`; increases of separately reset buckets could, by a few."""
    out, highest = [], 0.0
    for bound, count in buckets:
        highest = max(highest, count)
        out.append((bound, highest))
    return tuple(out) if out and out[-1][0] == math.inf else ()
