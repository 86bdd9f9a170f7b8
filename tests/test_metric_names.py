"""Every metric family of the platform follows one naming convention (Prometheus': `<prefix>_<what>_<unit>`):
the component's prefix, counters exposed as `_total`, durations in seconds (histograms `_duration_seconds`), sizes
in bytes, help text, no `le`/`quantile` label outside histograms/summaries, histogram buckets ascending and
covering a sensible range. The families come from the real registries (labelled metrics get one probe child so
their buckets show), and the rules are shown to reject bad names."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from trainer.metrics import TrainerMetrics

PROBE = "naming-probe"
# Families of prometheus_client's own collectors (ProcessCollector, PlatformCollector, GCCollector): not ours.
STANDARD_PREFIXES = ("process_", "python_")
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LABEL = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")
# Name parts that are a unit other than the base unit (seconds, bytes) or a ratio spelled as a percentage.
BAD_UNITS = {
    "ms", "millis", "milliseconds", "us", "micros", "microseconds", "ns", "nanoseconds", "sec", "secs", "min",
    "mins", "minute", "minutes", "hour", "hours", "day", "days", "kb", "mb", "gb", "kib", "mib", "gib", "kilobytes",
    "megabytes", "gigabytes", "byte", "percent", "pct",
}  # fmt: skip
# A name ending in one of these measures time, so its unit must follow: `_duration_seconds`, not `_duration`.
TIME_WORDS = {"duration", "latency", "time", "elapsed", "age", "timeout", "interval", "delay", "uptime", "lag"}
TIME_IN_HELP = re.compile(r"\b(time|duration|latency|elapsed|how long|seconds)\b", re.IGNORECASE)
SIZE_WORDS = {"size", "memory", "disk", "storage"}
BYTES_IN_HELP = re.compile(r"\b(bytes|[KMGT]i?B|kilobytes|megabytes|gigabytes)\b")
# Names ending in a size word that count things rather than bytes (reviewed one by one).
COUNT_SIZES = {"inference_batch_size": "sequences in one decoding step", "trainer_world_size": "ranks"}


@dataclass
class Family:
    name: str
    type: str
    help: str
    labels: set[str] = field(default_factory=set)
    sample_names: set[str] = field(default_factory=set)
    buckets: list[float] = field(default_factory=list)
    exposition: str = ""
    """The family's lines of the text exposition (0.0.4: what Prometheus scrapes)."""


def families(registry: CollectorRegistry, prefix: str | None = None) -> list[Family]:
    """The registry's families (only those starting with `prefix` when given), each labelled metric with a probe
    child added for the collection and removed afterwards, so a histogram nobody observed yet shows its buckets."""
    # The registry lists its collectors only in a private attribute; prometheus_client has no public accessor.
    collectors = list(registry._collector_to_names.items())
    probes: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []
    for collector, names in collectors:
        if prefix and not any(n.startswith(prefix) for n in names):
            continue
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            values = tuple(PROBE for _ in collector._labelnames)
            collector.labels(*values)
            probes.append((collector, values))
    try:
        collected = list(registry.collect())
        text = generate_latest(registry).decode()
    finally:
        for collector, values in probes:
            collector.remove(*values)
    out = []
    for metric in collected:
        if (prefix and not metric.name.startswith(prefix)) or metric.name.startswith(STANDARD_PREFIXES):
            continue
        family = Family(metric.name, metric.type, metric.documentation)
        for sample in metric.samples:
            family.sample_names.add(sample.name)
            family.labels |= {k for k in sample.labels if not (k == "le" and sample.name.endswith("_bucket"))}
        if metric.type == "summary":
            family.labels.discard("quantile")
        first = next((s.labels for s in metric.samples if s.name.endswith("_bucket")), None)
        if metric.type == "histogram" and first is not None:
            rest = {k: v for k, v in first.items() if k != "le"}
            family.buckets = [
                float(s.labels["le"]) for s in metric.samples
                if s.name.endswith("_bucket") and {k: v for k, v in s.labels.items() if k != "le"} == rest
            ]  # fmt: skip
        family.exposition = "\n".join(line for line in text.splitlines() if _names_in(line) & family.sample_names)
        out.append(family)
    return out


def _names_in(line: str) -> set[str]:
    """The metric name a line of the text exposition is about (# HELP, # TYPE or a sample)."""
    parts = line.split()
    if line.startswith("# ") and len(parts) > 2:
        return {parts[2]}
    return {re.split(r"[{ ]", line, maxsplit=1)[0]} if line else set()


