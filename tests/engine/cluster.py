"""A local Kubernetes control plane without containers, for the engine tier of the tests.

etcd, kube-apiserver (TLS, RBAC, the admission plugins a real cluster runs: NamespaceLifecycle, LimitRanger,
ServiceAccount, PodSecurity, ResourceQuota, ...), kube-controller-manager, kube-scheduler and kwok, all on
127.0.0.1 with generated certificates and kubeconfigs. kwok simulates the nodes' kubelets: a CPU node and a
GPU node (nvidia.com/gpu capacity, the GPU label and taint of Pulumi.gpu.yaml); pods get scheduled by the
real scheduler, become Ready, and pods owned by a Job complete.

Binaries come from tests/engine/toolchain.sh (its cache directory). Used by tests/engine/conftest.py and by
`python -m tests.engine.cluster --toolchain DIR` (`make cluster-local`), which prints the kubeconfig path
and runs until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lightkube import ALL_NS, Client, KubeConfig, LoadResourceError
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.models import Cluster, User
from lightkube.core.resource import ApiInfo, NamespacedResource, api_info
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import Generic, GenericGlobalResource, GenericNamespacedResource, create_api_info
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.types import CascadeType

T = TypeVar("T")

TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
CPU_NODE = "kwok-cpu-0"
GPU_NODE = "kwok-gpu-0"
SERVICE_CIDR = "10.96.0.0/16"
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,ResourceQuota,DefaultStorageClass,"
    "DefaultTolerationSeconds,StorageObjectInUseProtection,PersistentVolumeClaimResize,RuntimeClass,"
    "Priority,TaintNodesByCondition,DefaultIngressClass,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,"
    "ValidatingAdmissionWebhook"
)


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates -----------------------------------------------------------------------------------------
def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool = False,
    server_names: Iterable[str] = (),
    server_ips: Iterable[str] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = []
        if server_names or server_ips:
            usages.append(x509.ExtendedKeyUsageOID.SERVER_AUTH)
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if client:
            usages.append(x509.ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass
class Pki:
    dir: Path
    ca_cert: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_name = _name("ml-platform-engine-test-ca")
        ca = _cert(self._ca_name, self._ca_key, self._ca_name, self._ca_key, ca=True)
        self.ca_cert = self.dir / "ca.crt"
        self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (self.dir / "ca.key").write_bytes(_pem_key(self._ca_key))
        # The service-account token signing key pair (RSA: what every component accepts).
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(_pem_key(sa))
        (self.dir / "sa.pub").write_bytes(
            sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def issue(self, name: str, cn: str, org: str | None = None, **kw: Any) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(_name(cn, org), key, self._ca_name, self._ca_key, **kw)
        crt_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return crt_path, key_path


def write_kubeconfig(path: Path, server: str, ca: Path, crt: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the tests' Kubernetes client: a thin dict-in, dict-out adapter over lightkube ----------------------------
FIELD_MANAGER = "ml-platform-engine-test"


class ApiError(RuntimeError):
    """The API server refused a request: `status` is the HTTP status, `body` the decoded answer (a Status object
    as a dict, or text)."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{what}: HTTP {status}: {message}")


