"""One gate round after another against a fake registry and replicas answering hand-written `/metrics`: the window
starts when a challenger is first seen, a decision is recorded before the aliases move, a version already decided
is never decided again, a change of the aliases between deciding and acting stops the action, failed scrapes are
counted and skipped."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import pytest

from rollout.decide import PROMOTE, ROLLBACK, WAIT, Thresholds
from rollout.gate import Gate
from rollout.metrics import GateMetrics
from rollout.registry import PROMOTED, ROLLED_BACK, Aliases
from rollout.targets import StaticTargets

LIMITS = Thresholds(window_s=10, min_requests=10, max_error_rate_increase=0.05, max_latency_ratio=2, max_ttft_ratio=2)


@dataclass
class FakeRegistry:
    champion: str | None = "1"
    challenger: str | None = "2"
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    before_act: list[Aliases] = field(default_factory=list)
    """Aliases answered instead of the real ones by the next reads (a person moving them meanwhile)."""

    def aliases(self) -> Aliases:
        if self.before_act:
            return self.before_act.pop(0)
        return Aliases(self.champion, self.challenger)

    def decision_of(self, version: str) -> str | None:
        return self.tags.get(version, {}).get("decision")

    def record(self, version: str, decision: str, reason: str) -> None:
        self.calls.append(f"record {version} {decision}")
        self.tags[version] = {"decision": decision, "reason": reason}

    def apply(self, version: str, decision: str) -> None:
        self.calls.append(f"apply {version} {decision}")
        if self.challenger != version:
            return
        if decision == PROMOTED:
            self.champion = version
        self.challenger = None


def exposition(counts: dict[tuple[str, str, str], int]) -> str:
    """`inference_requests_total` lines for {(alias, version, status): count}."""
    lines = ["# TYPE inference_requests_total counter"]
    for (alias, version, status), n in counts.items():
        labels = f'route="/v1/completions",status="{status}",version="{version}",alias="{alias}"'
        lines.append(f"inference_requests_total{{{labels}}} {n}")
    return "\n".join(lines) + "\n"


@dataclass
class Replicas:
    """What each target's /metrics answers now (a status code alone: that error)."""

    pages: dict[str, str | int] = field(default_factory=dict)

    def handle(self, request: httpx.Request) -> httpx.Response:
        page = self.pages[f"{request.url.scheme}://{request.url.netloc.decode()}"]
        return httpx.Response(page) if isinstance(page, int) else httpx.Response(200, text=page)


@dataclass
class Rig:
    registry: FakeRegistry
    replicas: Replicas
    gate: Gate
    metrics: GateMetrics
    now: list[float]


@pytest.fixture
def rig() -> Rig:
    registry, replicas, metrics, now = FakeRegistry(), Replicas(), GateMetrics(), [0.0]
    http = httpx.Client(transport=httpx.MockTransport(replicas.handle))
    targets = StaticTargets(("http://a:8000", "http://b:8000"))
    gate = Gate(registry, targets, LIMITS, http, metrics, clock=lambda: now[0])  # type: ignore[arg-type]
    return Rig(registry, replicas, gate, metrics, now)


def serve(rig: Rig, at: float, champion_ok: int, challenger_ok: int, challenger_5xx: int = 0) -> None:
    """Both replicas have served these totals so far (each), at time `at`."""
    rig.now[0] = at
    page = exposition(
        {("champion", "1", "200"): champion_ok, ("challenger", "2", "200"): challenger_ok,
         ("challenger", "2", "500"): challenger_5xx}
    )  # fmt: skip
    rig.replicas.pages = {"http://a:8000": page, "http://b:8000": page}


