"""The control plane of both test clusters, written once: etcd, kube-apiserver (TLS, RBAC, the admission plugins a
real cluster runs), kube-controller-manager and kube-scheduler, with certificates and kubeconfigs from one `Pki`.

`ControlPlaneSpec` says what differs between the clusters: where each component listens, the address the
components reach the API server at, and the flags only one of them needs (LocalCluster: faster Job and volume
syncs for kwok; RealCluster: the kubelet's client certificate and NodeRestriction).

Both API servers run the aggregation layer (the front proxy's CA and client certificate of the `Pki`), so an
APIService such as Kueue's visibility.kueue.x-k8s.io is served through them. Neither needs
--enable-aggregator-routing: the real cluster's API server reaches Service ClusterIPs through kube-proxy in its
network namespace, and on the engine tier (no kube-proxy) the only way to a server on 127.0.0.1 is an ExternalName
Service, which the ClusterIP resolver follows and the endpoint resolver refuses (an EndpointSlice may not hold a
loopback address)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness.api import Api
from tests.harness.pki import FRONT_PROXY_CLIENT, Pki, write_kubeconfig
from tests.harness.procs import Processes

CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
CLUSTER_DOMAIN = "cluster.local"
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,ResourceQuota,DefaultStorageClass,"
    "DefaultTolerationSeconds,StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,"
    "Priority,TaintNodesByCondition,DefaultIngressClass,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,"
    "ValidatingAdmissionWebhook"
)


@dataclass(frozen=True, kw_only=True)
class ControlPlaneSpec:
    """Where the control plane lives and listens, and what one cluster adds to it."""

    toolchain: Path
    """The directory with etcd, kube-apiserver, kube-controller-manager and kube-scheduler."""
    workdir: Path
    """etcd's data and the components' certificate directories go here."""
    config_dir: Path
    """Where the components' kubeconfigs are written."""
    etcd_client_port: int
    etcd_peer_port: int
    etcd_metrics_port: int | None = None
    """A metrics (and /health) listener of etcd's own; None: /health on the client port."""
    api_bind: str
    """kube-apiserver's --bind-address."""
    api_advertise: str
    """kube-apiserver's --advertise-address, also in its serving certificate."""
    api_port: int
    component_server: str
    """The URL the controller manager and the scheduler (and the node's daemons) reach the API server at."""
    controller_manager_port: int
    scheduler_port: int
    flex_volume_dir: Path
    """The controller manager's flex volume directory (its default would be created on the machine)."""
    admission_plugins: str = ADMISSION_PLUGINS
    apiserver_args: tuple[str, ...] = ()
    """Flags kube-apiserver gets besides the common ones."""
    controller_manager_args: tuple[str, ...] = ()
    """Flags kube-controller-manager gets besides the common ones."""


class ControlPlane:
    """Starts the components one by one (`start_etcd`, `start_apiserver`, `connect_admin`, `start_controllers`),
    each spawned through `procs`, which also stops them; a cluster adds what it needs between the steps."""

    def __init__(self, spec: ControlPlaneSpec, pki: Pki, procs: Processes) -> None:
        self.spec = spec
        self.pki = pki
        self.procs = procs

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        self.procs.spawn(name, [str(self.spec.toolchain / name), *args])

    def component_kubeconfig(self, name: str, cn: str, org: str | None = None) -> Path:
        """A client certificate for `cn` (in `org`) and a kubeconfig with it for the components' server URL."""
        crt, key = self.pki.issue(name, cn, org, client=True)
        return write_kubeconfig(
            self.spec.config_dir / f"{name}.kubeconfig", self.spec.component_server, self.pki.ca_cert, crt, key,
            user=cn,
        )  # fmt: skip

    def start_etcd(self, http_ok: Callable[[str], bool]) -> None:
        """etcd, waited for until `http_ok` says its /health answers 200 (the real cluster asks from inside its
        network namespace)."""
        spec = self.spec
        client, peer = f"http://127.0.0.1:{spec.etcd_client_port}", f"http://127.0.0.1:{spec.etcd_peer_port}"
        metrics = (
            []
            if spec.etcd_metrics_port is None
            else [f"--listen-metrics-urls=http://127.0.0.1:{spec.etcd_metrics_port}"]
        )
        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={spec.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                *metrics,
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        health = f"http://127.0.0.1:{spec.etcd_metrics_port or spec.etcd_client_port}/health"
        self.procs.eventually("etcd", lambda: http_ok(health), 60)

    def start_apiserver(self) -> None:
        spec, pki = self.spec, self.pki
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          f"kubernetes.default.svc.{CLUSTER_DOMAIN}"],
            server_ips=list(dict.fromkeys(["127.0.0.1", spec.api_advertise, SERVICE_IP])),
        )  # fmt: skip
        proxy_client = pki.issue_front_proxy_client()
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{spec.etcd_client_port}",
                f"--bind-address={spec.api_bind}",
                f"--advertise-address={spec.api_advertise}",
                f"--secure-port={spec.api_port}",
                f"--cert-dir={spec.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={pki.ca_cert}",
                # The aggregation layer: who the API server is when it proxies to an APIService's server, and
                # the CA and names by which such servers (they read these from kube-system's
                # extension-apiserver-authentication ConfigMap) trust the user it names in the headers.
                f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={proxy_client[0]}",
                f"--proxy-client-key-file={proxy_client[1]}",
                *spec.apiserver_args,
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={pki.dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-node-port-range=30000-32767",
                "--authorization-mode=Node,RBAC",
                f"--enable-admission-plugins={spec.admission_plugins}",
                "--allow-privileged=true",  # as kind and most clusters: Pod Security decides
                "--profiling=false",
                "--v=1",
            ],
        )

    def connect_admin(self, server: str) -> tuple[Path, Api]:
        """The admin kubeconfig (`workdir/kubeconfig`) and client for `server`, the machine's way to the API
        server, once its /readyz answers."""
        admin = self.pki.issue("admin", "admin", "system:masters", client=True)
        kubeconfig = write_kubeconfig(self.spec.workdir / "kubeconfig", server, self.pki.ca_cert, *admin, user="admin")
        api = Api(server, self.pki.ca_cert, *admin)
        self.procs.eventually("kube-apiserver /readyz", api.ready, 180)
        return kubeconfig, api

    def start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler."""
        spec, pki = self.spec, self.pki
        cm = self.component_kubeconfig("controller-manager", "system:kube-controller-manager")
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={cm}",
                f"--authentication-kubeconfig={cm}",
                f"--authorization-kubeconfig={cm}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={spec.controller_manager_port}",
                f"--cert-dir={spec.workdir / 'controller-manager-certs'}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.dir / 'sa.key'}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                *spec.controller_manager_args,
                # Its default, /usr/libexec/kubernetes/kubelet-plugins/volume/exec, would be created on the machine.
                f"--flex-volume-plugin-dir={spec.flex_volume_dir}",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched = self.component_kubeconfig("scheduler", "system:kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={spec.scheduler_port}",
                f"--cert-dir={spec.workdir / 'scheduler-certs'}",
                "--profiling=false",
                "--v=1",
            ],
        )