class StrictWrites(httpx2.HTTPTransport):
    """Every create, update and apply asks for strict field validation, so unknown or duplicate fields are errors
    (the API server only warns by default); lightkube's create and apply have no parameter for it, its Client
    takes a transport."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method in ("POST", "PUT", "PATCH"):
            request.url = request.url.copy_merge_params({"fieldValidation": "Strict"})
        return super().handle_request(request)


Resource = type[GenericNamespacedResource] | type[GenericGlobalResource]


class Api:
    """What the tests need of the Kubernetes API, on lightkube, with plain dicts in and out: server-side apply
    and create (strict field validation), get, list, delete, events, pod logs and the API server's readiness.

    Objects go through lightkube's generic (dict) resources, never its typed models, so what a test sends is what
    the API server sees (an unknown field must reach it to be refused) and what it gets back is the server's JSON.
    Kinds are found in lightkube's built-in resources or, for custom resources, in the cluster's CRDs."""

    def __init__(self, server: str, ca: Path, crt: Path, key: Path) -> None:
        self.server = server
        config = KubeConfig.from_one(
            cluster=Cluster(server=server, certificate_auth=str(ca)),
            user=User(client_cert=str(crt), client_key=str(key)),
        )
        single = config.get()
        assert single is not None and single.user is not None  # from_one made both
        # A Client given a transport leaves TLS to it: the CA and client certificate of `config`, as lightkube
        # reads them.
        tls = verify_cluster(single.cluster, single.user, single.abs_file)
        self.client = Client(
            config, timeout=httpx2.Timeout(30.0), field_manager=FIELD_MANAGER, transport=StrictWrites(verify=tls)
        )
        self._plain = httpx2.Client(base_url=server, verify=tls, timeout=30.0)  # /readyz: not a resource
        self._resources: dict[tuple[str, str], Resource] = {}

    def close(self) -> None:
        self.client.close()
        self._plain.close()

    def ready(self) -> bool:
        """Whether the API server's /readyz answers 200 (raises httpx2.HTTPError while it does not listen)."""
        return self._plain.get("/readyz").status_code == 200

    def resource(self, api_version: str, kind: str) -> Resource:
        """lightkube's generic resource class for a kind: plural and scope from lightkube's built-in resources,
        else from the cluster's CustomResourceDefinitions (read again on a miss: a test may just have made one)."""
        if (api_version, kind) not in self._resources:
            try:
                builtin = resource_registry.load(api_version, kind)
            except LoadResourceError:
                info, namespaced = self._custom_resource(api_version, kind)
            else:
                info, namespaced = api_info(builtin), issubclass(builtin, NamespacedResource)
            base = GenericNamespacedResource if namespaced else GenericGlobalResource
            # lightkube's create_*_resource would register the class globally, where the typed built-in classes
            # live; a class of our own, with the same ApiInfo, keeps this client's dicts out of that registry.
            self._resources[(api_version, kind)] = type(kind, (base,), {"_api_info": info})
        return self._resources[(api_version, kind)]

    def _custom_resource(self, api_version: str, kind: str) -> tuple[ApiInfo, bool]:
        group, _, version = api_version.rpartition("/")
        crds = self._call("list CustomResourceDefinitions", lambda: list(self.client.list(CustomResourceDefinition)))
        for crd in crds:
            spec = crd.spec
            if spec is None or (spec.group, spec.names.kind) != (group, kind):
                continue
            if any(v.name == version for v in spec.versions):
                return create_api_info(group, version, kind, spec.names.plural), spec.scope == "Namespaced"
        raise ApiError(404, f"no {kind} in {api_version}", "discovery")

    @staticmethod
    def _call(what: str, request: Callable[[], T]) -> T:
        try:
            return request()
        except httpx2.HTTPStatusError as err:  # lightkube's ApiError is one
            try:
                body: Any = err.response.json()
            except ValueError:
                body = err.response.text
            raise ApiError(err.response.status_code, body, what) from None

    @staticmethod
    def _what(verb: str, kind: str, name: str, namespace: str | None) -> str:
        return f"{verb} {kind} {namespace or ''}/{name}"

    def apply(self, obj: Mapping[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply with strict field validation: unknown or duplicate fields are errors, as are
        invalid values, immutable-field changes and admission rejections."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        what = self._what("apply", obj["kind"], meta["name"], meta.get("namespace"))
        applied = self._call(
            what, lambda: self.client.apply(res.from_dict(dict(obj)), field_manager=manager, force=True)
        )
        return dict(applied.to_dict())

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        what = self._what("create", obj["kind"], meta["name"], meta.get("namespace"))
        return dict(self._call(what, lambda: self.client.create(res.from_dict(dict(obj)))).to_dict())

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        res = self.resource(api_version, kind)

        def get() -> Generic:
            if issubclass(res, GenericNamespacedResource):
                return self.client.get(res, name, namespace=namespace)
            return self.client.get(res, name)

        try:
            return dict(self._call(self._what("get", kind, name, namespace), get).to_dict())
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def items(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind in `namespace`, or in every namespace when it is None; `selector` is a label selector
        of `key=value` terms joined by commas."""
        res = self.resource(api_version, kind)
        terms = label_terms(selector) if selector else {}

        def items() -> list[Generic]:
            if issubclass(res, GenericNamespacedResource):
                return list(self.client.list(res, namespace=namespace or ALL_NS, labels={**terms}))
            return list(self.client.list(res, labels={**terms}))

        return [dict(obj.to_dict()) for obj in self._call(f"list {kind} in {namespace or 'all namespaces'}", items)]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete in the foreground (dependents first); an object that is not there is not an error."""
        res = self.resource(api_version, kind)

        def delete() -> None:
            if issubclass(res, GenericNamespacedResource):
                self.client.delete(res, name, namespace=namespace, cascade=CascadeType.FOREGROUND)
            else:
                self.client.delete(res, name, cascade=CascadeType.FOREGROUND)

        try:
            self._call(self._what("delete", kind, name, namespace), delete)
        except ApiError as err:
            if err.status != 404:
                raise

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self.items("v1", "Event", namespace)

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """A pod's log so far (one container's, where the pod has several)."""
        what = f"log of pod {namespace}/{name}"
        return "".join(self._call(what, lambda: list(self.client.log(name, namespace=namespace, container=container))))


def label_terms(selector: str) -> dict[str, str]:
    """`a=b,c=d` as lightkube's label dict; other selector forms are refused rather than misread."""
    terms = {}
    for term in selector.split(","):
        label, sep, value = term.partition("=")
        if not sep or label.endswith("!") or value.startswith("=") or not label.strip():
            raise ValueError(f"label selector {selector!r}: only key=value terms are supported")
        terms[label.strip()] = value.strip()
    return terms


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; raise with the last value (or error) on timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (ApiError, httpx.HTTPError, httpx2.HTTPError) as err:
            last = err
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval_s)


def condition(obj: Mapping[str, Any] | None, kind: str) -> str | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


# --- the control plane ------------------------------------------------------------------------------------
def node_object(name: str, *, cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "kwok",
        "type": "kwok",
    }
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "200Gi"}
    spec: dict[str, Any] = {}
    if gpus:
        labels["nvidia.com/gpu.present"] = "true"
        capacity["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
            },
        },
    }