def test_the_window_starts_at_the_first_sight_and_a_healthy_challenger_is_promoted_after_it(rig: Rig) -> None:
    serve(rig, 100, champion_ok=1000, challenger_ok=500)  # history before the window: never counted
    assert rig.gate.tick().outcome == WAIT  # type: ignore[union-attr]
    serve(rig, 105, champion_ok=1050, challenger_ok=510)
    decision = rig.gate.tick()
    assert decision is not None and decision.outcome == WAIT, "20 requests, but the window is 10 s"
    assert "error rate 0.00 vs 0.00" in decision.reason and "20 challenger requests in 5 s" in decision.reason
    serve(rig, 110, champion_ok=1100, challenger_ok=520)
    decision = rig.gate.tick()
    assert decision is not None and decision.outcome == PROMOTE
    assert rig.registry.calls == ["record 2 promoted", "apply 2 promoted"], "recorded before the aliases move"
    assert (rig.registry.champion, rig.registry.challenger) == ("2", None)
    assert rig.registry.tags["2"]["reason"].endswith("over 40 challenger requests in 10 s")
    assert rig.metrics.decisions.labels(decision=PROMOTED)._value.get() == 1
    assert rig.gate.tick() is None, "nothing to watch once the challenger alias is gone"


def test_failures_roll_back_before_the_window_ends(rig: Rig) -> None:
    serve(rig, 0, champion_ok=0, challenger_ok=0)
    rig.gate.tick()
    serve(rig, 2, champion_ok=50, challenger_ok=3, challenger_5xx=3)
    decision = rig.gate.tick()
    assert decision is not None and decision.outcome == ROLLBACK
    assert decision.reason == "error rate 0.50 vs 0.00 (max increase 0.05) over 12 challenger requests in 2 s"
    assert (rig.registry.champion, rig.registry.challenger) == ("1", None)
    assert rig.registry.tags["2"]["decision"] == ROLLED_BACK


def test_a_version_already_decided_is_never_decided_again(rig: Rig) -> None:
    rig.registry.tags["2"] = {"decision": ROLLED_BACK, "reason": "an earlier gate"}
    serve(rig, 0, champion_ok=0, challenger_ok=0)
    assert rig.gate.tick() is None
    # The earlier gate died between its tags and the aliases: the recorded decision is carried out, not a new one.
    assert rig.registry.calls == ["apply 2 rolled_back"]
    assert rig.registry.challenger is None and rig.registry.tags["2"]["reason"] == "an earlier gate"


def test_an_alias_moved_between_deciding_and_acting_stops_the_action(rig: Rig) -> None:
    serve(rig, 0, champion_ok=0, challenger_ok=0)
    rig.gate.tick()
    serve(rig, 2, champion_ok=50, challenger_ok=0, challenger_5xx=10)
    # The round's first read sees the challenger; the read right before acting sees that a person moved it.
    rig.registry.before_act = [Aliases("1", "2"), Aliases("1", "3")]
    decision = rig.gate.tick()
    assert decision is not None and decision.outcome == ROLLBACK
    assert rig.registry.calls == [], "nothing recorded, no alias touched"


def test_a_moved_champion_restarts_the_window(rig: Rig) -> None:
    serve(rig, 0, champion_ok=0, challenger_ok=0)
    rig.gate.tick()
    serve(rig, 8, champion_ok=50, challenger_ok=10)
    rig.gate.tick()
    rig.registry.champion = "5"
    serve(rig, 12, champion_ok=60, challenger_ok=20)
    decision = rig.gate.tick()
    assert decision is not None and decision.outcome == WAIT
    assert decision.reason.startswith("0 challenger requests in 0 s"), "a new window, this scrape its baseline"


def test_a_failed_scrape_is_counted_and_the_other_targets_still_count(rig: Rig) -> None:
    serve(rig, 0, champion_ok=0, challenger_ok=0)
    rig.gate.tick()
    serve(rig, 3, champion_ok=10, challenger_ok=10)
    rig.replicas.pages["http://b:8000"] = 503
    decision = rig.gate.tick()
    assert decision is not None and "10 challenger requests in 3 s" in decision.reason, decision.reason
    assert rig.metrics.scrape_failures._value.get() == 1
    rig.replicas.pages["http://b:8000"] = "not { metrics"
    rig.gate.tick()
    assert rig.metrics.scrape_failures._value.get() == 2
