"""How Prometheus finds the platform's metrics: one PodMonitor per component (Prometheus Operator), or the
conventional `prometheus.io/*` pod annotations (a plain Prometheus with the usual `kubernetes-pods` job).

Every component serves `/metrics` on a named container port: `metrics` where the metrics have a port of their own
(trainer, operator, launcher), `http` where they share the API port (inference, MLflow). A PodMonitor names the
port, so a port number changes in one place; the annotations carry the number, as that convention requires.

Training series get the Job's name as a label (`job_name`, relabelled from the pod's `job-name` label), so the
stall alert can join them with kube-state-metrics' `kube_job_status_active{job_name=...}`. The usual
`kubernetes-pods` scrape job of a plain Prometheus does the same with `labelmap: __meta_kubernetes_pod_label_(.+)`,
which turns `job-name` into `job_name` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workloads.training import METRICS_PORT as TRAINER_METRICS_PORT

NAME_LABEL = "app.kubernetes.io/name"
PART_OF_LABEL = "app.kubernetes.io/part-of"
SCRAPE_INTERVAL = "30s"
METRICS_PATH = "/metrics"
# Labels every training pod carries from its Job (set by the Job controller), turned into series labels.
JOB_NAME_META = "__meta_kubernetes_pod_label_job_name"
COMPLETION_INDEX_META = "__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"


@dataclass(frozen=True)
class ScrapeTarget:
    """One component whose pods serve Prometheus metrics."""

    component: str
    """Short name: the PodMonitor is `<component>-metrics`."""
    pod_name: str
    """Value of app.kubernetes.io/name on its pods (the PodMonitor's selector)."""
    port_name: str
    """Name of the container port that serves `/metrics`."""
    port: int
    """That port's number (the NetworkPolicy's port, and prometheus.io/port)."""
    path: str = METRICS_PATH
    """HTTP path of the metrics."""
    job_labels: bool = False
    """Copy the Job's pod labels (`job-name`, completion index) onto the series: pods of a Job only."""



TRAINER_TARGET = ScrapeTarget("trainer", "trainer", "metrics", TRAINER_METRICS_PORT, job_labels=True)
"""Training pods, whoever creates them (the stack or the TrainingJob operator): one definition for both."""

def pod_monitor_spec(target: ScrapeTarget, part_of: str) -> dict[str, Any]:
    """`spec` of a monitoring.coreos.com/v1 PodMonitor selecting `target`'s pods in the PodMonitor's own
    namespace (no namespaceSelector: a PodMonitor watches its own namespace by default)."""
    endpoint: dict[str, Any] = {
        "port": target.port_name,
        "path": target.path,
        "interval": SCRAPE_INTERVAL,
        "scheme": "http",
    }
    if target.job_labels:
        endpoint["relabelings"] = [
            {"sourceLabels": [JOB_NAME_META], "targetLabel": "job_name", "action": "replace"},
            {"sourceLabels": [COMPLETION_INDEX_META], "targetLabel": "completion_index", "action": "replace"},
        ]
    return {
        "selector": {"matchLabels": {NAME_LABEL: target.pod_name, PART_OF_LABEL: part_of}},
        "podMetricsEndpoints": [endpoint],
    }


def pod_monitor(
    target: ScrapeTarget, *, namespace: str, part_of: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The whole PodMonitor object, as the API server takes it."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": f"{target.component}-metrics", "namespace": namespace, "labels": dict(labels or {})},
        "spec": pod_monitor_spec(target, part_of),
    }


def scrape_annotations(target: ScrapeTarget) -> dict[str, str]:
    """The `prometheus.io/*` pod annotations a plain Prometheus's `kubernetes-pods` job follows."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(target.port),
        "prometheus.io/path": target.path,
    }
