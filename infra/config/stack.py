"""`StackConfig`: the whole stack's configuration, read once and validated once, before any resource exists.

The only place besides the entry point that reads stack config (`StackConfig.load`). Cross-key rules live here
(GPUs and backends, ports, the quota against everything the platform runs at full scale); per-key checks are in
`validation.py`, the schema and its defaults in `schema.py`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pulumi

from infra.config.schema import SECRET_KEYS, project_name, read_raw_config
from infra.config.settings import (
    InferenceSettings,
    LauncherSettings,
    MlflowSettings,
    MonitoringSettings,
    NamespaceSettings,
    NetworkSettings,
    StorageSettings,
    TlsSettings,
    TrainingSettings,
)
from infra.config.teams import KueueSettings, TeamSettings, parse_kueue, parse_teams
from infra.config.validation import (
    DNS_SUBDOMAIN,
    IMAGE_PREFIX,
    ConfigError,
    Validator,
    acme_email_problem,
    cert_manager_chart_problem,
)
from workloads.monitoring.rules import AlertThresholds
from workloads.pod import Resources
from workloads.quantity import parse_quantity
from workloads.training import MAX_RANKS_PER_POD
from workloads.trainingjob import CHECKPOINT_ACCESS_MODES

ACCESS_MODES = CHECKPOINT_ACCESS_MODES


@dataclass(frozen=True)
class StackConfig:
    """Everything the program needs, validated. Build it with `StackConfig.load()` or `from_raw`."""

    stack: str
    """Stack name."""
    project: str
    """Project name (Pulumi.yaml)."""
    image: str
    """Image with torch: the trainer, the inference service, TrainingJobs and tasks."""
    services_image: str
    """Image without torch: MLflow, the TrainingJob operator and the task launcher."""
    image_pull_policy: str
    """Pull policy of both images."""
    accelerator: str
    """cpu or nvidia."""
    service_type: str
    """NodePort or ClusterIP for the inference and MLflow Services."""
    namespace: NamespaceSettings
    """Namespace, quota and defaults."""
    network: NetworkSettings
    """What the NetworkPolicies assume about the cluster."""
    storage: StorageSettings
    """Volumes."""
    mlflow: MlflowSettings
    """Tracking server."""
    tls: TlsSettings
    """TLS."""
    training: TrainingSettings
    """The training run."""
    inference: InferenceSettings
    """The inference service."""
    monitoring: MonitoringSettings
    """Scraping, dashboards and alerts."""
    task_launcher: LauncherSettings
    """The task launcher's knobs (launcher* keys)."""
    operator_resources: Resources
    """The TrainingJob operator's requests and limits (operator* keys)."""
    teams: tuple[TeamSettings, ...] = ()
    """Who shares the cluster: a namespace, a quota and (with Kueue) a queue per team (teams)."""
    kueue: KueueSettings | None = None
    """The queues (kueue* keys); None only from code that builds a StackConfig by hand."""
    operator: bool = True
    """Install the TrainingJob operator (trainingJobOperator)."""
    operator_crd: bool = True
    """Declare the TrainingJob CRD with it (trainingJobCrd)."""
    launcher: bool = True
    """Deploy the task launcher API (taskLauncher)."""
    postgres_password: pulumi.Output[str] | None = None
    """The postgresPassword secret, as the secret Output `load()` reads with the postgresql backend (None
    otherwise, and from `from_raw`, which sees only whether it is set)."""

    @classmethod
    def load(cls) -> StackConfig:
        """Read the current stack's config through the Pulumi SDK and validate it (raises ConfigError)."""
        import pulumi
        from pulumi.runtime.config import is_config_secret

        cfg = pulumi.Config()
        raw = read_raw_config(cfg.get)
        is_set = {key for key in SECRET_KEYS if cfg.get(key)}
        secret = {key for key in is_set if is_config_secret(f"{cfg.name}:{key}")}
        config = cls.from_raw(pulumi.get_stack(), raw, secret, plain_secrets=is_set - secret)
        if config.mlflow.backend == "postgresql":  # validated above: set, as a secret
            config = dataclasses.replace(config, postgres_password=cfg.require_secret("postgresPassword"))
        return config

    @classmethod
    def from_raw(
        cls,
        stack: str,
        raw: Mapping[str, Any],
        secrets_set: set[str] | None = None,
        plain_secrets: set[str] | None = None,
    ) -> StackConfig:
        """Validate typed raw values (as `read_raw_config` returns them) into a StackConfig. `secrets_set`: the
        SECRET_KEYS set as secrets; `plain_secrets`: those set in plain text (an error)."""
        return _build(Validator(stack, raw, secrets_set or set(), plain_secrets or set()))


