"""A real Prometheus as a pod in the `monitoring` namespace, as a platform team runs it: its own ServiceAccount
with a ClusterRole to discover pods, pod IPs scraped across the namespace boundary, so every scrape passes the
platform's NetworkPolicies under the cluster's enforcer (a Prometheus on the node's network would not: an enforcer
lets the node's own traffic through).

The image holds only the binary the observability toolchain builds from Go modules
(tests/cluster/images.py binary_archive). Its configuration and rule file live in a node directory mounted at
/etc/prometheus: a test rewrites the rule file there and POSTs /-/reload, as with a ConfigMap that changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster import images
from tests.cluster.realcluster import RealCluster
from tests.harness.wait import eventually
from tests.observability.promtools import PrometheusServer

NAMESPACE = "monitoring"
NAME = "prometheus"
PORT = 9090
CONFIG_DIR = "/etc/prometheus"
REPO = "localhost/prometheus"


class PodPrometheus(PrometheusServer):
    """`PrometheusServer`'s queries against a Prometheus pod; `config` is prometheus.yml with paths as the pod
    sees them (`CONFIG_DIR`). `start()` deploys it, `wait_ready()` waits for the pod and opens a forward to it,
    `stop()` deletes the namespace."""

    def __init__(self, cluster: RealCluster, binary: Path, config: dict[str, Any]) -> None:
        super().__init__(binary, cluster.node_dir("prometheus-config", mode=0o777), config)
        self.cluster = cluster
        self.image = images.binary_image_name(binary, REPO)

    def start(self) -> None:
        cluster, api = self.cluster, self.cluster.api
        cluster.import_oci_archive(images.binary_archive(self.binary, self.image, cluster.workdir / "prometheus.tar"))
        for path in self.directory.iterdir():
            path.chmod(0o666)
        labels = {"app.kubernetes.io/name": NAME}
        objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": NAMESPACE}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": f"{NAMESPACE}-{NAME}"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"{NAMESPACE}-{NAME}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": f"{NAMESPACE}-{NAME}"},
                "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
            },
        ]  # fmt: skip
        for obj in objects:
            api.apply(obj)
        eventually("monitoring's ServiceAccount", lambda: api.get("v1", "ServiceAccount", NAME, NAMESPACE), 60)
        api.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": NAME,
                            "image": self.image,
                            "imagePullPolicy": "Never",
                            "args": [
                                f"--config.file={CONFIG_DIR}/prometheus.yml",
                                "--storage.tsdb.path=/data",  # /prometheus is the binary
                                f"--web.listen-address=:{PORT}",
                                "--web.enable-lifecycle",
                                "--log.level=info",
                            ],
                            "ports": [{"name": "web", "containerPort": PORT}],
                            "readinessProbe": {"httpGet": {"path": "/-/ready", "port": PORT}, "periodSeconds": 1},
                            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                                          "limits": {"memory": "768Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR},
                                             {"name": "data", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "hostPath": {"path": str(self.directory), "type": "Directory"}},
                        {"name": "data", "emptyDir": {}},
                    ],
                },
            }
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready_ip() -> str | None:
            pod = self.cluster.api.get("v1", "Pod", NAME, NAMESPACE) or {}
            status = pod.get("status", {})
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
            return status.get("podIP") if ready else None

        try:
            ip = eventually("the Prometheus pod Ready", ready_ip, timeout)
        except TimeoutError as err:
            events = [f"{e.get('reason')}: {e.get('message')}" for e in self.cluster.api.events(NAMESPACE)]
            raise TimeoutError(f"{err}; events in {NAMESPACE}:\n" + "\n".join(events[-10:])) from None
        self.url = self.cluster.forward(ip, PORT).url

    def log(self) -> str:
        try:
            return self.cluster.pod_logs(NAMESPACE, NAME)[-6000:]
        except Exception as err:  # a log for a failure message: never hide the failure
            return f"(no log: {err})"

    def stop(self) -> None:
        self.cluster.api.delete("v1", "Namespace", NAMESPACE)
        self.cluster.api.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", f"{NAMESPACE}-{NAME}")
        self.cluster.api.delete("rbac.authorization.k8s.io/v1", "ClusterRole", f"{NAMESPACE}-{NAME}")
