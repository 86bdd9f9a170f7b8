"""Kueue's real manager (tests/toolchain/kueue.sh) as a process against the engine tier's LocalCluster.

`KueueManager` installs Kueue's CRDs (the module's config/components/crd/bases: the chart's copies are Helm
templates), writes a Configuration (the chart's, with: the batch/job integration only, fair sharing, no internal
certificate management, no leader election, every listener on 127.0.0.1), starts `kueue` with the admin
kubeconfig (so its ClusterRole is not needed), and registers with the API server:
- its webhooks (the module's config/components/webhook/manifests.yaml, those of the kueue.x-k8s.io and batch
  groups), rewritten to `clientConfig.url: https://127.0.0.1:PORT/<path>` with the CA of a serving certificate
  generated here, so the API server really calls them;
- its visibility API (APIService v1beta2.visibility.kueue.x-k8s.io). The engine tier has no kube-proxy and an
  EndpointSlice may not hold a loopback address, so the APIService names an ExternalName Service whose name is
  127.0.0.1: the aggregator's ClusterIP resolver (the default; no --enable-aggregator-routing) follows it to
  https://127.0.0.1:PORT and checks the certificate against the Service's DNS name.

With internal certificate management off, Kueue reads two certificates from fixed paths: the visibility server's
from /visibility/tls.{crt,key} (pkg/visibility/server.go) and the metrics server's from
/etc/kueue/metrics/certs/tls.{crt,key} (cmd/kueue/main.go). Rather than write into the machine's / and /etc, the
manager runs in a mount namespace of its own (unshare; a user namespace too when not root) whose root is a tmpfs
holding binds of the machine's files plus those two directories, bound to certificate directories generated here;
the namespace and its mounts end with the process. The network namespace is the machine's.

`kueue` is the session fixture (import it into a conftest with `from tests.engine.kueue import kueue`).
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.engine.cluster import LocalCluster
from tests.harness.api import condition
from tests.harness.pki import Pki
from tests.harness.procs import Processes, free_port

HERE = Path(__file__).resolve().parent
TOOLCHAIN_SCRIPT = HERE.parent / "toolchain" / "kueue.sh"
SHIPPED_CONFIG = HERE.parents[1] / "kind" / "kueue-config.yaml"
NAMESPACE = "kueue-system"
CONFIG_API_VERSION = "config.kueue.x-k8s.io/v1beta2"
VISIBILITY_GROUP = "visibility.kueue.x-k8s.io"
VISIBILITY_SERVICE = "kueue-visibility-server"
WEBHOOK_GROUPS = ("kueue.x-k8s.io", "batch")
"""The webhooks registered: Kueue's own kinds and batch/job, the one integration configured. The manifests also
hold those of the other integrations (pods, deployments, JobSets, ...), which this manager does not manage."""
MANAGED_NAMESPACES = {
    "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system",
                                                                                               NAMESPACE]}]
}  # fmt: skip
"""Kueue's default managedJobsNamespaceSelector, written into both its Configuration and the Job webhooks (the
chart does the same)."""

# Runs in the new mount namespace: a tmpfs root holding the machine's top-level entries (directories bound
# recursively, files bound, symlinks such as /bin -> usr/bin copied), /etc likewise one level down, and the two
# certificate directories Kueue reads from fixed paths bound in; then kueue, chrooted into it.
NEW_ROOT = r"""
set -eu
root="$1"; visibility="$2"; metrics="$3"; shift 3
populate() {  # populate DEST SRC SKIP: DEST gets SRC's entries but SKIP
    for entry in "$2"/* "$2"/.[!.]*; do
        name="${entry##*/}"
        if [ "$name" = "$3" ] || { [ ! -e "$entry" ] && [ ! -L "$entry" ]; }; then
            continue
        elif [ -L "$entry" ]; then
            ln -s "$(readlink "$entry")" "$1/$name"
        elif [ -d "$entry" ]; then
            mkdir "$1/$name" && mount --rbind "$entry" "$1/$name"
        else
            touch "$1/$name" && mount --bind "$entry" "$1/$name"
        fi
    done
}
mount -t tmpfs -o mode=0755 kueue-root "$root"
populate "$root" "" etc
mkdir "$root/etc"
populate "$root/etc" /etc kueue
mkdir -p "$root/visibility" "$root/etc/kueue/metrics/certs"
mount --bind "$visibility" "$root/visibility"
mount --bind "$metrics" "$root/etc/kueue/metrics/certs"
exec chroot "$root" "$@"
"""


def toolchain_dir() -> Path:
    env = os.environ.get("ML_PLATFORM_KUEUE_TOOLCHAIN")
    if env:
        return Path(env)
    out = subprocess.run(
        ["bash", str(TOOLCHAIN_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def missing(directory: Path) -> list[str]:
    """What `directory` lacks of a built Kueue toolchain."""
    wanted = ("kueue", "kueue-config/webhooks.yaml", "kueue-config/crd")
    return [name for name in wanted if not (directory / name).exists()]


def shipped_configuration() -> dict[str, Any]:
    """The Configuration docs/teams.md installs Kueue with (kind/kueue-config.yaml: the client's QPS and burst, the
    batch/job integration, fair sharing), for the manager here to start from."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    assert config["apiVersion"] == CONFIG_API_VERSION, f"{SHIPPED_CONFIG}: the Configuration is {config['apiVersion']}"
    return dict(config)