def _audience(v: Validator, key: str) -> str:
    value = v.string(key)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}", value):
        v.problem(key, "must be a token audience: letters, digits and . _ : / -, e.g. skyrun")
    return value


def _check_quota(v: Validator, config: StackConfig) -> None:
    """The quota must admit everything at full scale: every worker, MLflow (and PostgreSQL), and inference at
    hpaMaxReplicas plus the one extra pod of a rolling update; otherwise pods are refused at admission."""
    t, inf = config.training, config.inference
    surge_replicas = inf.max_replicas + 1
    postgres = [config.mlflow.postgres_resources] if config.mlflow.backend == "postgresql" else []
    operator = [config.operator_resources] if config.operator else []
    launcher = [config.task_launcher.resources] * config.task_launcher.replicas if config.launcher else []
    pods = [
        *([t.resources] * t.workers), config.mlflow.resources, *postgres, *operator, *launcher,
        *([inf.resources] * surge_replicas),
    ]  # fmt: skip
    what = (
        f"{t.workers} workers + MLflow{' + PostgreSQL' if postgres else ''}{' + the operator' if operator else ''}"
        f"{f' + {len(launcher)} launcher pods' if launcher else ''}"
        f" + {surge_replicas} inference pods (hpaMaxReplicas + 1 rolling-update surge)"
    )
    for key, quota, field_ in (
        ("quotaCpu", config.namespace.quota_cpu, "cpu_limit"),
        ("quotaMemory", config.namespace.quota_memory, "memory_limit"),
    ):
        try:
            needed = sum((parse_quantity(getattr(r, field_)) for r in pods), Decimal(0))
            too_small = parse_quantity(quota) < needed
        except ValueError:
            continue  # a quantity that does not parse is already reported
        if too_small:
            v.problem(key, f"must cover the limits of {what} = {needed.normalize():f}")
    if config.namespace.quota_pods < len(pods):
        v.problem("quotaPods", f"must be at least {len(pods)}: {what}")


def _check_teams(v: Validator, config: StackConfig) -> None:
    if config.launcher and not config.teams:
        v.problem(
            "teams",
            "the task launcher runs users' tasks in team namespaces: declare at least one team (e.g. "
            "[{name: default, users: ['*'], cpu: '4', memory: 8Gi, storage: 20Gi, volumes: 10}]) or set taskLauncher "
            "to false",
        )
    for team in config.teams:
        if len(team.namespace) > 63:
            v.problem("teams", f"team {team.name}: its namespace {team.namespace} is longer than 63 characters")
        if config.accelerator == "cpu" and team.max_gpus:
            v.problem("teams", f"team {team.name}: gpus/maxGpus must be 0 with accelerator cpu")
        if team.namespace == config.namespace.name:
            v.problem("teams", f"team {team.name}: its namespace would be the platform's")