def problems(family: Family, prefix: str, required_labels: Iterable[str] = ()) -> Iterator[str]:
    name = family.name
    tokens = name.split("_")
    if not SNAKE.match(name):
        yield "not snake_case ([a-z0-9] words joined by single underscores)"
    if not name.startswith(prefix):
        yield f"does not start with the component's prefix {prefix!r}"
    if len(family.help.split()) < 2 or family.help.strip() == name:
        yield "has no help text that says what it measures"
    if bad := sorted(BAD_UNITS.intersection(tokens)):
        yield f"has a non-base unit {bad} in its name: use seconds, bytes or a 0..1 ratio"
    if family.type == "counter":
        series = family.sample_names - {f"{name}_created"}
        typed = re.findall(r"^# TYPE (\S+) counter$", family.exposition, re.MULTILINE)
        if not series or any(not n.endswith("_total") for n in series) or typed != [f"{name}_total"]:
            yield "is a counter whose exposed name does not end in _total"
    elif tokens[-1] in {"total", "count", "sum", "bucket", "created"}:
        yield f"is a {family.type} named like a counter or a histogram's series (_{tokens[-1]})"
    if tokens[-1] in TIME_WORDS or (TIME_IN_HELP.search(family.help) and tokens[-1] != "seconds"):
        yield "measures time but does not end in _seconds"
    if family.type == "histogram" and tokens[-1] == "seconds" and tokens[-2:-1] != ["duration"]:
        yield "is a histogram of durations not named <what>_duration_seconds"
    sized = tokens[-1] in SIZE_WORDS and name not in COUNT_SIZES
    if (sized or BYTES_IN_HELP.search(family.help)) and tokens[-1] != "bytes":
        yield "measures a size but does not end in _bytes"
    if family.type != "histogram" and "le" in family.labels:
        yield "has a label `le` outside a histogram"
    if family.type != "summary" and "quantile" in family.labels:
        yield "has a label `quantile` outside a summary"
    if bad_labels := sorted(label for label in family.labels if not LABEL.match(label) or label.startswith("__")):
        yield f"has malformed label names {bad_labels}"
    if missing := sorted(set(required_labels) - family.labels):
        yield f"lacks the labels {missing} every series of this component carries"
    if family.type == "histogram":
        yield from bucket_problems(family)


def bucket_problems(family: Family) -> Iterator[str]:
    bounds = family.buckets
    if not bounds or bounds[-1] != math.inf:
        yield "is a histogram without a +Inf bucket in its exposition"
        return
    finite = bounds[:-1]
    if any(b >= c for b, c in itertools.pairwise(finite)) or not finite:
        yield f"has buckets that are not strictly ascending: {finite}"
        return
    if len(finite) < 5:
        yield f"has {len(finite)} buckets: too coarse for quantiles (at least 5)"
    low, high = finite[0], finite[-1]
    unit = family.name.rsplit("_", 1)[-1]
    if unit == "seconds" and not (low <= 0.01 and high >= 10):
        yield f"has buckets {low}..{high} s: durations need 10 ms (or less) to 10 s (or more)"
    elif unit == "bytes" and not (low <= 2**20 and high >= 2**30):
        yield f"has buckets {low}..{high} bytes: sizes need 1 MiB (or less) to 1 GiB (or more)"
    elif unit not in ("seconds", "bytes") and not (low <= 1 and high >= 100 * max(low, 1e-9)):
        yield f"has buckets {low}..{high}: counts need 1 (or less) and two orders of magnitude"


# --- the platform's registries -----------------------------------------------------------------------------
def inference_registry() -> CollectorRegistry:
    from inference.metrics import Metrics

    return Metrics().registry


def skyrun_registry() -> CollectorRegistry:
    from skyrun.app import create_app
    from skyrun.settings import Settings

    # The app's own registry; no lifespan runs, so no Kubernetes client is made.
    return create_app(Settings(), client=object()).state.metrics.registry  # type: ignore[arg-type,no-any-return]


def rollout_registry() -> CollectorRegistry:
    from rollout.metrics import GateMetrics

    return GateMetrics().registry


def trainop_registry() -> CollectorRegistry:
    import trainop.metrics  # noqa: F401  (registers the operator's families in the default registry)

    return REGISTRY


@dataclass(frozen=True)
class Component:
    prefix: str
    registry: Callable[[], CollectorRegistry]
    shared_registry: bool = False
    """The default registry: only the families with the component's prefix are its own."""
    required_labels: tuple[str, ...] = ()
    expected: frozenset[str] = frozenset()
    """Families the metrics contract names (issue 16; the canary's of issue 27): present, by their collected name
    (counters without _total)."""


