"""From scrapes to the window's figures: the inference server's real exposition is parsed, increases are added up
per (alias, version) over targets, counter resets and targets that come and go are handled as documented."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from inference.metrics import Metrics
from rollout.measure import Window, parse

INF = math.inf


def exposition() -> str:
    """The inference server's own metrics registry (the contract the gate reads over HTTP)."""
    metrics = Metrics()
    completions = "/v1/completions"
    for status, n in (("200", 7), ("500", 3), ("429", 2)):
        metrics.requests.labels(route=completions, status=status, version="4", alias="challenger").inc(n)
    metrics.requests.labels(route=completions, status="200", version="3", alias="champion").inc(20)
    metrics.requests.labels(route="/readyz", status="200", version="", alias="").inc(50)
    for seconds in (0.02, 0.02, 0.3):
        metrics.latency.labels(route=completions, version="4", alias="challenger").observe(seconds)
    metrics.first_token.labels(version="3", alias="champion").observe(0.007)
    return generate_latest(metrics.registry).decode()


def test_the_inference_servers_exposition_is_read_by_alias_and_version() -> None:
    counters = parse(exposition())
    assert counters[("requests", "challenger", "4", "", "")] == 12
    assert counters[("errors", "challenger", "4", "", "")] == 3, "only 5xx are errors (429 is not)"
    assert counters[("requests", "champion", "3", "", "")] == 20
    assert counters[("latency", "challenger", "4", "", "0.025")] == 2
    assert counters[("latency", "challenger", "4", "", "+Inf")] == 3
    assert counters[("first_token", "champion", "3", "", "0.01")] == 1
    assert not any(alias == "" for _, alias, *_ in counters), "requests no version served are left out"


def requests(n: float, errors: float = 0.0) -> dict:
    return {("requests", "challenger", "4", "", ""): n, ("errors", "challenger", "4", "", ""): errors}


def test_the_first_scrape_is_the_baseline_and_increases_add_up_over_targets() -> None:
    window = Window(started_at=0)
    window.add("a", requests(100, 5))
    window.add("b", requests(40))
    assert window.stats("challenger", "4").requests == 0, "what was served before the window does not count"
    window.add("a", requests(130, 8))
    window.add("b", requests(50, 1))
    stats = window.stats("challenger", "4")
    assert (stats.requests, stats.errors) == (40, 4)  # a: 30 and 3, b: 10 and 1


def test_a_reset_counter_counts_its_new_value_from_zero() -> None:
    window = Window(started_at=0)
    window.add("a", requests(10))
    window.add("a", requests(15))  # +5
    window.add("a", requests(3))  # the pod restarted: +3
    window.add("a", requests(7))  # +4
    assert window.stats("challenger", "4").requests == 12


def test_targets_that_appear_start_from_their_first_scrape_and_those_that_leave_keep_their_share() -> None:
    window = Window(started_at=0)
    window.add("a", requests(10))
    window.add("a", requests(20))  # +10
    window.add("new", requests(500))  # a replica seen for the first time: baseline only
    window.add("new", requests(506))  # +6
    # "a" is gone (scaled down): the 10 it served stay.
    window.add("new", requests(510))  # +4
    assert window.stats("challenger", "4").requests == 20


def test_a_series_new_on_a_known_target_counts_from_zero() -> None:
    window = Window(started_at=0)
    window.add("a", {("requests", "champion", "3", "", ""): 50})
    window.add("a", {("requests", "champion", "3", "", ""): 60, **requests(9, 1)})  # the challenger's first requests
    assert window.stats("challenger", "4").requests == 9
    assert window.stats("champion", "3").requests == 10


def test_histogram_buckets_become_cumulative_increases() -> None:
    def buckets(b1: float, b2: float, inf: float) -> dict:
        return {("latency", "champion", "3", "", le): v for le, v in (("0.1", b1), ("0.5", b2), ("+Inf", inf))}

    window = Window(started_at=0)
    window.add("a", buckets(5, 8, 10))
    window.add("a", buckets(9, 20, 30))
    assert window.stats("champion", "3").latency == ((0.1, 4), (0.5, 12), (INF, 20))
    window.add("a", buckets(1, 1, 2))  # reset
    assert window.stats("champion", "3").latency == ((0.1, 5), (0.5, 13), (INF, 22))
    assert window.stats("champion", "9").latency == (), "another version has none"


@pytest.mark.parametrize("bad", ["not metrics at all {", 'inference_requests_total{alias="x" 1\n'])
def test_unparseable_text_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse(bad)


def test_samples_are_read_whatever_family_the_text_puts_them_in() -> None:
    sample = 'inference_requests_total{route="/v1/completions",status="503",version="4",alias="challenger"} 2\n'
    for header in ("", "# TYPE inference_requests_total counter\n", "# TYPE inference_requests counter\n"):
        assert parse(header + sample)[("errors", "challenger", "4", "", "")] == 2, header
