"""MLflow tracking server (Deployment + Service) with sqlite on its volume, or a PostgreSQL StatefulSet."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.common import (
    checkov_skips,
    container_security_context,
    http_service_spec,
    labels,
    pod_security_context,
    resource_requirements,
    selector_labels,
    tmp_volume,
)
from infra.config import Resources

MLFLOW_PORT = 5000
SERVICE_NAME = "mlflow"
POSTGRES_PORT = 5432
# Secret files are mounted here; the official postgres image reads POSTGRES_PASSWORD_FILE.
PASSWORD_DIR = "/etc/postgres"
# argv: the command to exec with MLFLOW_BACKEND_STORE_URI set from the password file (trailing newline dropped).
BACKEND_URI_FROM_SECRET = f"""\
import os, sys, urllib.parse
with open("{PASSWORD_DIR}/password") as f:
    password = urllib.parse.quote(f.read().rstrip("\\r\\n"), safe="")
os.environ["MLFLOW_BACKEND_STORE_URI"] = f"postgresql://mlflow:{{password}}@postgres:{POSTGRES_PORT}/mlflow"
os.execvp(sys.argv[1], sys.argv[1:])
"""
# `mlflow server --expose-prometheus DIR` serves /metrics on the http port (prometheus_flask_exporter in multiprocess
# mode, which keeps its files in DIR: on the writable /tmp emptyDir).
METRICS_DIR = "/tmp/prometheus-metrics"


@dataclass(frozen=True)
class PostgresArgs:
    image: str
    """PostgreSQL image."""
    storage_size: str
    """Size of its volume."""
    storage_class: str
    """StorageClass of its volume ("" = cluster default)."""
    password: pulumi.Input[str]
    """Password of the `mlflow` database user (a Pulumi secret); lands only in a Kubernetes Secret."""
    resources: Resources
    """Requests and limits of the database container."""


@dataclass(frozen=True)
class MlflowArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Image with the `mlflow` CLI (the services image)."""
    image_pull_policy: str
    """Pull policy of `image`."""
    claim_name: pulumi.Input[str]
    """PVC holding the sqlite database and the served artifacts."""
    service_type: str
    """NodePort or ClusterIP."""
    node_port: int
    """NodePort when service_type is NodePort."""
    resources: Resources
    """Requests and limits of the MLflow container."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    postgres: PostgresArgs | None = None
    """PostgreSQL backend; None keeps sqlite on the volume."""
    data_sub_path: str | None = None
    """subPath of the claim to mount at /mlflow (host-path volumes), or None for the whole volume."""
    pod_annotations: dict[str, str] = field(default_factory=dict)
    """Annotations of the pod template (the prometheus.io/* scrape annotations without the Prometheus Operator)."""


def tracking_uri(namespace: str, service: str = SERVICE_NAME) -> str:
    """The tracking server's in-cluster URL in `namespace` (`Mlflow.tracking_uri` is this of its Service)."""
    return f"http://{service}.{namespace}.svc.cluster.local:{MLFLOW_PORT}"


class Mlflow(pulumi.ComponentResource):
    """One MLflow server with `--serve-artifacts`, so trainers upload and inference pods download artifacts over
    HTTP and need no shared filesystem. One replica with the Recreate strategy: sqlite and an RWO volume admit
    only one writer at a time."""

    service_name: pulumi.Output[str]
    """Name of the MLflow Service."""
    tracking_uri: pulumi.Output[str]
    """In-cluster tracking URI (http://mlflow.<namespace>.svc.cluster.local:5000)."""

    def __init__(self, name: str, args: MlflowArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:mlflow:Mlflow", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels("mlflow", args.instance, "tracking")
        selector = selector_labels("mlflow", args.instance)
        service_name = SERVICE_NAME

        env = [
            k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
            # MLflow >= 3.x starts background job workers (three more Python processes, ~1.1 GB) unless told not to:
            # the pod was OOMKilled at its limit every ~15 s on the real cluster. The platform runs no MLflow jobs.
            k8s.core.v1.EnvVarArgs(name="MLFLOW_SERVER_ENABLE_JOB_EXECUTION", value="false"),
            # Prometheus scrapes the pod by its IP, so that is the Host header; the allow list below names it.
            k8s.core.v1.EnvVarArgs(
                name="POD_IP",
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path="status.podIP")
                ),
            ),
        ]
        init_containers: list[k8s.core.v1.ContainerArgs] = []
        extra_mounts: list[k8s.core.v1.VolumeMountArgs] = []
        extra_volumes: list[k8s.core.v1.VolumeArgs] = []
        names = [service_name, *(f"{service_name}.{{ns}}{suffix}" for suffix in ("", ".svc", ".svc.cluster.local"))]
        # $(POD_IP) is expanded by the kubelet from the env above (Prometheus's scrapes).
        allowed_hosts = ",".join([*names, *(f"{n}:*" for n in names), "localhost:*", "127.0.0.1:*", "$(POD_IP):*"])
        server_args = [
            "--host", "0.0.0.0",
            "--port", str(MLFLOW_PORT),
            "--workers", "1",
            "--serve-artifacts",
            "--artifacts-destination", "/mlflow/artifacts",
            "--expose-prometheus", METRICS_DIR,
        ]  # fmt: skip
        if args.postgres is None:
            server_args += ["--backend-store-uri", "sqlite:////mlflow/mlflow.db"]
            command: list[str] = ["mlflow", "server"]
        else:
            self._postgres(name, args, args.postgres)
            extra_mounts.append(
                k8s.core.v1.VolumeMountArgs(name="postgres-password", mount_path=PASSWORD_DIR, read_only=True)
            )
            extra_volumes.append(self._password_volume())
            # The password is read from the mounted Secret file at start, so it is in no env var and no pod spec,
            # and percent-encoded into the URI, so any character works (`@ : / # ?` would break a raw one).
            command = ["python", "-c", BACKEND_URI_FROM_SECRET, "mlflow", "server"]
            init_containers.append(
                k8s.core.v1.ContainerArgs(
                    name="wait-for-postgres",
                    image=args.postgres.image,
                    image_pull_policy=args.image_pull_policy,
                    command=["sh", "-c", f"until pg_isready -h postgres -p {POSTGRES_PORT}; do sleep 2; done"],
                    resources=resource_requirements(args.postgres.resources),
                    security_context=container_security_context(),
                    volume_mounts=[k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")],
                )
            )
        # Host-header allow list (DNS-rebinding protection): every in-cluster name of the Service, localhost for
        # port-forwards and the kind port mapping, and the pod's own IP for Prometheus.
        full_command = pulumi.Output.from_input(args.namespace).apply(
            lambda ns: [*command, *server_args, "--allowed-hosts", allowed_hosts.replace("{ns}", ns)]
        )
        probe = k8s.core.v1.HTTPGetActionArgs(path="/health", port="http")
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="mlflow",
                namespace=args.namespace,
                labels=meta_labels,
                annotations=checkov_skips(
                    images=[args.image, *([args.postgres.image] if args.postgres else [])],
                    pull_policy=args.image_pull_policy,
                ),
            ),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=meta_labels, annotations=args.pod_annotations or None),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        security_context=pod_security_context(),
                        init_containers=init_containers or None,
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="mlflow",
                                image=args.image,
                                image_pull_policy=args.image_pull_policy,
                                command=full_command,
                                env=env,
                                ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=MLFLOW_PORT)],
                                resources=resource_requirements(args.resources),
                                security_context=container_security_context(),
                                startup_probe=k8s.core.v1.ProbeArgs(
                                    http_get=probe, period_seconds=5, failure_threshold=60
                                ),
                                readiness_probe=k8s.core.v1.ProbeArgs(http_get=probe, period_seconds=10),
                                liveness_probe=k8s.core.v1.ProbeArgs(
                                    http_get=probe, period_seconds=20, failure_threshold=3
                                ),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(
                                        name="data", mount_path="/mlflow", sub_path=args.data_sub_path
                                    ),
                                    k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                                    *extra_mounts,
                                ],
                            )
                        ],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="data",
                                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                                    claim_name=args.claim_name
                                ),
                            ),
                            tmp_volume(size="1Gi"),
                            *extra_volumes,
                        ],
                    ),
                ),
            ),
            opts=child,
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=service_name, namespace=args.namespace, labels=meta_labels),
            spec=http_service_spec(args.service_type, selector, MLFLOW_PORT, args.node_port),
            opts=child,
        )
        self.service_name = self.service.metadata.name
        self.tracking_uri = pulumi.Output.all(args.namespace, self.service.metadata.name).apply(
            lambda names: tracking_uri(names[0], names[1])
        )
        self.register_outputs({"service_name": self.service_name, "tracking_uri": self.tracking_uri})

    def _postgres(self, name: str, args: MlflowArgs, pg: PostgresArgs) -> None:
        """A one-replica PostgreSQL StatefulSet, its headless Service and the Secret with its password."""
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels("postgres", args.instance, "database")
        selector = selector_labels("postgres", args.instance)
        self.secret = k8s.core.v1.Secret(
            f"{name}-postgres-secret",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="postgres", namespace=args.namespace, labels=meta_labels),
            type="Opaque",
            string_data={"password": pulumi.Output.secret(pg.password)},
            opts=child,
        )
        pg_ready = k8s.core.v1.ExecActionArgs(command=["pg_isready", "-U", "mlflow", "-d", "mlflow", "-h", "127.0.0.1"])
        self.postgres_service = k8s.core.v1.Service(
            f"{name}-postgres-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="postgres", namespace=args.namespace, labels=meta_labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                cluster_ip="None",
                selector=selector,
                ports=[k8s.core.v1.ServicePortArgs(name="postgres", port=POSTGRES_PORT, target_port="postgres")],
            ),
            opts=child,
        )
        self.postgres = k8s.apps.v1.StatefulSet(
            f"{name}-postgres",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="postgres",
                namespace=args.namespace,
                labels=meta_labels,
                annotations=checkov_skips(images=[pg.image], pull_policy=args.image_pull_policy),
            ),
            spec=k8s.apps.v1.StatefulSetSpecArgs(
                replicas=1,
                service_name=self.postgres_service.metadata.name,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=meta_labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        # The official image runs as any uid (nss_wrapper); fsGroup makes the volume writable.
                        security_context=pod_security_context(),
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="postgres",
                                image=pg.image,
                                image_pull_policy=args.image_pull_policy,
                                env=[
                                    k8s.core.v1.EnvVarArgs(name="POSTGRES_USER", value="mlflow"),
                                    k8s.core.v1.EnvVarArgs(name="POSTGRES_DB", value="mlflow"),
                                    k8s.core.v1.EnvVarArgs(name="PGDATA", value="/var/lib/postgresql/data/pgdata"),
                                    k8s.core.v1.EnvVarArgs(
                                        name="POSTGRES_PASSWORD_FILE", value=f"{PASSWORD_DIR}/password"
                                    ),
                                ],
                                ports=[k8s.core.v1.ContainerPortArgs(name="postgres", container_port=POSTGRES_PORT)],
                                resources=resource_requirements(pg.resources),
                                security_context=container_security_context(),
                                readiness_probe=k8s.core.v1.ProbeArgs(exec_=pg_ready, period_seconds=10),
                                liveness_probe=k8s.core.v1.ProbeArgs(
                                    exec_=pg_ready, period_seconds=20, initial_delay_seconds=30
                                ),
                                volume_mounts=[
                                    k8s.core.v1.VolumeMountArgs(name="data", mount_path="/var/lib/postgresql/data"),
                                    k8s.core.v1.VolumeMountArgs(name="run", mount_path="/var/run/postgresql"),
                                    k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                                    k8s.core.v1.VolumeMountArgs(
                                        name="postgres-password", mount_path=PASSWORD_DIR, read_only=True
                                    ),
                                ],
                            )
                        ],
                        volumes=[tmp_volume("run", "16Mi"), tmp_volume(), self._password_volume()],
                    ),
                ),
                volume_claim_templates=[
                    k8s.core.v1.PersistentVolumeClaimArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(name="data", labels=meta_labels),
                        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                            access_modes=["ReadWriteOnce"],
                            storage_class_name=pg.storage_class or None,
                            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": pg.storage_size}),
                        ),
                    )
                ],
            ),
            opts=child,
        )

    def _password_volume(self) -> k8s.core.v1.VolumeArgs:
        # 0440 with the pod's fsGroup: readable by the non-root container, by nobody else.
        return k8s.core.v1.VolumeArgs(
            name="postgres-password",
            secret=k8s.core.v1.SecretVolumeSourceArgs(secret_name=self.secret.metadata.name, default_mode=0o440),
        )
