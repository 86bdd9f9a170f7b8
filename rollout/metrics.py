"""The gate's own Prometheus metrics, in their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class GateMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "rollout_decisions",
            "Decisions recorded in MLflow, by decision: promoted or rolled_back.",
            ["decision"],
            registry=self.registry,
        )
        self.window_elapsed = Gauge(
            "rollout_window_elapsed_seconds",
            "Time since the window of the challenger under watch began (0 when none is watched).",
            registry=self.registry,
        )
        self.window_requests = Gauge(
            "rollout_window_requests",
            "Requests served in the window, by alias role (champion, challenger).",
            ["alias"],
            registry=self.registry,
        )
        self.error_ratio = Gauge(
            "rollout_error_ratio",
            "Share of the window's requests answered 5xx, by alias role.",
            ["alias"],
            registry=self.registry,
        )
        self.p95_latency = Gauge(
            "rollout_p95_latency_seconds",
            "p95 request latency over the window, by alias role (NaN without observations).",
            ["alias"],
            registry=self.registry,
        )
        self.p95_first_token = Gauge(
            "rollout_p95_first_token_seconds",
            "p95 time to first token of streams over the window, by alias role (NaN without observations).",
            ["alias"],
            registry=self.registry,
        )
        self.scrape_failures = Counter(
            "rollout_scrape_failures",
            "Scrapes of an inference replica's /metrics that failed.",
            registry=self.registry,
        )
        self.ticks = Counter(
            "rollout_ticks", "Rounds of reading the aliases, scraping and deciding.", registry=self.registry
        )
        self.last_tick = Gauge(
            "rollout_last_tick_timestamp_seconds",
            "Unix time of the end of the last round (the liveness probe's clock).",
            registry=self.registry,
        )
