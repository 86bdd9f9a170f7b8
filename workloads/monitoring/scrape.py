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

from workloads.pod import slot_port_name
from workloads.training import MAX_RANKS_PER_POD, METRICS_PORT_NAME
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
    slots: int = 1
    """How many processes of one pod serve metrics, each on a port of its own: `port_name` on `port`, then
    `<port_name>-i` on `port + i` (the local ranks of a multi-GPU training pod). A pod that declares fewer of these
    ports simply yields fewer targets."""

    @property
    def port_names(self) -> list[str]:
        """The container port names of the slots, in slot order."""
        return [slot_port_name(self.port_name, slot) for slot in range(self.slots)]

    @property
    def last_port(self) -> int:
        """The highest port number a slot uses (the NetworkPolicy's endPort when there are several)."""
        return self.port + self.slots - 1


TRAINER_TARGET = ScrapeTarget(
    "trainer", "trainer", METRICS_PORT_NAME, TRAINER_METRICS_PORT, job_labels=True, slots=MAX_RANKS_PER_POD
)
"""Training pods, whoever creates them (the stack or the TrainingJob operator), every local rank of each: one
definition for both."""


def pod_monitor_spec(target: ScrapeTarget, part_of: str) -> dict[str, Any]:
    """`spec` of a monitoring.coreos.com/v1 PodMonitor selecting `target`'s pods in the PodMonitor's own
    namespace (no namespaceSelector: a PodMonitor watches its own namespace by default). One endpoint per port
    name of the target's slots: an endpoint names its port, and a pod without that port gives it no target."""
    return {
        "selector": {"matchLabels": {NAME_LABEL: target.pod_name, PART_OF_LABEL: part_of}},
        "podMetricsEndpoints": [_endpoint(target, port_name) for port_name in target.port_names],
    }


def _endpoint(target: ScrapeTarget, port_name: str) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"port": port_name, "path": target.path, "interval": SCRAPE_INTERVAL, "scheme": "http"}
    if target.job_labels:
        endpoint["relabelings"] = [
            {"sourceLabels": [JOB_NAME_META], "targetLabel": "job_name", "action": "replace"},
            {"sourceLabels": [COMPLETION_INDEX_META], "targetLabel": "completion_index", "action": "replace"},
        ]
    return endpoint


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
    """The `prometheus.io/*` pod annotations a plain Prometheus's `kubernetes-pods` job follows. The convention has
    one port per pod: only the first slot (local rank 0 of a training pod) is scraped this way."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(target.port),
        "prometheus.io/path": target.path,
    }
