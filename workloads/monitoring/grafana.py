"""The Grafana JSON model (schemaVersion 39) the platform's dashboards are written in: a panel and its queries as
typed values (`Panel`, `Query`), the `datasource` and `namespace` variables every dashboard has, and
`build_dashboard`, which lays the panels out left to right in rows of the 24-column grid. The selector `NS` and the
range `RATE` are what every panel query uses to follow those variables. No dashboard is defined here: they are in
`workloads.monitoring.dashboards`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace="$namespace"'
RATE = "$__rate_interval"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    """PromQL (may use $namespace, $job and $__rate_interval)."""
    legend: str = ""
    """Legend format, e.g. {{job_name}}."""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    """Grafana unit id (s, bytes, percentunit, reqps, short)."""
    kind: str = "timeseries"
    """timeseries, stat or table."""
    width: int = 12
    height: int = 8
    description: str = ""
    stacked: bool = False


def _variables(metric: str, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    namespace = {
        "name": "namespace",
        "label": "Namespace",
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": f"label_values({metric}, namespace)", "refId": "namespace"},
        "definition": f"label_values({metric}, namespace)",
        "refresh": 2,
        "sort": 1,
        "current": {},
        "options": [],
        "includeAll": False,
        "multi": False,
    }
    datasource = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "options": [],
        "refresh": 1,
        "hide": 0,
    }
    return {"list": [datasource, namespace, *(extra or [])]}


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if panel.kind == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if panel.stacked:
            custom["stacking"] = {"mode": "normal", "group": "A"}
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": q.expr,
                "legendFormat": q.legend,
                "range": panel.kind != "table",
                "instant": panel.kind == "table",
            }
            for i, q in enumerate(panel.queries)
        ],
    }
    if panel.kind in ("stat", "table"):
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return body


def build_dashboard(
    uid: str, title: str, tags: list[str], metric: str, panels: list[Panel], extra_vars: list[dict[str, Any]]
) -> dict[str, Any]:
    """A dashboard's JSON model: `panels` laid out in order, `metric`'s namespaces as the `namespace` variable's
    values, and `extra_vars` after the `datasource` and `namespace` variables."""
    laid_out, x, y, row_height = [], 0, 0, 0
    for i, panel in enumerate(panels, start=1):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        laid_out.append(_panel(panel, i, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": uid,
        "title": title,
        "tags": ["ml-platform", *tags],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "templating": _variables(metric, extra_vars),
        "annotations": {"list": []},
        "panels": laid_out,
    }