def _monitoring(v: Validator) -> MonitoringSettings:
    folder = v.string("grafanaFolder")
    if not folder.strip() or len(folder) > 100:
        v.problem("grafanaFolder", "must be a non-empty folder name of at most 100 characters")
    return MonitoringSettings(
        prometheus_operator=v.boolean("prometheusOperator"),
        prometheus_namespace=v.dns_label("prometheusNamespace"),
        selector_labels=v.key_values("prometheusSelectorLabels"),
        grafana_dashboards=v.boolean("grafanaDashboards"),
        grafana_folder=folder,
        thresholds=AlertThresholds(
            training_stall_minutes=v.integer("alertTrainingStallMinutes", 1, 1440),
            inference_p99_seconds=v.integer("alertInferenceP99Seconds", 1, 600),
            inference_5xx_ratio=v.integer("alertInference5xxPercent", 1, 100) / 100,
            inference_429_ratio=v.integer("alertInference429Percent", 1, 100) / 100,
            inference_429_minutes=v.integer("alertInference429Minutes", 1, 1440),
            volume_free_ratio=v.integer("alertVolumeFreePercent", 1, 99) / 100,
        ),
    )


def _network(v: Validator) -> NetworkSettings:
    dns_labels = v.key_values("dnsPodLabels")
    dns_cidrs = v.cidrs("dnsCidrs")
    if not dns_labels and not dns_cidrs and "dnsPodLabels" in v.raw and "dnsCidrs" in v.raw:
        v.problem("dnsPodLabels", "and dnsCidrs are both empty: pods could resolve no name; set one of them")
    return NetworkSettings(
        dns_pod_labels=dns_labels,
        dns_cidrs=dns_cidrs,
        api_server_cidrs=v.cidrs("apiServerCidrs"),
        api_server_ports=v.ports("apiServerPorts"),
        task_egress_cidrs=v.cidrs("taskEgressCidrs"),
        task_egress_ports=v.ports("taskEgressPorts"),
        launcher_client_cidrs=v.cidrs("launcherClientCidrs"),
    )