# Inference pods answer /readyz only once a model version carries the alias; until training registers one they
# run but stay unready. kwok's general pod-ready stage would make them Ready at once and hide what `pulumi up`
# does on a fresh cluster, so these pods get a stage of their own that starts them without readiness.
NEVER_READY_LABEL = ("app.kubernetes.io/name", "inference")


def stages_with_unready_pods(stages_yaml: str, label: tuple[str, str]) -> str:
    """kwok's stages, with pods carrying `label` moved from the pod-ready stage to a running-but-unready one."""
    key = f'.metadata.labels["{label[0]}"]'
    stages = list(yaml.safe_load_all(stages_yaml))
    out = []
    for stage in stages:
        if not stage:
            continue
        out.append(stage)
        if stage["metadata"]["name"] != "pod-ready":
            continue
        unready = json.loads(json.dumps(stage))
        stage["spec"]["selector"]["matchExpressions"].append({"key": key, "operator": "NotIn", "values": [label[1]]})
        unready["metadata"]["name"] = "pod-running-unready"
        unready["spec"]["selector"]["matchExpressions"].append({"key": key, "operator": "In", "values": [label[1]]})
        unready["spec"]["delay"] = {"durationMilliseconds": 500}
        unready["spec"].pop("weightFrom", None)
        template = unready["spec"]["next"]["statusTemplate"]
        for was, now in (('status: "True"', 'status: "False"'), ("ready: true", "ready: false")):
            assert was in template, f"kwok's pod-ready stage changed: no {was!r}"
            template = template.replace(was, now)
        unready["spec"]["next"]["statusTemplate"] = template
        out.append(unready)
    return yaml.safe_dump_all(out, sort_keys=False)


