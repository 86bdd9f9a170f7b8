"""The Grafana dashboards and the alert rules against what exists: every dashboard query is valid PromQL for
Prometheus's own parser (promtool), and every metric name the dashboards and rules use is one the platform's code
exports (read from its prometheus_client registries), MLflow's exporter serves, or kube-state-metrics / the kubelet
provide."""

from __future__ import annotations

import re
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from tests.observability.promtools import check_promql
from workloads.monitoring.dashboards import dashboards, panel_queries
from workloads.monitoring.rules import alerts

# Grafana's variables, as a dashboard viewer would have them: PromQL knows none of them.
VARIABLES = {"$namespace": "ml-platform", "$job": ".*", "$__rate_interval": "1m", "$__range": "1h"}
# MLflow's server (`--expose-prometheus`, prometheus_flask_exporter with prefix "mlflow"), as a real mlflow 3.17
# server served them: mlflow_http_request_total{method,status}, ..._duration_seconds{method,mlflow_version,status}.
MLFLOW = {
    "mlflow_http_request_total",
    "mlflow_http_request_exceptions_total",
    *(f"mlflow_http_request_duration_seconds_{s}" for s in ("bucket", "sum", "count")),
}
# kube-state-metrics and the kubelet (kube-prometheus-stack scrapes both).
KUBERNETES = {
    "kube_job_status_active",
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_status_waiting_reason",
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def substituted(expr: str) -> str:
    # Longest names first: $__range must not eat part of another variable.
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside strings, label matchers, ranges and grouping
    clauses that are neither function calls nor keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def registry_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry exposes (counters with _total, histograms' _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    return {f"{family.name}{s}" for family in registry.collect() for s in suffixes.get(family.type, ("",))}


def exported_by_the_platform() -> set[str]:
    import inference.metrics
    import skyrun.metrics
    import trainer.metrics
    import trainop.metrics  # noqa: F401  (module-level metrics in the default registry)

    return (
        registry_names(trainer.metrics.TrainerMetrics(rank=0).registry)
        | registry_names(inference.metrics.Metrics().registry)
        | registry_names(skyrun.metrics.Metrics().registry)
        | registry_names(prometheus_client.REGISTRY)
    )


def all_queries() -> list[tuple[str, str]]:
    """(where, expr) of every panel query and every variable's metric selector."""
    found = []
    for file_name, dashboard in dashboards().items():
        found += [(f"{file_name} panel", q) for q in panel_queries(dashboard)]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                inner = re.fullmatch(r"label_values\((.+), *\w+\)", variable["query"]["query"])
                assert inner, variable
                found.append((f"{file_name} ${variable['name']}", inner.group(1)))
    return found


@pytest.mark.prometheus
def test_every_dashboard_query_is_valid_promql(promtool: Path) -> None:
    errors = {f"{where}: {expr}": check_promql(promtool, substituted(expr)) for where, expr in all_queries()}
    assert {k: v for k, v in errors.items() if v} == {}
    assert len(errors) >= 30


@pytest.mark.prometheus
def test_the_promql_check_rejects_a_broken_query(promtool: Path) -> None:
    assert check_promql(promtool, substituted('sum by (le (rate(x{namespace="$namespace"}[5m]))')) is not None
    # Unsubstituted Grafana variables are not PromQL either: the substitution above is needed.
    assert check_promql(promtool, "rate(x[$__rate_interval])") is not None


def test_every_metric_used_exists() -> None:
    known = exported_by_the_platform() | MLFLOW | KUBERNETES
    used = {name: where for where, expr in all_queries() for name in metric_names(expr)}
    used |= {name: a.name for a in alerts("ml-platform") for name in metric_names(a.expr)}
    assert {name: where for name, where in used.items() if name not in known} == {}
    # Every component's metrics appear somewhere (the dashboards cover each part of the platform).
    for prefix in ("trainer_", "inference_", "trainop_", "skyrun_", "mlflow_"):
        assert any(n.startswith(prefix) for n in used), prefix


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{route=~"/v1/.*", x="y(z)"}[5m])))\n'
        "/ on (job_name) group_left max without (rank) (b_total offset 5m) > bool 0.5 and c and time() - d"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
    assert metric_names("1e3 * x") == {"x"}


def test_every_dashboard_has_unique_panel_ids_and_fits_the_grid() -> None:
    for dashboard in dashboards().values():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            assert [t["refId"] for t in panel["targets"]] == [chr(ord("A") + i) for i in range(len(panel["targets"]))]