def _build(v: Validator) -> StackConfig:
    accelerator = v.choice("accelerator", ("cpu", "nvidia"))
    gpus = v.integer("gpusPerWorker", 0, MAX_RANKS_PER_POD)
    if accelerator == "nvidia" and gpus < 1:
        v.problem("gpusPerWorker", "must be >= 1 with accelerator nvidia (the gpu stack needs a GPU count)")
    if accelerator == "cpu" and gpus:
        v.problem("gpusPerWorker", "must be 0 with accelerator cpu; set accelerator to nvidia to use GPUs")
    backend = v.choice("trainBackend", ("gloo", "nccl"))
    if backend == "nccl" and accelerator != "nvidia":
        v.problem("trainBackend", "nccl needs GPUs; use gloo with accelerator cpu")
    workers = v.integer("workers", 1, 256)
    quota_gpus = v.integer("quotaGpus", 0)
    if accelerator == "nvidia" and quota_gpus < workers * gpus:
        v.problem("quotaGpus", f"must cover workers x gpusPerWorker = {workers * gpus}")
    if accelerator == "cpu" and quota_gpus:
        v.problem("quotaGpus", "must be 0 with accelerator cpu")

    access_mode = v.choice("storageAccessMode", ACCESS_MODES)
    if access_mode == "ReadWriteOncePod" and workers > 1:
        v.problem(
            "storageAccessMode",
            f"ReadWriteOncePod: only one pod can mount the checkpoint volume, and workers={workers} pods each mount "
            "it; use ReadWriteOnce (the workers share one node) or ReadWriteMany (workers on several nodes)",
        )

    batch_size = v.integer("trainBatchSize", 1)
    if workers >= 1 and batch_size >= 1 and batch_size % workers:
        v.problem("trainBatchSize", f"must be divisible by workers={workers} (it is the global batch)")

    service_type = v.choice("serviceType", ("NodePort", "ClusterIP"))
    inference_port = v.integer("inferenceNodePort", 30000, 32767)
    mlflow_port = v.integer("mlflowNodePort", 30000, 32767)
    if service_type == "NodePort" and inference_port == mlflow_port:
        v.problem("mlflowNodePort", "must differ from inferenceNodePort")

    min_replicas = v.integer("hpaMinReplicas", 1, 100)
    max_replicas = v.integer("hpaMaxReplicas", 1, 100)
    if min_replicas > max_replicas:
        v.problem("hpaMinReplicas", f"must not exceed hpaMaxReplicas={max_replicas}")

    namespace_name = v.dns_label("namespace")
    node_selector = v.key_values("gpuNodeSelector")

    storage_mode = v.choice("storageMode", ("hostPath", "storageClass"))
    host_path = v.string("storageHostPath")
    if storage_mode == "hostPath" and not host_path.startswith("/"):
        v.problem("storageHostPath", "must be an absolute path inside the kind node")
    storage_class = v.string("storageClass")
    if storage_class and not DNS_SUBDOMAIN.match(storage_class):
        v.problem("storageClass", "must be a StorageClass name (DNS-1123 subdomain) or empty")

    mlflow_backend = v.choice("mlflowBackend", ("sqlite", "postgresql"))
    if mlflow_backend == "postgresql" and "postgresPassword" not in v.secrets_set:
        v.problems.append(
            "postgresPassword: required (as a secret) with mlflowBackend postgresql; "
            f"run `pulumi config set --secret postgresPassword <password> -s {v.stack}`"
        )

    ingress = v.boolean("ingressEnabled")
    ingress_host = v.string("ingressHost")
    if ingress and not DNS_SUBDOMAIN.match(ingress_host):
        v.problem("ingressHost", "must be a DNS name such as inference.example.com")
    tls_enabled = v.boolean("tlsEnabled")
    if tls_enabled and not ingress:
        v.problem("tlsEnabled", "needs ingressEnabled=true (TLS terminates at the Ingress)")
    issuer = v.choice("tlsIssuer", ("selfSigned", "acme"))
    acme_email = v.string("acmeEmail")
    if tls_enabled and issuer == "acme" and (problem := acme_email_problem(acme_email)):
        v.problem("acmeEmail", f"{problem}; set yours: pulumi config set acmeEmail you@your-domain -s {v.stack}")
    install_cert_manager = v.boolean("tlsInstallCertManager")
    cert_manager_chart = v.string("tlsCertManagerChart")
    chart_problem = cert_manager_chart_problem(cert_manager_chart) if cert_manager_chart else None
    if tls_enabled and install_cert_manager and chart_problem:
        v.problem("tlsCertManagerChart", chart_problem)
    cert_manager_images = v.string("tlsCertManagerImages")
    if not IMAGE_PREFIX.match(cert_manager_images):
        v.problem("tlsCertManagerImages", "must be a registry path such as quay.io/jetstack (no tag)")
    cert_manager_version = v.string("tlsCertManagerVersion")
    if not re.fullmatch(r"v\d+\.\d+\.\d+", cert_manager_version):
        v.problem("tlsCertManagerVersion", "must be a cert-manager release such as v1.21.2 (the images' tag)")
    acme_server = v.string("acmeServer")
    if not acme_server.startswith("https://"):
        v.problem("acmeServer", "must be an https:// ACME directory URL")

    wait = v.boolean("waitForTraining")
    config = StackConfig(
        stack=v.stack,
        project=project_name(),
        image=v.image("image"),
        services_image=v.image("servicesImage"),
        image_pull_policy=v.choice("imagePullPolicy", ("Always", "IfNotPresent", "Never")),
        accelerator=accelerator,
        service_type=service_type,
        namespace=NamespaceSettings(
            name=namespace_name,
            quota_cpu=v.quantity("quotaCpu"),
            quota_memory=v.quantity("quotaMemory"),
            quota_pods=v.integer("quotaPods", 1),
            quota_gpus=quota_gpus,
            defaults=v.resources("default"),
        ),
        storage=StorageSettings(
            mode=storage_mode,
            host_path=host_path,
            storage_class=storage_class,
            access_mode=access_mode,
            checkpoint_size=v.quantity("checkpointStorageSize"),
            mlflow_size=v.quantity("mlflowStorageSize"),
            protect_data=v.boolean("protectData"),
        ),
        mlflow=MlflowSettings(
            backend=mlflow_backend,
            node_port=mlflow_port,
            postgres_image=v.image("postgresImage"),
            postgres_size=v.quantity("postgresStorageSize"),
            resources=v.resources("mlflow"),
            postgres_resources=v.resources("postgres"),
        ),
        tls=TlsSettings(
            enabled=tls_enabled,
            install_cert_manager=install_cert_manager,
            cert_manager_namespace=v.dns_label("tlsCertManagerNamespace"),
            cert_manager_chart=cert_manager_chart,
            cert_manager_images=cert_manager_images,
            cert_manager_version=cert_manager_version,
            issuer=issuer,
            acme_email=acme_email,
            acme_server=acme_server,
        ),
        training=TrainingSettings(
            run_name=v.dns_label("runName"),
            workers=workers,
            backend=backend,
            master_port=v.integer("masterPort", 1024, 65535),
            discovery=v.choice("rankDiscovery", ("dns", "kubernetes-api")),
            backoff_limit=v.integer("backoffLimit", 0, 100),
            max_steps=v.integer("trainMaxSteps", 1),
            batch_size=batch_size,
            checkpoint_every=v.integer("checkpointEvery", 1),
            settings=v.train_settings("trainSettings"),
            resources=v.resources("train", gpus),
            shm_size=v.quantity("shmSize"),
            node_selector=node_selector,
            tolerations=v.tolerations("gpuTolerations"),
            wait=wait,
            timeout_minutes=v.integer("trainingTimeoutMinutes", 1, 7 * 24 * 60),
            kueue_queue=v.string("kueueQueue"),
        ),
        inference=InferenceSettings(
            model_name=v.string("modelName"),
            model_alias=v.string("modelAlias"),
            node_port=inference_port,
            resources=v.resources("inference"),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            cpu_utilization=v.integer("hpaCpuUtilization", 1, 100),
            scale_up_window_s=v.integer("hpaScaleUpStabilizationSeconds", 0, 3600),
            scale_down_window_s=v.integer("hpaScaleDownStabilizationSeconds", 0, 3600),
            ingress_enabled=ingress,
            ingress_host=ingress_host,
            ingress_class=v.string("ingressClassName"),
            ingress_controller_namespace=v.dns_label("ingressControllerNamespace"),
        ),
        monitoring=_monitoring(v),
        network=_network(v),
        operator=v.boolean("trainingJobOperator"),
        operator_crd=v.boolean("trainingJobCrd"),
        launcher=v.boolean("taskLauncher"),
        task_launcher=LauncherSettings(
            replicas=v.integer("launcherReplicas", 1, 10),
            max_active_tasks_per_user=v.integer("launcherMaxActiveTasksPerUser", 1, 1000),
            ttl_seconds_after_finished=v.integer("launcherTaskTtlSeconds", 0, 604800),
            audience=_audience(v, "launcherAudience"),
            task_service_account=v.dns_subdomain("launcherTaskServiceAccount"),
            resources=v.resources("launcher"),
        ),
        operator_resources=v.resources("operator"),
        teams=parse_teams(v, namespace_name),
        kueue=parse_kueue(v, node_selector),
    )
    # The Job name <runName>-train and pod host names <job>-<index> must stay DNS labels.
    if len(config.training.run_name) > 50:
        v.problem("runName", "must be at most 50 characters (the Job and pod names derive from it)")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", config.inference.model_name):
        v.problem("modelName", "must be letters, digits, '.', '_' or '-' (an MLflow registered model name)")
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$", config.inference.model_alias):
        v.problem("modelAlias", "must start with a letter and hold letters, digits, '_' or '-'")
    if config.training.kueue_queue and not DNS_SUBDOMAIN.match(config.training.kueue_queue):
        v.problem("kueueQueue", "must be a LocalQueue name (DNS-1123 subdomain) or empty")
    if config.inference.ingress_class and not DNS_SUBDOMAIN.match(config.inference.ingress_class):
        v.problem("ingressClassName", "must be an IngressClass name")
    _check_quota(v, config)
    _check_teams(v, config)
    if v.problems:
        raise ConfigError(v.stack, v.problems)
    return config
