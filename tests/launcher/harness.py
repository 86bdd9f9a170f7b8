"""What the launcher's control-plane tests share: a namespace like the platform's (Pod Security restricted), the
launcher's ServiceAccount bound to exactly the rules of workloads/task.py (its kubeconfig carries that account's
token, so every call the server makes is checked against them), users with real audience-bound tokens from the
TokenRequest API, the launcher's Deployment (scaled to zero: the server runs here as a subprocess; the Deployment
is only the owner of every task, as in the component), and the server as a real subprocess that can be killed and
started again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccount

from tests.engine.cluster import LocalCluster
from tests.harness.procs import free_port
from tests.harness.wait import eventually
from tests.proc import kill_group, stop_group
from workloads.pod import container_security_context, pod_security_context
from workloads.task import launcher_cluster_role_rules, launcher_role_rules

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_SA = "skyrun"
LAUNCHER_DEPLOYMENT = "skyrun"
AUDIENCE = "skyrun"
# kwok moves a pod through its stages after these delays: long enough that a test polling every 0.2 s sees each
# status, short enough to keep the tests quick.
KWOK_DELAYS = {
    "pod-create.stage.kwok.x-k8s.io/delay": "1s",
    "pod-create.stage.kwok.x-k8s.io/jitter-delay": "1500ms",
    "pod-ready.stage.kwok.x-k8s.io/delay": "1s",
    "pod-ready.stage.kwok.x-k8s.io/jitter-delay": "1500ms",
    "pod-complete.stage.kwok.x-k8s.io/delay": "4s",
    "pod-complete.stage.kwok.x-k8s.io/jitter-delay": "5s",
}


def rbac(
    name: str, ns: str, rules: list[dict[str, Any]], subject: str, *, cluster_scoped: bool = False
) -> list[dict[str, Any]]:
    kind = "ClusterRole" if cluster_scoped else "Role"
    meta: dict[str, Any] = {"name": name} if cluster_scoped else {"name": name, "namespace": ns}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": f"{kind}Binding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": ns}],
        },
    ]


def launcher_deployment(ns: str) -> dict[str, Any]:
    """The component's Deployment, as far as the tests need it: its name and uid own every task. No replicas: the
    server under test is a subprocess here."""
    labels = {"app.kubernetes.io/name": LAUNCHER_DEPLOYMENT}
    container = {"name": "skyrun", "image": "ml-platform:test", "securityContext": container_security_context()}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": LAUNCHER_DEPLOYMENT, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"securityContext": pod_security_context(), "containers": [container]},
            },
        },
    }


def prepare_namespace(cluster: LocalCluster, ns: str) -> dict[str, Any]:
    """The namespace and its accounts and rights; returns the launcher's Deployment (the owner of every task)."""
    api = cluster.api
    labels = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "audit", "warn")}
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
    for sa in (LAUNCHER_SA, "alice", "bob", "admin"):
        api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})
    objects = [
        *rbac(LAUNCHER_SA, ns, launcher_role_rules(LAUNCHER_DEPLOYMENT), LAUNCHER_SA),
        *rbac(f"{ns}-skyrun", ns, launcher_cluster_role_rules(), LAUNCHER_SA, cluster_scoped=True),
        # What --all-users needs (docs/launcher.md): list and delete on the launcher's virtual `tasks` resource.
        *rbac(
            "skyrun-admin",
            ns,
            [{"apiGroups": ["skyrun.ml-platform.dev"], "resources": ["tasks"], "verbs": ["list", "delete"]}],
            "admin",
        ),
    ]
    for obj in objects:
        api.apply(obj)
    eventually("the default ServiceAccount", lambda: api.get("v1", "ServiceAccount", "default", ns), 60)
    return api.apply(launcher_deployment(ns))


def token(cluster: LocalCluster, ns: str, sa: str, audience: str | None = AUDIENCE, seconds: int = 3600) -> str:
    """A real token of `sa` from the TokenRequest API, bound to `audience` (None: the API server's own)."""
    spec = TokenRequestSpec(audiences=[audience] if audience else [], expirationSeconds=seconds)
    answer = cluster.api.client.create(ServiceAccount.Token(metadata=ObjectMeta(), spec=spec), sa, namespace=ns)
    assert answer.status is not None
    return str(answer.status.token)


def user_name(ns: str, sa: str) -> str:
    return f"system:serviceaccount:{ns}:{sa}"


def launcher_kubeconfig(cluster: LocalCluster, ns: str, workdir: Path) -> Path:
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": LAUNCHER_SA, "user": {"token": token(cluster, ns, LAUNCHER_SA, None)}}]
    kubeconfig["contexts"] = [{"name": "local", "context": {"cluster": "local", "user": LAUNCHER_SA, "namespace": ns}}]
    path = workdir / f"{ns}-skyrun.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


class ServerProcess:
    """`python -m skyrun serve` as the launcher's ServiceAccount on 127.0.0.1, output in a log file."""

    def __init__(self, kubeconfig: Path, ns: str, log: Path, **settings: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "SKYRUN_"))},
            "KUBECONFIG": str(kubeconfig),
            "SKYRUN_NAMESPACE": ns,
            "SKYRUN_DEPLOYMENT": LAUNCHER_DEPLOYMENT,
            "SKYRUN_METRICS_PORT": str(self.metrics_port),
            "SKYRUN_IMAGE": "ml-platform:test",
            "SKYRUN_DEFAULT_CPUS": "100m",
            "SKYRUN_DEFAULT_MEMORY": "128Mi",
            "SKYRUN_POD_ANNOTATIONS": json.dumps(KWOK_DELAYS),
            "SKYRUN_RECONCILE_INTERVAL_S": "2",
            "SKYRUN_TOKEN_CACHE_S": "0",
            "PYTHONPATH": str(ROOT),
            **settings,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "skyrun", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"server exited:\n{self.tail()}"
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200

        eventually("the launcher's /readyz", ready, 60, 0.3)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        kill_group(self.proc)

    def stop(self) -> None:
        stop_group(self.proc)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def client(url: str, bearer: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30.0)
