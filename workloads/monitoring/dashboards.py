"""The Grafana dashboards for training, inference, and the platform's controllers: their panels and queries, written
in the JSON model of `workloads.monitoring.grafana` (schemaVersion 39), and each as its ConfigMap holds it.

Each dashboard has a `datasource` variable (any Prometheus) and a `namespace` variable (the namespaces where the
dashboard's own metrics exist), and every panel query selects `namespace="$namespace"`, so one dashboard serves
every stack in a cluster. The queries use the raw series, not recording rules, so the dashboards work whether or
not the platform's rules are loaded. tests/observability/test_dashboards.py checks every query with promtool's
PromQL parser and every metric name against what the platform exports.
"""

from __future__ import annotations

import json
from typing import Any

from workloads.monitoring.grafana import DATASOURCE, NS, RATE, Panel, Query, build_dashboard


def _q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def _job_variable() -> dict[str, Any]:
    query = f"label_values(trainer_step{{{NS}}}, job_name)"
    return {
        "name": "job",
        "label": "Training Job",
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "job"},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "current": {},
        "options": [],
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
    }


def training_dashboard() -> dict[str, Any]:
    sel = f'{NS}, job_name=~"$job"'
    by = "by (job_name)"
    quantile = (
        "histogram_quantile({q}, sum by (job_name, le) (rate(trainer_step_duration_seconds_bucket{{{sel}}}[{r}])))"
    )
    panels = [
        Panel(
            "Loss",
            (
                _q(f"avg {by} (trainer_train_loss{{{sel}}})", "train {{job_name}}"),
                _q(f"avg {by} (trainer_val_loss{{{sel}}})", "val {{job_name}}"),
            ),
            width=24,
        ),
        Panel("Tokens per second", (_q(f"max {by} (trainer_tokens_per_second{{{sel}}})", "{{job_name}}"),)),
        Panel(
            "Step time p50 / p95",
            (
                _q(quantile.format(q=0.5, sel=sel, r=RATE), "p50 {{job_name}}"),
                _q(quantile.format(q=0.95, sel=sel, r=RATE), "p95 {{job_name}}"),
            ),
            unit="s",
        ),
        Panel(
            "Time per step phase",
            (_q(f"avg by (phase) (rate(trainer_step_phase_seconds_total{{{sel}}}[{RATE}]))", "{{phase}}"),),
            unit="percentunit",
            stacked=True,
            description="Share of wall time in data loading, forward/backward, optimizer and gradient sync.",
        ),
        Panel(
            "Progress",
            (_q(f"max {by} (trainer_step{{{sel}}}) / max {by} (trainer_max_steps{{{sel}}})", "{{job_name}}"),),
            unit="percentunit",
        ),
        Panel(
            "ETA",
            (
                _q(
                    f"(max {by} (trainer_max_steps{{{sel}}}) - max {by} (trainer_step{{{sel}}}))\n"
                    f"/ max {by} (rate(trainer_steps_total{{{sel}}}[{RATE}]))",
                    "{{job_name}}",
                ),
            ),
            unit="s",
            kind="stat",
            width=6,
            description="Steps left divided by the current step rate.",
        ),
        Panel("World size", (_q(f"max {by} (trainer_world_size{{{sel}}})", "{{job_name}}"),), kind="stat", width=6),
        Panel(
            "Resumed from step",
            (_q(f"max {by} (trainer_resumed_from_step{{{sel}}})", "{{job_name}}"),),
            description="Changes each time the gang restarts from a checkpoint.",
        ),
        Panel(
            "Restarts (operator, in range)",
            (_q(f"sum by (cause) (increase(trainop_restarts_total{{{NS}}}[$__range]))", "{{cause}}"),),
            kind="stat",
            width=6,
        ),
        Panel(
            "Pods of the Job",
            (_q(f"count {by} (trainer_step{{{sel}}})", "{{job_name}}"),),
            kind="stat",
            width=6,
        ),
        Panel(
            "Checkpoint save time p95",
            (
                _q(
                    "histogram_quantile(0.95, sum by (job_name, le) "
                    f"(rate(trainer_checkpoint_save_duration_seconds_bucket{{{sel}}}[{RATE}])))",
                    "{{job_name}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Checkpoint size",
            (_q(f"max {by} (trainer_checkpoint_size_bytes{{{sel}}})", "{{job_name}}"),),
            unit="bytes",
        ),
        Panel(
            "Checkpoints written",
            (_q(f"max {by} (increase(trainer_checkpoints_total{{{sel}}}[1h]))", "{{job_name}} per hour"),),
        ),
        Panel(
            "Seconds since the last step",
            (_q(f"time() - max {by} (trainer_last_step_timestamp_seconds{{{sel}}})", "{{job_name}}"),),
            unit="s",
            description="What the TrainingStalled alert watches.",
        ),
    ]
    return build_dashboard("ml-platform-training", "ml-platform / Training", ["training"], "trainer_step", panels,
                      [_job_variable()])  # fmt: skip


def inference_dashboard() -> dict[str, Any]:
    user = f'{NS}, route=~"/v1/.*"'
    served = f'{user}, alias!=""'  # requests a model version served (the canary panels compare versions)
    by_version = "sum by (version, alias) (rate(inference_requests_total{{{sel}}}[{r}]))"
    quantile = "histogram_quantile({q}, sum by (le) (rate(inference_request_duration_seconds_bucket{{{sel}}}[{r}])))"
    batch = "histogram_quantile({q}, sum by (le) (rate(inference_batch_size_bucket{{{sel}}}[{r}])))"
    panels = [
        Panel(
            "Requests per second by status",
            (_q(f"sum by (status) (rate(inference_requests_total{{{user}}}[{RATE}]))", "{{status}}"),),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Latency p50 / p95 / p99 (completions)",
            tuple(_q(quantile.format(q=q, sel=user, r=RATE), f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)),
            unit="s",
        ),
        Panel(
            "Batch size",
            (
                _q(batch.format(q=0.5, sel=NS, r=RATE), "p50"),
                _q(batch.format(q=0.95, sel=NS, r=RATE), "p95"),
                _q(
                    f"sum(rate(inference_batch_size_sum{{{NS}}}[{RATE}]))"
                    f" / sum(rate(inference_batch_size_count{{{NS}}}[{RATE}]))",
                    "mean",
                ),
            ),
        ),
        Panel(
            "Queue depth and running sequences",
            (
                _q(f"sum(inference_queue_depth{{{NS}}})", "waiting"),
                _q(f"sum(inference_active_sequences{{{NS}}})", "running"),
            ),
        ),
        Panel(
            "Tokens per second",
            (
                _q(f"sum(rate(inference_generated_tokens_total{{{NS}}}[{RATE}]))", "generated"),
                _q(f"sum(rate(inference_prompt_tokens_total{{{NS}}}[{RATE}]))", "prompt"),
            ),
        ),
        Panel(
            "Refused (429) per second by reason",
            (_q(f"sum by (reason) (rate(inference_rejected_total{{{NS}}}[{RATE}]))", "{{reason}}"),),
            unit="reqps",
        ),
        Panel(
            "Canary: 5xx ratio by version (completions)",
            (
                _q(
                    by_version.format(sel=f'{served}, status=~"5.."', r=RATE)
                    + " / "
                    + by_version.format(sel=served, r=RATE),
                    "v{{version}} ({{alias}})",
                ),
            ),
            unit="percentunit",
            description="Champion and challenger side by side: what a promotion or rollback decision compares.",
        ),
        Panel(
            "Canary: p95 latency and time to first token by version",
            (
                _q(
                    "histogram_quantile(0.95, sum by (version, alias, le) (rate(inference_request_duration_seconds_"
                    f"bucket{{{served}}}[{RATE}])))",
                    "latency v{{version}} ({{alias}})",
                ),
                _q(
                    "histogram_quantile(0.95, sum by (version, alias, le) (rate(inference_first_token_duration_"
                    f"seconds_bucket{{{NS}}}[{RATE}])))",
                    "first token v{{version}} ({{alias}})",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Loaded model version",
            (
                _q(
                    f"count by (model, version, alias) (inference_model_loaded{{{NS}}} == 1)",
                    "{{model}} v{{version}} ({{alias}})",
                ),
            ),
            kind="table",
            description="Pods serving each registered model version as champion or challenger (two champion rows "
            "while a new version rolls in).",
        ),
        Panel(
            "Ready pods",
            (_q(f"sum(inference_ready{{{NS}}})", "ready"),),
            kind="stat",
            width=6,
        ),
        Panel(
            "Model swaps and load failures (in range)",
            (
                _q(f"sum(increase(inference_model_swaps_total{{{NS}}}[$__range]))", "swaps"),
                _q(f"sum(increase(inference_model_load_failures_total{{{NS}}}[$__range]))", "load failures"),
            ),
            kind="stat",
            width=6,
        ),
    ]
    return build_dashboard(
        "ml-platform-inference", "ml-platform / Inference", ["inference"], "inference_ready", panels, []
    )


def controllers_dashboard() -> dict[str, Any]:
    """The TrainingJob operator, the task launcher and MLflow."""
    panels = [
        Panel(
            "Operator: reconciliations per second by result",
            (_q(f"sum by (result) (rate(trainop_reconciliations_total{{{NS}}}[{RATE}]))", "{{result}}"),),
            unit="ops",
        ),
        Panel(
            "Operator: reconcile time p50 / p95",
            tuple(
                _q(
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(trainop_reconcile_duration_seconds_bucket{{{NS}}}[{RATE}])))",
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.95)
            ),
            unit="s",
        ),
        Panel(
            "TrainingJobs by phase",
            (_q(f"sum by (phase) (trainop_trainingjobs{{{NS}}})", "{{phase}}"),),
            stacked=True,
        ),
        Panel(
            "Gang restarts by cause",
            (_q(f"sum by (cause) (increase(trainop_restarts_total{{{NS}}}[1h]))", "{{cause}} per hour"),),
        ),
        Panel(
            "Launcher: requests per second by status",
            (_q(f"sum by (status) (rate(skyrun_requests_total{{{NS}}}[{RATE}]))", "{{status}}"),),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "Launcher: latency p95 by route",
            (
                _q(
                    "histogram_quantile(0.95, sum by (route, le) "
                    f"(rate(skyrun_request_duration_seconds_bucket{{{NS}}}[{RATE}])))",
                    "{{route}}",
                ),
            ),
            unit="s",
        ),
        Panel(
            "Launcher: tasks submitted and refused",
            (
                _q(f"sum(rate(skyrun_tasks_submitted_total{{{NS}}}[{RATE}]))", "submitted"),
                _q(
                    f"sum by (reason) (rate(skyrun_submit_rejections_total{{{NS}}}[{RATE}]))",
                    "refused: {{reason}}",
                ),
            ),
            unit="ops",
        ),
        Panel(
            "Launcher: authentication failures by reason",
            (_q(f"sum by (reason) (rate(skyrun_auth_failures_total{{{NS}}}[{RATE}]))", "{{reason}}"),),
            unit="ops",
        ),
        Panel(
            "MLflow: requests per second by status",
            (_q(f"sum by (status) (rate(mlflow_http_request_total{{{NS}}}[{RATE}]))", "{{status}}"),),
            unit="reqps",
            stacked=True,
        ),
        Panel(
            "MLflow: latency p95",
            (
                _q(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(mlflow_http_request_duration_seconds_bucket{{{NS}}}[{RATE}])))",
                    "p95",
                ),
            ),
            unit="s",
        ),
    ]
    return build_dashboard(
        "ml-platform-controllers",
        "ml-platform / Operator, launcher, MLflow",
        ["operator", "launcher", "mlflow"],
        "trainop_trainingjobs",
        panels,
        [],
    )


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard by file name (the key in its ConfigMap)."""
    return {
        "ml-platform-training.json": training_dashboard(),
        "ml-platform-inference.json": inference_dashboard(),
        "ml-platform-controllers.json": controllers_dashboard(),
    }


def dashboard_json(dashboard: dict[str, Any]) -> str:
    """A dashboard as Grafana's sidecar reads it from a ConfigMap (stable key order, so equal dashboards give
    equal ConfigMaps)."""
    return json.dumps(dashboard, indent=2, sort_keys=True)


def panel_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