def webhook_configurations(manifests: str, url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations for `WEBHOOK_GROUPS`, each webhook calling `url` + its path."""
    out = []
    for config in yaml.safe_load_all(manifests):
        if not config:
            continue
        hooks = []
        for hook in config["webhooks"]:
            if not any(g in WEBHOOK_GROUPS for rule in hook["rules"] for g in rule["apiGroups"]):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": url + path, "caBundle": base64.b64encode(ca_bundle).decode()}
            if any("batch" in rule["apiGroups"] for rule in hook["rules"]):
                hook["namespaceSelector"] = MANAGED_NAMESPACES
            hooks.append(hook)
        config["metadata"] = {"name": f"kueue-{config['metadata']['name']}"}
        config["webhooks"] = hooks
        out.append(config)
    return out


class KueueManager:
    """Start with `start()`, stop with `stop()` (also a context manager). After `start()`: `visibility` is an
    admin HTTP client of the API server (the visibility API is not a kind the tests' `Api` knows)."""

    def __init__(self, toolchain: Path, cluster: LocalCluster, workdir: Path) -> None:
        self.toolchain = toolchain
        self.cluster = cluster
        self.workdir = workdir
        self.processes = Processes(workdir / "logs")
        self.health_port = free_port()
        self.webhook_port = free_port()
        self.metrics_port = free_port()
        self.visibility_port = free_port()
        self._registered: list[tuple[str, str, str]] = []
        self.visibility: httpx.Client

    def __enter__(self) -> KueueManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _admin_client(self) -> httpx.Client:
        kubeconfig = yaml.safe_load(self.cluster.kubeconfig.read_text())
        user = kubeconfig["users"][0]["user"]
        tls = ssl.create_default_context(cafile=kubeconfig["clusters"][0]["cluster"]["certificate-authority"])
        tls.load_cert_chain(user["client-certificate"], user["client-key"])
        return httpx.Client(base_url=self.cluster.api.server, verify=tls, timeout=30.0)

    def _register(self, obj: dict[str, Any]) -> None:
        self.cluster.api.apply(obj)
        self._registered.append((obj["apiVersion"], obj["kind"], obj["metadata"]["name"]))

    def _start(self) -> None:
        api = self.cluster.api
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.visibility = self._admin_client()
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        crds = []
        for path in sorted((self.toolchain / "kueue-config" / "crd").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            api.apply(crd)
            crds.append(crd["metadata"]["name"])
        for name in crds:
            self.processes.eventually(
                f"CRD {name} Established",
                lambda name=name: condition(api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name),
                                            "Established") == "True",
                60,
            )  # fmt: skip

        pki = Pki(self.workdir / "pki")
        certs = {
            "webhook": ["localhost"],
            "metrics": ["localhost"],
            # The aggregator checks the name of the APIService's Service.
            "visibility": ["localhost", f"{VISIBILITY_SERVICE}.{NAMESPACE}.svc"],
        }
        for name, dns in certs.items():
            crt, key = pki.issue(name, f"kueue-{name}", server_names=dns, server_ips=["127.0.0.1"])
            directory = self.workdir / f"{name}-certs"
            directory.mkdir()
            shutil.copy(crt, directory / "tls.crt")
            shutil.copy(key, directory / "tls.key")
        ca_bundle = pki.ca_cert.read_bytes()

        config = shipped_configuration()
        config.update({
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(self.workdir / "webhook-certs")},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "managedJobsNamespaceSelector": MANAGED_NAMESPACES,
            "visibilityServer": {"bindAddress": "127.0.0.1", "bindPort": self.visibility_port},
        })  # fmt: skip
        config_path = self.workdir / "kueue-config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        root = self.workdir / "root"
        root.mkdir()
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare[1:1] = ["--user", "--map-root-user"]
        self.processes.spawn(
            "kueue",
            [
                *unshare, "sh", "-c", NEW_ROOT, "kueue-root",
                str(root), str(self.workdir / "visibility-certs"), str(self.workdir / "metrics-certs"),
                str(self.toolchain / "kueue"),
                f"--config={config_path}",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--visibility-server-port={self.visibility_port}",
                "--zap-log-level=2",  # the chart's controllerManager.manager.logLevel
            ],
        )  # fmt: skip
        health = f"http://127.0.0.1:{self.health_port}/readyz"
        self.processes.eventually("kueue /readyz", lambda: httpx.get(health).status_code == 200, 120)

        url = f"https://127.0.0.1:{self.webhook_port}"
        manifests = (self.toolchain / "kueue-config" / "webhooks.yaml").read_text()
        for webhook_config in webhook_configurations(manifests, url, ca_bundle):
            self._register(webhook_config)
        # The API server calls the Job webhook: a dry-run Job comes back suspended.
        self.processes.eventually("kueue's Job webhook, called by the API server", self._job_webhook_answers, 60)

        self._register({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": VISIBILITY_SERVICE, "namespace": NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        })  # fmt: skip
        for version in ("v1beta2", "v1beta1"):
            self._register({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": f"{version}.{VISIBILITY_GROUP}"},
                "spec": {
                    "group": VISIBILITY_GROUP, "version": version,
                    "groupPriorityMinimum": 100, "versionPriority": 100 if version == "v1beta2" else 90,
                    "service": {"name": VISIBILITY_SERVICE, "namespace": NAMESPACE, "port": self.visibility_port},
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                },
            })  # fmt: skip
        for version in ("v1beta2", "v1beta1"):
            name = f"{version}.{VISIBILITY_GROUP}"
            self.processes.eventually(
                f"APIService {name} Available",
                lambda n=name: condition(api.get("apiregistration.k8s.io/v1", "APIService", n), "Available") == "True",
                120,
            )

    def _job_webhook_answers(self) -> bool:
        job = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "kueue-webhook-probe", "namespace": "default",
                         "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
            "spec": {"suspend": False, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "1m"}}}]}}},
        }  # fmt: skip
        answer = self.visibility.post("/apis/batch/v1/namespaces/default/jobs", params={"dryRun": "All"}, json=job)
        return answer.status_code == 201 and answer.json()["spec"]["suspend"] is True

    def pending_workloads(self, namespace: str, local_queue: str) -> dict[str, Any]:
        """The visibility API's PendingWorkloadsSummary of a LocalQueue, through the API server."""
        path = f"/apis/{VISIBILITY_GROUP}/v1beta2/namespaces/{namespace}/localqueues/{local_queue}/pendingworkloads"
        answer = self.visibility.get(path)
        answer.raise_for_status()
        return dict(answer.json())

    def log_tail(self, lines: int = 40) -> str:
        return self.processes.log_tail("kueue", lines)

    def stop(self) -> None:
        # What the API server would call first: webhooks with failurePolicy Fail and an APIService whose server
        # is gone would fail every later Job create and every discovery.
        for api_version, kind, name in reversed(self._registered):
            namespace = NAMESPACE if kind == "Service" else None
            self.cluster.api.delete(api_version, kind, name, namespace)
        self._registered.clear()
        for name in reversed(list(self.processes.procs)):
            self.processes.stop(name)
        if hasattr(self, "visibility"):
            self.visibility.close()


@pytest.fixture(scope="session")
def kueue(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueManager]:
    """Kueue's manager on the engine cluster, webhooks and visibility API registered; stopped at the session's
    end (its Job webhook applies to every Job with a queue-name label created meanwhile)."""
    directory = toolchain_dir()
    lacks = missing(directory)
    if lacks:
        pytest.fail(
            f"the Kueue toolchain is not built ({directory} lacks {', '.join(lacks)}): run "
            "`bash tests/toolchain/kueue.sh` first (or set ML_PLATFORM_KUEUE_TOOLCHAIN to its directory)",
            pytrace=False,
        )
    manager = KueueManager(directory, cluster, tmp_path_factory.mktemp("kueue"))
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()