class LocalCluster:
    """Start with `start()`, stop with `stop()` (also a context manager). `kubeconfig` is the admin kubeconfig;
    `api` an admin client."""

    def __init__(self, toolchain: Path, workdir: Path | None = None, *, verbose: bool = False) -> None:
        self.toolchain = toolchain
        missing = [t for t in TOOLS if not (toolchain / t).is_file()]
        if missing or not (toolchain / "kwok-stages.yaml").is_file():
            raise ClusterError(
                f"toolchain {toolchain} lacks {', '.join(missing) or 'kwok-stages.yaml'}: run tests/engine/toolchain.sh"
            )
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="ml-platform-cluster-"))
        self.logs = self.workdir / "logs"
        self.verbose = verbose
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.api: Api
        self.kubeconfig: Path

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [str(self.toolchain / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        pki = Pki(self.workdir / "pki")
        ca = pki.ca_cert
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))

        self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def etcd_healthy() -> bool:
            self._check_alive()
            return httpx.get(f"http://127.0.0.1:{etcd_client}/health").status_code == 200

        wait_for("etcd", etcd_healthy, 60)

        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          "kubernetes.default.svc.cluster.local"],
            server_ips=["127.0.0.1", service_ip],
        )  # fmt: skip
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={ca}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki.dir / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-node-port-range=30000-32767",
                "--authorization-mode=Node,RBAC",
                f"--enable-admission-plugins={ADMISSION_PLUGINS}",
                "--allow-privileged=true",  # as kind and most clusters: Pod Security decides
                "--profiling=false",
                "--v=1",
            ],
        )
        admin = pki.issue("admin", "admin", "system:masters", client=True)
        self.kubeconfig = write_kubeconfig(self.workdir / "kubeconfig", server, ca, *admin, user="admin")
        self.api = Api(server, ca, *admin)

        def ready() -> bool:
            self._check_alive()
            return self.api.ready()

        wait_for("kube-apiserver /readyz", ready, 180)

        cm = pki.issue("controller-manager", "system:kube-controller-manager", client=True)
        cm_kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig", server, ca, *cm, user="system:kube-controller-manager"
        )
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.dir / 'sa.key'}",
                f"--root-ca-file={ca}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                "--concurrent-job-syncs=5",
                "--pvclaimbinder-sync-period=2s",
                # Its default, /usr/libexec/kubernetes/..., would be created on the machine.
                f"--flex-volume-plugin-dir={self.workdir / 'flexvolume'}",
                "--profiling=false",
                "--v=1",
            ],
        )
        sched = pki.issue("scheduler", "system:kube-scheduler", client=True)
        sched_kubeconfig = write_kubeconfig(
            self.workdir / "scheduler.kubeconfig", server, ca, *sched, user="system:kube-scheduler"
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--profiling=false",
                "--v=1",
            ],
        )
        stages = self.workdir / "kwok-stages.yaml"
        kwok_stages = (self.toolchain / "kwok-stages.yaml").read_text()
        stages.write_text(stages_with_unready_pods(kwok_stages, NEVER_READY_LABEL))
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--node-ip=10.244.0.1",
                "--cidr=10.244.0.0/16",
                f"--node-port={free_port()}",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-lease-duration-seconds=40",
            ],
        )
        for node in (node_object(CPU_NODE, cpu="16", memory="64Gi"),
                     node_object(GPU_NODE, cpu="96", memory="768Gi", gpus=8)):  # fmt: skip
            self.api.create(node)

        def nodes_ready() -> bool:
            self._check_alive()
            return all(condition(self.api.get("v1", "Node", n), "Ready") == "True" for n in (CPU_NODE, GPU_NODE))

        wait_for("kwok nodes Ready", nodes_ready, 120)

        def default_sa() -> bool:
            self._check_alive()
            return self.api.get("v1", "ServiceAccount", "default", "default") is not None

        wait_for("the default ServiceAccount (controller-manager up)", default_sa, 120)

    def stop(self) -> None:
        # One at a time, clients first (kwok, scheduler, controller-manager), then the API server, then etcd: an
        # API server told to stop while its clients still watch waits for them.
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        if hasattr(self, "api"):
            self.api.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.engine.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--toolchain", type=Path, required=True, help="directory printed by toolchain.sh")
    parser.add_argument(
        "--workdir", type=Path, help="where certs, data and logs go and stay (default: a temp dir, removed at the end)"
    )
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve() if args.workdir else None
    if workdir:
        workdir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(args.toolchain.resolve(), workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with cluster:
        print(f"logs: {cluster.logs}", file=sys.stderr)
        print(f"control plane up at {cluster.api.server}; Ctrl-C stops it", file=sys.stderr)
        print(cluster.kubeconfig, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