COMPONENTS = {
    "inference": Component("inference_", inference_registry, expected=frozenset({
        "inference_requests", "inference_request_duration_seconds", "inference_generated_tokens",
        "inference_prompt_tokens", "inference_batch_size", "inference_queue_depth", "inference_active_sequences",
        "inference_rejected", "inference_model_loaded", "inference_model_swaps", "inference_model_load_failures",
        "inference_ready", "inference_first_token_duration_seconds", "inference_model_polls",
        "inference_challenger_refusals"})),
    "skyrun": Component("skyrun_", skyrun_registry, expected=frozenset({
        "skyrun_requests", "skyrun_request_duration_seconds", "skyrun_tasks_submitted", "skyrun_submit_rejections",
        "skyrun_auth_failures"})),
    "rollout": Component("rollout_", rollout_registry, expected=frozenset({
        "rollout_decisions", "rollout_window_elapsed_seconds", "rollout_window_requests", "rollout_error_ratio",
        "rollout_p95_latency_seconds", "rollout_p95_first_token_seconds", "rollout_scrape_failures",
        "rollout_ticks", "rollout_last_tick_timestamp_seconds"})),
    "trainop": Component("trainop_", trainop_registry, shared_registry=True, expected=frozenset({
        "trainop_reconciliations", "trainop_trainingjobs", "trainop_restarts",
        "trainop_reconcile_duration_seconds"})),
    "trainer": Component("trainer_", lambda: TrainerMetrics(rank=0).registry, required_labels=("rank",),
        expected=frozenset({
        "trainer_step", "trainer_max_steps", "trainer_steps", "trainer_train_loss", "trainer_val_loss",
        "trainer_tokens_per_second", "trainer_step_duration_seconds", "trainer_step_phase_seconds",
        "trainer_checkpoint_save_duration_seconds", "trainer_checkpoint_size_bytes", "trainer_checkpoints",
        "trainer_resumed_from_step", "trainer_world_size", "trainer_last_step_timestamp_seconds"})),
}  # fmt: skip


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_metric_family_follows_the_naming_convention(component: str) -> None:
    spec = COMPONENTS[component]
    found = families(spec.registry(), spec.prefix if spec.shared_registry else None)
    bad = [f"{f.name} {p}" for f in found for p in problems(f, spec.prefix, spec.required_labels)]
    bad += [
        f"{name} is in the metrics contract but not in the registry" for name in spec.expected - {f.name for f in found}
    ]
    assert bad == [], "\n".join(sorted(bad))


def test_the_probe_children_are_removed() -> None:
    registry = skyrun_registry()
    families(registry)
    labelled = {v for f in registry.collect() for s in f.samples for v in s.labels.values()}
    assert PROBE not in labelled


class UnsortedHistogram(Collector):
    def collect(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(
            "skyrun_wait_duration_seconds", "Time waited for a slot.",
            buckets=[("0.5", 1), ("0.1", 1), ("1", 1), ("5", 1), ("10", 1), ("30", 2), ("+Inf", 2)], sum_value=3,
        )  # fmt: skip


def test_the_rules_reject_bad_names() -> None:
    registry = CollectorRegistry()
    Histogram("skyrun_reconcile_seconds", "Time of one reconciliation.", registry=registry)
    Gauge("skyrun_request_latency_ms", "Latency of the last request.", registry=registry)
    Gauge("skyrun_queue_total", "Requests in the queue.", registry=registry)
    Counter("trainop_submissions", "Submissions accepted.", registry=registry)
    Gauge("skyrun_cache_size", "Size of the token cache.", registry=registry)
    Gauge("skyrun_volume_capacity", "Capacity of a volume in GiB.", ["volume"], registry=registry)
    Counter("skyrun_lookups", "", registry=registry)
    Gauge("skyrun_lookup_buckets", "Lookups by bound.", ["le"], registry=registry)
    Gauge("skyrun_lookup_quantiles", "Lookups by quantile.", ["quantile"], registry=registry)
    Counter("skyrun_retry_wait", "Time spent waiting before retries.", registry=registry)
    Histogram("skyrun_submit_duration_seconds", "Time of one submission.", buckets=(0.5, 1, 2), registry=registry)
    Histogram("skyrun_batch_tasks", "Tasks in one batch.", buckets=(10, 20, 30, 40, 50), registry=registry)
    registry.register(UnsortedHistogram())
    Gauge("skyrun_slowest_request_seconds", "Longest request seen, in seconds.", registry=registry)  # a good one

    found = {f.name: list(problems(f, "skyrun_")) for f in families(registry)}
    flagged = {name for name, found_problems in found.items() if found_problems}
    assert flagged == set(found) - {"skyrun_slowest_request_seconds"}, found
    expect = {
        "skyrun_reconcile_seconds": "_duration_seconds",
        "skyrun_request_latency_ms": "non-base unit",
        "skyrun_queue_total": "named like a counter",
        "trainop_submissions": "prefix",
        "skyrun_cache_size": "_bytes",
        "skyrun_volume_capacity": "_bytes",
        "skyrun_lookups": "help text",
        "skyrun_lookup_buckets": "`le`",
        "skyrun_lookup_quantiles": "`quantile`",
        "skyrun_retry_wait": "_seconds",
        "skyrun_submit_duration_seconds": "10 ms",
        "skyrun_batch_tasks": "two orders of magnitude",
        "skyrun_wait_duration_seconds": "strictly ascending",
    }
    for name, words in expect.items():
        assert any(words in p for p in found[name]), (name, found[name])
