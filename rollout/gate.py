"""One round of the gate: read the aliases, scrape the replicas, decide, act once.

The window of a challenger starts when the gate first sees it beside the champion (that round's scrape is the
baseline) and starts again whenever either alias moves, or the gate restarts: nothing measured is kept outside the
process, so a restarted gate watches a challenger for a whole window again (its decision is never cut short)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import httpx

from rollout.decide import PROMOTE, WAIT, Decision, Thresholds, VersionStats, decide, histogram_quantile
from rollout.measure import Window, parse
from rollout.metrics import GateMetrics
from rollout.registry import PROMOTED, ROLLED_BACK, Registry
from rollout.targets import TargetProvider

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
"""The inference server's `alias` label values: the role a version plays, whatever the registry aliases are called."""


class Gate:
    def __init__(
        self,
        registry: Registry,
        targets: TargetProvider,
        thresholds: Thresholds,
        http: httpx.Client,
        metrics: GateMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.targets = targets
        self.thresholds = thresholds
        self.http = http
        self.metrics = metrics
        self.clock = clock
        self.watching: tuple[str, str] | None = None
        """(champion version, challenger version) under watch."""
        self.window: Window | None = None
        self.last_round_at = time.time()
        """Unix time the last round ended, failed ones included (the liveness probe's clock)."""

    def tick(self) -> Decision | None:
        """One round; the decision made in it (a wait included), or None when no challenger is under watch."""
        try:
            return self._tick()
        finally:
            self.last_round_at = time.time()
            self.metrics.ticks.inc()
            self.metrics.last_tick.set(self.last_round_at)

    def _tick(self) -> Decision | None:
        aliases = self.registry.aliases()
        champion, challenger = aliases.champion, aliases.challenger
        if champion is None or challenger is None or challenger == champion:
            self._forget()
            return None
        if (champion, challenger) != self.watching:
            if decided := self.registry.decision_of(challenger):
                # Decided before (by this gate before a restart, or another one): never again. Finish the action in
                # case it was cut short between the tag and the aliases; apply() does nothing if it was not.
                log.info("version %s was already %s: not decided again; aliases brought in line", challenger, decided)
                self.registry.apply(challenger, decided)
                self._forget()
                return None
            log.info("watching challenger version %s against champion version %s", challenger, champion)
            self.watching = (champion, challenger)
            self.window = Window(started_at=self.clock())
        assert self.window is not None
        self._scrape(self.window)
        elapsed = self.clock() - self.window.started_at
        mine = self.window.stats(CHALLENGER, challenger)
        theirs = self.window.stats(CHAMPION, champion)
        self._observe(elapsed, mine, theirs)
        decision = decide(theirs, mine, elapsed, self.thresholds)
        if decision.outcome == WAIT:
            log.debug("version %s: wait: %s", challenger, decision.reason)
            return decision
        self._act(champion, challenger, decision)
        return decision

    def _scrape(self, window: Window) -> None:
        for target in self.targets.targets():
            try:
                response = self.http.get(f"{target}/metrics")
                response.raise_for_status()
                counters = parse(response.text)
            except (httpx.HTTPError, ValueError) as err:
                self.metrics.scrape_failures.inc()
                log.warning("scrape of %s/metrics failed (skipped this round): %s", target, err)
                continue
            window.add(target, counters)

    def _act(self, champion: str, challenger: str, decision: Decision) -> None:
        # Re-read right before acting: a version another gate (or a person) decided meanwhile is left alone.
        now = self.registry.aliases()
        if (now.champion, now.challenger) != (champion, challenger) or self.registry.decision_of(challenger):
            log.info("version %s: %s not applied: the aliases or its decision changed meanwhile", challenger,
                     decision.outcome)  # fmt: skip
            self._forget()
            return
        recorded = PROMOTED if decision.outcome == PROMOTE else ROLLED_BACK
        self.registry.record(challenger, recorded, decision.reason)
        self.registry.apply(challenger, recorded)
        self.metrics.decisions.labels(decision=recorded).inc()
        log.warning("version %s %s (champion was %s): %s", challenger, recorded, champion, decision.reason)
        self._forget()

    def _observe(self, elapsed: float, challenger: VersionStats, champion: VersionStats) -> None:
        self.metrics.window_elapsed.set(elapsed)
        for role, stats in ((CHALLENGER, challenger), (CHAMPION, champion)):
            self.metrics.window_requests.labels(alias=role).set(stats.requests)
            self.metrics.error_ratio.labels(alias=role).set(stats.error_rate)
            for gauge, buckets in (
                (self.metrics.p95_latency, stats.latency),
                (self.metrics.p95_first_token, stats.first_token),
            ):
                value = histogram_quantile(self.thresholds.quantile, buckets)
                gauge.labels(alias=role).set(math.nan if value is None else value)

    def _forget(self) -> None:
        self.watching = None
        self.window = None
        self.metrics.window_elapsed.set(0)
