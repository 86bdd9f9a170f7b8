"""The Pulumi program: validated stack config in, the whole platform out."""

from __future__ import annotations

import pulumi
import yaml

from infra.common import GPU_RESOURCE, MANAGED_BY
from infra.config import (
    StackConfig,
)
from infra.inference import HTTP_PORT, InferenceArgs, InferenceService, IngressArgs
from infra.kueue import Queues, QueuesArgs
from infra.launcher import HTTP_PORT as LAUNCHER_HTTP_PORT
from infra.launcher import METRICS_PORT as LAUNCHER_METRICS_PORT
from infra.launcher import NAME as LAUNCHER_NAME
from infra.launcher import LauncherTeam, TaskLauncher, TaskLauncherArgs
from infra.mlflow import MLFLOW_PORT, POSTGRES_PORT, Mlflow, MlflowArgs, PostgresArgs, tracking_uri
from infra.monitoring import Monitoring, MonitoringArgs, pod_annotations
from infra.namespace import Namespace, NamespaceArgs
from infra.network import NetworkPolicies, NetworkPoliciesArgs
from infra.rbac import TrainerRbac, TrainerRbacArgs
from infra.storage import Storage, StorageArgs, VolumeClaim
from infra.teams import ANCHOR, Teams, TeamsArgs
from infra.tls import Tls, TlsArgs
from infra.training import TrainingArgs, TrainingJob
from infra.trainingjobs import NAME as OPERATOR_NAME
from infra.trainingjobs import OperatorArgs, TrainingJobOperator
from workloads.monitoring.scrape import TRAINER_TARGET, ScrapeTarget
from workloads.train_yaml import Decisions
from workloads.train_yaml import train_yaml as build_train_yaml
from workloads.training import CHECKPOINT_MOUNT, TrainingJobSpec
from workloads.trainingjob import METRICS_PORT as OPERATOR_METRICS_PORT

TRAINER_SERVICE_ACCOUNT = "trainer"
CHECKPOINT_CLAIM = "checkpoints"

# What Prometheus scrapes: the container port that serves /metrics on each component's pods.
INFERENCE_TARGET = ScrapeTarget("inference", "inference", "http", HTTP_PORT)
MLFLOW_TARGET = ScrapeTarget("mlflow", "mlflow", "http", MLFLOW_PORT)
OPERATOR_TARGET = ScrapeTarget("trainop", OPERATOR_NAME, "metrics", OPERATOR_METRICS_PORT)
LAUNCHER_TARGET = ScrapeTarget("skyrun", LAUNCHER_NAME, "metrics", LAUNCHER_METRICS_PORT)


def scrape_targets(config: StackConfig) -> list[ScrapeTarget]:
    """The components of the stack that serve metrics."""
    return [
        TRAINER_TARGET,
        INFERENCE_TARGET,
        MLFLOW_TARGET,
        *([OPERATOR_TARGET] if config.operator else []),
        *([LAUNCHER_TARGET] if config.launcher else []),
    ]


def train_yaml(config: StackConfig) -> dict[str, dict[str, object]]:
    """train.yaml for the run (workloads/train_yaml.py): the user's `trainSettings` (YAML-typed values), then what
    the stack's typed keys decide."""
    t = config.training
    user: dict[str, dict[str, object]] = {}
    for path, raw in t.settings:
        section, key = path.split(".", 1)
        user.setdefault(section, {})[key] = yaml.safe_load(raw) if raw else ""
    decisions = Decisions(
        checkpoint_dir=f"{CHECKPOINT_MOUNT}/{t.run_name}",
        checkpoint_every=t.checkpoint_every,
        max_steps=t.max_steps,
        batch_size=t.batch_size,
        experiment=t.run_name,
        model_name=config.inference.model_name,
        alias=config.inference.model_alias,
        backend=t.backend,
        discovery=t.discovery,
    )
    return build_train_yaml(user, decisions, t.resources)


