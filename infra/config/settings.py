"""The typed result of a stack's configuration: one frozen dataclass per part of the platform."""

from __future__ import annotations

from dataclasses import dataclass

from workloads.monitoring.rules import AlertThresholds
from workloads.pod import Resources, Toleration


@dataclass(frozen=True)
class LauncherSettings:
    """The task launcher's knobs (launcher* keys)."""

    replicas: int
    """API server pods (launcherReplicas)."""
    max_active_tasks_per_user: int
    """Most pending or running tasks per user (launcherMaxActiveTasksPerUser)."""
    ttl_seconds_after_finished: int
    """Seconds a finished task's Job stays (launcherTaskTtlSeconds)."""
    audience: str
    """Audience of users' tokens (launcherAudience)."""
    task_service_account: str
    """ServiceAccount of the tasks' pods (launcherTaskServiceAccount)."""
    resources: Resources
    """Requests and limits of each API server pod (launcher* keys); FastAPI + lightkube, idle most of the time."""


@dataclass(frozen=True)
class NamespaceSettings:
    name: str
    """The namespace itself."""
    quota_cpu: str
    """Sum of cpu limits allowed."""
    quota_memory: str
    """Sum of memory limits allowed."""
    quota_pods: int
    """Pods allowed."""
    quota_gpus: int
    """nvidia.com/gpu requests allowed (0: no GPU quota line)."""
    defaults: Resources
    """LimitRange defaults for containers that declare nothing."""


@dataclass(frozen=True)
class StorageSettings:
    mode: str
    """hostPath or storageClass."""
    host_path: str
    """Directory on the kind node (hostPath mode)."""
    storage_class: str
    """StorageClass of the PVCs ("" = cluster default)."""
    access_mode: str
    """Access mode of the checkpoint volume."""
    checkpoint_size: str
    """Checkpoint volume size."""
    mlflow_size: str
    """MLflow volume size."""
    protect_data: bool
    """Protect the data claims from `pulumi destroy` and replacement."""


@dataclass(frozen=True)
class MlflowSettings:
    backend: str
    """sqlite or postgresql."""
    node_port: int
    """NodePort of the MLflow Service (when service_type is NodePort)."""
    postgres_image: str
    """PostgreSQL image (postgresql backend)."""
    postgres_size: str
    """PostgreSQL volume size."""
    resources: Resources
    """The tracking server's requests and limits (mlflow* keys)."""
    postgres_resources: Resources
    """PostgreSQL's requests and limits (postgres* keys)."""


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool
    """Whether the Ingress terminates TLS with a cert-manager Certificate."""
    install_cert_manager: bool
    """Install cert-manager itself."""
    cert_manager_namespace: str
    """Where cert-manager runs."""
    cert_manager_chart: str
    """A local directory holding cert-manager's Helm chart, installed with Pulumi's Helm support; "" for the
    pulumi-kubernetes-cert-manager component (which fetches the chart from charts.jetstack.io)."""
    cert_manager_images: str
    """Registry path of cert-manager's images (<path>/cert-manager-controller:<version>, ...) for a local chart."""
    cert_manager_version: str
    """Tag of cert-manager's images for a local chart."""
    issuer: str
    """selfSigned or acme."""
    acme_email: str
    """ACME account e-mail."""
    acme_server: str
    """ACME directory URL."""


@dataclass(frozen=True)
class TrainingSettings:
    run_name: str
    """Run name; the Job is `<run_name>-train`."""
    workers: int
    """Pods = WORLD_SIZE."""
    backend: str
    """gloo or nccl."""
    master_port: int
    """MASTER_PORT."""
    discovery: str
    """dns or kubernetes-api."""
    backoff_limit: int
    """Retriable failures before the Job fails."""
    max_steps: int
    """train.max_steps."""
    batch_size: int
    """train.batch_size (global)."""
    checkpoint_every: int
    """checkpoint.every."""
    settings: tuple[tuple[str, str], ...]
    """Extra train.yaml settings as (section.key, raw value)."""
    resources: Resources
    """Per-worker requests and limits."""
    shm_size: str
    """/dev/shm size limit."""
    node_selector: tuple[tuple[str, str], ...]
    """Required node labels."""
    tolerations: tuple[Toleration, ...]
    """Tolerated taints."""
    wait: bool
    """Whether `pulumi up` waits for the Job."""
    timeout_minutes: int
    """How long it waits."""
    kueue_queue: str
    """Kueue LocalQueue ("" = none)."""


@dataclass(frozen=True)
class InferenceSettings:
    model_name: str
    """Registered model served."""
    model_alias: str
    """Alias followed."""
    node_port: int
    """NodePort of the inference Service (NodePort mode)."""
    resources: Resources
    """Per-pod requests and limits."""
    min_replicas: int
    """HPA minimum."""
    max_replicas: int
    """HPA maximum."""
    cpu_utilization: int
    """HPA target, percent of the cpu request."""
    scale_up_window_s: int
    """HPA scale-up stabilization window."""
    scale_down_window_s: int
    """HPA scale-down stabilization window."""
    ingress_enabled: bool
    """Create an Ingress."""
    ingress_host: str
    """Ingress host name."""
    ingress_class: str
    """IngressClass name."""
    ingress_controller_namespace: str
    """Namespace of the ingress controller (NetworkPolicy source)."""


@dataclass(frozen=True)
class NetworkSettings:
    """What the NetworkPolicies need to know about the cluster (docs/security.md, per CNI)."""

    dns_pod_labels: tuple[tuple[str, str], ...]
    """Labels of the cluster DNS pods, in any namespace (kind, kubeadm, GKE, EKS: k8s-app=kube-dns)."""
    dns_cidrs: tuple[str, ...]
    """DNS servers that are not pods (NodeLocal DNSCache's 169.254.20.10/32, a host-network CoreDNS)."""
    api_server_cidrs: tuple[str, ...]
    """Where the Kubernetes API server's endpoints are (after the Service's DNAT: the control-plane nodes)."""
    api_server_ports: tuple[int, ...]
    """The API server endpoints' ports (6443 kubeadm and kind, 443 managed clusters, 8443, 16443 microk8s)."""
    task_egress_cidrs: tuple[str, ...]
    """Where launched tasks may connect outside the cluster (package mirrors, datasets), on `task_egress_ports`."""
    task_egress_ports: tuple[int, ...]
    """TCP ports of `task_egress_cidrs`."""
    launcher_client_cidrs: tuple[str, ...]
    """Clients of the task launcher API outside the cluster's pods (besides the platform namespace and the
    ingress controller's)."""


@dataclass(frozen=True)
class MonitoringSettings:
    prometheus_operator: bool
    """Declare PodMonitors and a PrometheusRule (else scrape annotations and a rule-file ConfigMap)."""
    prometheus_namespace: str
    """Where Prometheus runs (the NetworkPolicies' source)."""
    selector_labels: tuple[tuple[str, str], ...]
    """Labels on the PodMonitors and the PrometheusRule that the Prometheus's selectors match."""
    grafana_dashboards: bool
    """Ship the dashboards as sidecar-labelled ConfigMaps."""
    grafana_folder: str
    """Grafana folder of the dashboards."""
    thresholds: AlertThresholds
    """The alerts' tunable numbers."""
