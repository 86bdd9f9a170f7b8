"""The platform's alerts as data: a PrometheusRule `spec` (Prometheus Operator) or the same groups as a plain
Prometheus rule file (`rule_file`, what `promtool check rules` and a Prometheus without the operator read).

Every selector is pinned to one namespace, so two stacks in one cluster never alert on each other's series.
Series labels come from the scrape (`namespace`, `pod`, `container`), from the trainer (`rank`), from the
PodMonitor's relabelling (`job_name`, see `scrape.py`) and from kube-state-metrics / the kubelet.

TrainingStalled joins the trainer's `trainer_last_step_timestamp_seconds` with kube-state-metrics'
`kube_job_status_active` on (namespace, job_name): both sides carry both labels (the trainer's through the
PodMonitor relabelling of the pod's `job-name` label), so the join matches exactly one Job. The newest step of
any rank within the last hour counts (`max_over_time`, then `max by`), so a gang restart, whose new pods are new
series, neither hides the stall nor raises a false one; a Job that is no longer active drops out of the join.
tests/observability/test_rules.py runs every alert through `promtool test rules`, firing and not firing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

COMPLETIONS_ROUTES = "/v1/.*"
"""Routes that are user traffic (probes and /metrics are not: a 503 from /readyz while a model loads is no
error)."""
STEP_LOOKBACK = "1h"
"""How far back the newest step of a run is looked for (covers a gang restart, whose pods are new series)."""
RUNBOOK_DOC = "docs/observability.md"


@dataclass(frozen=True)
class AlertThresholds:
    """The tunable numbers of the alerts (stack config keys in parentheses)."""

    training_stall_minutes: int = 15
    """Minutes without a completed step, while the Job is active, before TrainingStalled fires
    (alertTrainingStallMinutes)."""
    inference_p99_seconds: float = 10.0
    """p99 request latency of the completions routes over 5 minutes, in seconds (alertInferenceP99Seconds)."""
    inference_5xx_ratio: float = 0.05
    """Share of completions requests answered 5xx over 5 minutes (alertInference5xxPercent / 100)."""
    inference_429_ratio: float = 0.10
    """Share of completions requests refused with 429 (at capacity) over 5 minutes
    (alertInference429Percent / 100)."""
    inference_429_minutes: int = 15
    """How long the 429 share must stay above its threshold: short bursts are the queue doing its job
    (alertInference429Minutes)."""
    volume_free_ratio: float = 0.10
    """Free share of a PersistentVolumeClaim below which PersistentVolumeNearlyFull fires
    (alertVolumeFreePercent / 100)."""


@dataclass(frozen=True)
class Alert:
    """One alerting rule."""

    name: str
    """Alert name."""
    expr: str
    """PromQL; every series it returns is one firing alert."""
    for_: str
    """How long the expression must hold before the alert fires."""
    severity: str
    """warning or critical."""
    component: str
    """training, inference or platform."""
    summary: str
    """One line; may use {{ $labels.x }} and {{ $value }}."""
    description: str
    """What is wrong and what it costs."""
    runbook: str
    """What to look at first."""
    extra_labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "component": self.component, **self.extra_labels},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook": f"{self.runbook} (see {RUNBOOK_DOC}#{self.name.lower()})",
            },
        }


def _num(value: float) -> str:
    """A threshold as PromQL reads it (no float noise such as 0.1 -> 0.1000000001)."""
    return format(value, "g")


def alerts(namespace: str, t: AlertThresholds | None = None) -> list[Alert]:
    """Every alert of the platform for the stack in `namespace`."""
    t = t or AlertThresholds()
    ns = f'namespace="{namespace}"'
    completions = f'{ns}, route=~"{COMPLETIONS_ROUTES}"'
    stall_s = t.training_stall_minutes * 60
    return [
        Alert(
            name="TrainingStalled",
            expr=(
                f"(time() - max by (namespace, job_name) "
                f"(max_over_time(trainer_last_step_timestamp_seconds{{{ns}}}[{STEP_LOOKBACK}]))) > {stall_s}\n"
                f"and on (namespace, job_name) (kube_job_status_active{{{ns}}} > 0)"
            ),
            for_="2m",
            severity="warning",
            component="training",
            summary="Training Job {{ $labels.job_name }} has completed no step for {{ $value | humanizeDuration }}",
            description=(
                f"The Job is active but no rank has finished a step for more than {t.training_stall_minutes} "
                "minutes: a hung collective, a rank waiting for a peer that never came, or a stuck data loader. "
                "The GPUs are held and no progress is made."
            ),
            runbook=(
                "kubectl get pods -l job-name=<job>; read the logs of every rank (a rank stuck in a collective "
                "waits for one that died or never started); deleting the pods restarts the gang from its last "
                "checkpoint"
            ),
        ),
        Alert(
            name="TrainingLossNaN",
            expr=(
                f"(trainer_train_loss{{{ns}}} != trainer_train_loss{{{ns}}})\n"
                f"or (trainer_val_loss{{{ns}}} != trainer_val_loss{{{ns}}})"
            ),
            for_="1m",
            severity="critical",
            component="training",
            summary="Training loss of {{ $labels.job_name }} (rank {{ $labels.rank }}) is NaN",
            description=(
                "A loss is NaN (only NaN is unequal to itself): the run diverged and every further step is wasted."
            ),
            runbook=(
                "stop the run; resume from the last checkpoint before the divergence with a lower learning rate "
                "or gradient clipping"
            ),
        ),
        Alert(
            name="InferenceLatencyP99High",
            expr=(
                "histogram_quantile(0.99, sum by (namespace, le) "
                f"(rate(inference_request_duration_seconds_bucket{{{completions}}}[5m])))\n"
                f"> {_num(t.inference_p99_seconds)}"
            ),
            for_="10m",
            severity="warning",
            component="inference",
            summary="Inference p99 latency is {{ $value | humanizeDuration }} in {{ $labels.namespace }}",
            description=(
                f"The 99th percentile of completions requests took longer than {_num(t.inference_p99_seconds)}s "
                "for 10 minutes: the pods are saturated or the batch is too large for the hardware."
            ),
            runbook=(
                "check inference_queue_depth and the HPA (kubectl get hpa inference); raise hpaMaxReplicas or "
                "the pods' cpu, or lower max_tokens"
            ),
        ),
        Alert(
            name="Inference5xxRatioHigh",
            expr=(
                f'sum by (namespace) (rate(inference_requests_total{{{completions}, status=~"5.."}}[5m]))\n'
                f"/ sum by (namespace) (rate(inference_requests_total{{{completions}}}[5m]))\n"
                f"> {_num(t.inference_5xx_ratio)}"
            ),
            for_="5m",
            severity="critical",
            component="inference",
            summary="{{ $value | humanizePercentage }} of inference requests fail with 5xx",
            description=(
                f"More than {_num(t.inference_5xx_ratio * 100)}% of completions requests were answered with a "
                "server error for 5 minutes."
            ),
            runbook=(
                "read the inference pods' logs; check inference_model_load_failures_total and MLflow "
                "(a model that cannot be loaded makes every pod unready)"
            ),
        ),
        Alert(
            name="Inference429RatioSustained",
            expr=(
                f'sum by (namespace) (rate(inference_requests_total{{{completions}, status="429"}}[5m]))\n'
                f"/ sum by (namespace) (rate(inference_requests_total{{{completions}}}[5m]))\n"
                f"> {_num(t.inference_429_ratio)}"
            ),
            for_=f"{t.inference_429_minutes}m",
            severity="warning",
            component="inference",
            summary="{{ $value | humanizePercentage }} of inference requests are refused as over capacity (429)",
            description=(
                f"More than {_num(t.inference_429_ratio * 100)}% of completions requests were refused with 429 for "
                f"{t.inference_429_minutes} minutes: the service is too small for its traffic."
            ),
            runbook="check whether the HPA is at hpaMaxReplicas (kubectl get hpa inference); raise it or the quota",
        ),
        Alert(
            name="PodCrashLooping",
            expr=(
                f'max_over_time(kube_pod_container_status_waiting_reason{{{ns}, reason="CrashLoopBackOff"}}[5m]) >= 1'
            ),
            for_="15m",
            severity="warning",
            component="platform",
            summary="Container {{ $labels.container }} of pod {{ $labels.pod }} is crash-looping",
            description="The container has been in CrashLoopBackOff for 15 minutes.",
            runbook="kubectl logs --previous <pod> -c <container>; kubectl describe pod <pod> (OOMKilled, probes)",
        ),
        Alert(
            name="PersistentVolumeNearlyFull",
            expr=(
                f"kubelet_volume_stats_available_bytes{{{ns}}}\n"
                f"/ kubelet_volume_stats_capacity_bytes{{{ns}}}\n"
                f"< {_num(t.volume_free_ratio)}"
            ),
            for_="5m",
            severity="warning",
            component="platform",
            summary="Volume {{ $labels.persistentvolumeclaim }} has {{ $value | humanizePercentage }} free",
            description=(
                f"Less than {_num(t.volume_free_ratio * 100)}% of the claim is free: checkpoints or MLflow "
                "artifacts will fail to write when it fills."
            ),
            runbook=(
                "delete old checkpoints (the trainer keeps the latest K) or expand the claim "
                "(checkpointStorageSize / mlflowStorageSize, with a StorageClass that allows expansion)"
            ),
        ),
    ]


def prometheus_rule_spec(namespace: str, thresholds: AlertThresholds | None = None) -> dict[str, Any]:
    """`spec` of a monitoring.coreos.com/v1 PrometheusRule holding every alert."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts(namespace, thresholds):
        groups.setdefault(f"ml-platform.{alert.component}", []).append(alert.rule())
    return {"groups": [{"name": name, "rules": rules} for name, rules in groups.items()]}


def rule_file(namespace: str, thresholds: AlertThresholds | None = None) -> dict[str, Any]:
    """The same groups as a Prometheus rule file (`rule_files:`); the PrometheusRule spec has exactly the rule
    file's format, so this is a copy that callers may change freely."""
    return copy.deepcopy(prometheus_rule_spec(namespace, thresholds))


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the expressions) as literal blocks, as people write rule files."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def rule_file_text(namespace: str, thresholds: AlertThresholds | None = None) -> str:
    """`rule_file` as YAML text: the file a Prometheus's `rule_files:` names (and the ConfigMap holds)."""
    return yaml.dump(rule_file(namespace, thresholds), Dumper=_BlockDumper, sort_keys=False, width=120)