def training_spec(config: StackConfig, checkpoint_sub_path: str | None) -> TrainingJobSpec:
    """The training run the stack declares; `checkpoint_sub_path` is where Storage puts the claim's data."""
    t = config.training
    return TrainingJobSpec(
        run_name=t.run_name,
        namespace=config.namespace.name,
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        workers=t.workers,
        master_port=t.master_port,
        discovery=t.discovery,
        backoff_limit=t.backoff_limit,
        train_config=train_yaml(config),
        tracking_uri=tracking_uri(config.namespace.name),
        service_account_name=TRAINER_SERVICE_ACCOUNT,
        checkpoint_claim=CHECKPOINT_CLAIM,
        checkpoint_sub_path=checkpoint_sub_path,
        colocate_ranks=config.storage.access_mode == "ReadWriteOnce",
        resources=t.resources,
        shm_size=t.shm_size,
        node_selector=t.node_selector,
        tolerations=t.tolerations,
        kueue_queue=t.kueue_queue,
        managed_by=MANAGED_BY,
        pod_annotations=tuple(pod_annotations(TRAINER_TARGET, config.monitoring.prometheus_operator).items()),
    )


def build(config: StackConfig) -> dict[str, pulumi.Output[object]]:
    """Declare every resource of the stack; returns the stack outputs."""
    instance = config.namespace.name
    kueue_on = config.kueue is not None and config.kueue.enabled
    ns = Namespace(
        "platform",
        NamespaceArgs(
            name=config.namespace.name,
            quota_cpu=config.namespace.quota_cpu,
            quota_memory=config.namespace.quota_memory,
            quota_pods=config.namespace.quota_pods,
            quota_gpus=config.namespace.quota_gpus,
            defaults=config.namespace.defaults,
        ),
    )
    after_ns = pulumi.ResourceOptions(depends_on=[ns])
    operator_mode = config.monitoring.prometheus_operator
    NetworkPolicies(
        "network",
        NetworkPoliciesArgs(
            namespace=ns.name,
            instance=instance,
            mlflow_port=MLFLOW_PORT,
            inference_port=HTTP_PORT,
            postgres_port=POSTGRES_PORT if config.mlflow.backend == "postgresql" else None,
            api_discovery=config.training.discovery == "kubernetes-api",
            node_ports=config.service_type == "NodePort",
            ingress_controller_namespace=config.inference.ingress_controller_namespace,
            acme=config.tls.enabled and config.tls.issuer == "acme",
            operator=config.operator,
            launcher=config.launcher,
            team_tasks=instance if config.teams else "",
            launcher_port=LAUNCHER_HTTP_PORT,
            network=config.network,
        ),
        opts=after_ns,
    )
    storage = Storage(
        "storage",
        StorageArgs(
            namespace=ns.name,
            mode=config.storage.mode,
            host_path=config.storage.host_path,
            storage_class=config.storage.storage_class,
            claims=(
                VolumeClaim(CHECKPOINT_CLAIM, config.storage.checkpoint_size, config.storage.access_mode),
                VolumeClaim("mlflow", config.storage.mlflow_size, "ReadWriteOnce"),
            ),
            instance=instance,
            stack=config.stack,
            protect_data=config.storage.protect_data,
        ),
        opts=after_ns,
    )
    postgres = None
    if config.mlflow.backend == "postgresql":
        if config.postgres_password is None:
            raise ValueError("StackConfig.postgres_password: build the config with StackConfig.load()")
        postgres = PostgresArgs(
            image=config.mlflow.postgres_image,
            storage_size=config.mlflow.postgres_size,
            storage_class=config.storage.storage_class,
            password=config.postgres_password,
            resources=config.mlflow.postgres_resources,
        )
    mlflow = Mlflow(
        "mlflow",
        MlflowArgs(
            namespace=ns.name,
            image=config.services_image,
            image_pull_policy=config.image_pull_policy,
            claim_name=storage.claim_names["mlflow"],
            data_sub_path=storage.sub_paths["mlflow"],
            service_type=config.service_type,
            node_port=config.mlflow.node_port,
            resources=config.mlflow.resources,
            instance=instance,
            postgres=postgres,
            pod_annotations=pod_annotations(MLFLOW_TARGET, operator_mode),
        ),
        opts=after_ns,
    )
    rbac = TrainerRbac(
        "trainer-rbac",
        TrainerRbacArgs(namespace=ns.name, service_account_name=TRAINER_SERVICE_ACCOUNT, instance=instance),
        opts=after_ns,
    )
    kueue = config.kueue
    queues = None
    if kueue is not None and kueue.enabled:
        quota = {"cpu": config.namespace.quota_cpu, "memory": config.namespace.quota_memory}
        if config.namespace.quota_gpus:
            quota[GPU_RESOURCE] = str(config.namespace.quota_gpus)
        queues = Queues(
            "queues",
            QueuesArgs(
                namespace=config.namespace.name,
                instance=instance,
                settings=kueue,
                teams=config.teams,
                gpu=config.accelerator == "nvidia",
                gpu_tolerations=config.training.tolerations,
                training_queue=config.training.kueue_queue,
                training_quota=quota,
            ),
            opts=after_ns,
        )
    if config.operator:
        TrainingJobOperator(
            "trainingjobs",
            OperatorArgs(
                namespace=config.namespace.name,
                instance=instance,
                image=config.services_image,
                training_image=config.image,
                image_pull_policy=config.image_pull_policy,
                tracking_uri=mlflow.tracking_uri,
                checkpoint_claim=storage.claim_names[CHECKPOINT_CLAIM],
                checkpoint_sub_path=storage.sub_paths[CHECKPOINT_CLAIM],
                checkpoint_access_mode=config.storage.access_mode,
                trainer_service_account=TRAINER_SERVICE_ACCOUNT,
                gpus_available=config.accelerator == "nvidia",
                resources=config.operator_resources,
                install_crd=config.operator_crd,
                default_queue=config.training.kueue_queue if kueue_on else "",
                pod_annotations=pod_annotations(OPERATOR_TARGET, operator_mode),
                scrape_annotations=not operator_mode,
            ),
            # With Kueue: created after the queues, and so deleted before them, while Kueue still releases the
            # Workloads of the TrainingJobs' Jobs.
            opts=pulumi.ResourceOptions(depends_on=[ns, rbac, mlflow, storage, *([queues] if queues else [])]),
        )
    launcher = None
    if config.launcher:
        launcher = TaskLauncher(
            "launcher",
            TaskLauncherArgs(
                namespace=config.namespace.name,
                instance=instance,
                image=config.services_image,
                task_image=config.image,
                image_pull_policy=config.image_pull_policy,
                resources=config.task_launcher.resources,
                replicas=config.task_launcher.replicas,
                max_active_tasks_per_user=config.task_launcher.max_active_tasks_per_user,
                ttl_seconds_after_finished=config.task_launcher.ttl_seconds_after_finished,
                audience=config.task_launcher.audience,
                task_service_account=config.task_launcher.task_service_account,
                teams=tuple(
                    LauncherTeam(t.name, t.namespace, t.users, t.name if queues is not None else "")
                    for t in config.teams
                ),
                anchor=ANCHOR,
                pod_annotations=pod_annotations(LAUNCHER_TARGET, operator_mode),
            ),
            opts=pulumi.ResourceOptions(depends_on=[ns]),
        )
    if config.teams:
        Teams(
            "teams",
            TeamsArgs(
                platform_namespace=ns.name,
                instance=instance,
                teams=config.teams,
                defaults=config.namespace.defaults,
                network=config.network,
                mlflow_port=MLFLOW_PORT,
                launcher_cluster_role=launcher.tasks_role.metadata.name if launcher else None,
                launcher_subject=launcher.subject if launcher else None,
                kueue=queues is not None,
                kueue_ready=queues.ready if queues is not None else [],
                protect=config.storage.protect_data,
            ),
            opts=after_ns,
        )
    t = config.training
    training = TrainingJob(
        "training",
        TrainingArgs(
            spec=training_spec(config, storage.sub_paths[CHECKPOINT_CLAIM]),
            depends_on=[ns.namespace, rbac.service_account, storage.claims[CHECKPOINT_CLAIM], mlflow.service],
            wait=t.wait,
            timeout_minutes=t.timeout_minutes,
        ),
        # Through Kueue, the Job waits for its LocalQueue (Kueue would hold it as inadmissible until it exists).
        opts=pulumi.ResourceOptions(depends_on=[ns, mlflow, *([queues] if queues is not None else [])]),
    )
    ingress = None
    if config.inference.ingress_enabled:
        issuer = None
        if config.tls.enabled:
            tls = Tls(
                "tls",
                TlsArgs(
                    namespace=ns.name,
                    install_cert_manager=config.tls.install_cert_manager,
                    cert_manager_namespace=config.tls.cert_manager_namespace,
                    cert_manager_chart=config.tls.cert_manager_chart,
                    cert_manager_images=config.tls.cert_manager_images,
                    cert_manager_version=config.tls.cert_manager_version,
                    issuer=config.tls.issuer,
                    acme_email=config.tls.acme_email,
                    acme_server=config.tls.acme_server,
                    ingress_class=config.inference.ingress_class,
                    instance=instance,
                ),
                opts=after_ns,
            )
            issuer = tls.issuer_name
        ingress = IngressArgs(
            host=config.inference.ingress_host, class_name=config.inference.ingress_class, tls_issuer=issuer
        )
    inf = config.inference
    inference = InferenceService(
        "inference",
        InferenceArgs(
            namespace=ns.name,
            image=config.image,
            image_pull_policy=config.image_pull_policy,
            model_uri=f"models:/{inf.model_name}@{inf.model_alias}",
            tracking_uri=mlflow.tracking_uri,
            resources=inf.resources,
            service_type=config.service_type,
            node_port=inf.node_port,
            min_replicas=inf.min_replicas,
            max_replicas=inf.max_replicas,
            cpu_utilization=inf.cpu_utilization,
            scale_up_window_s=inf.scale_up_window_s,
            scale_down_window_s=inf.scale_down_window_s,
            instance=instance,
            # Waiting for training means a model exists by the time the Deployment rolls out: await it then.
            await_ready=t.wait,
            ingress=ingress,
            pod_annotations=pod_annotations(INFERENCE_TARGET, operator_mode),
        ),
        opts=pulumi.ResourceOptions(depends_on=[ns, mlflow, *([training] if t.wait else [])]),
    )
    monitoring = config.monitoring
    Monitoring(
        "monitoring",
        MonitoringArgs(
            namespace=config.namespace.name,
            instance=instance,
            targets=scrape_targets(config),
            prometheus_operator=operator_mode,
            prometheus_namespace=monitoring.prometheus_namespace,
            selector_labels=dict(monitoring.selector_labels),
            grafana_dashboards=monitoring.grafana_dashboards,
            grafana_folder=monitoring.grafana_folder,
            thresholds=monitoring.thresholds,
        ),
        opts=after_ns,
    )
    outputs: dict[str, pulumi.Output[object]] = {
        "namespace": ns.name,
        "jobName": training.job_name,
        "rank0Address": training.rank0_address,
        "inferenceUrl": inference.url,
        "mlflowUrl": mlflow.tracking_uri,
    }
    if config.service_type == "NodePort":
        outputs["inferenceNodePort"] = pulumi.Output.from_input(inf.node_port)
        outputs["mlflowNodePort"] = pulumi.Output.from_input(config.mlflow.node_port)
    return outputs


def main() -> None:
    # Validation happens here, before the first resource: a bad stack config declares nothing.
    config = StackConfig.load()
    for key, value in build(config).items():
        pulumi.export(key, value)
