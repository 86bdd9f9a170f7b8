"""What the operator's control-plane tests share: a namespace with the operator's ServiceAccount bound to exactly
the Role of workloads.trainingjob (its kubeconfig carries that ServiceAccount's token, so every call the operator
makes is checked against that Role), the checkpoint claim, the operator as a real `python -m trainop` process,
and pod status patches written the way a kubelet would write them."""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from tests.engine.cluster import LocalCluster
from tests.harness.procs import free_port
from tests.harness.wait import eventually
from tests.proc import kill_group, stop_group
from workloads.trainingjob import API_VERSION, KIND, operator_role_rules

ROOT = Path(__file__).resolve().parents[2]
SA = "trainop"
CLAIM = "checkpoints"


def prepare_namespace(cluster: LocalCluster, ns: str, workdir: Path) -> Path:
    """The namespace, the claim, the operator's ServiceAccount + Role + RoleBinding; returns its kubeconfig."""
    api = cluster.api
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    meta = {"namespace": ns}
    api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, **meta}})
    api.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": SA, **meta},
            "rules": operator_role_rules(),
        }
    )
    api.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": SA, **meta},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": ns}],
        }
    )
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{ns}-{CLAIM}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/{ns}"},
                "claimRef": {"namespace": ns, "name": CLAIM},
            },
        }
    )
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM, **meta},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{ns}-{CLAIM}",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
    )
    api.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {"name": f"{SA}-token", "annotations": {"kubernetes.io/service-account.name": SA}, **meta},
        }
    )

    def token() -> str | None:
        secret = api.get("v1", "Secret", f"{SA}-token", ns) or {}
        data = secret.get("data") or {}
        return base64.b64decode(data["token"]).decode() if "token" in data else None

    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": SA, "user": {"token": eventually("the operator's token", token, 60)}}]
    kubeconfig["contexts"] = [{"name": "local", "context": {"cluster": "local", "user": SA, "namespace": ns}}]
    path = workdir / f"{ns}-operator.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


class OperatorProcess:
    """`python -m trainop` as the ServiceAccount, its output in a log file; start, kill -9 and start again."""

    def __init__(self, kubeconfig: Path, ns: str, log: Path, **env: str) -> None:
        self.log = log
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KUBE")},
            "KUBECONFIG": str(kubeconfig),
            "WATCH_NAMESPACE": ns,
            "PLATFORM_IMAGE": "ml-platform:test",
            "CHECKPOINT_CLAIM": CLAIM,
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
            "GPUS_AVAILABLE": "false",
            "RECONCILE_INTERVAL_S": "1",
            "RESTART_BACKOFF_S": "1",
            "LISTEN_HOST": "127.0.0.1",
            "HEALTH_PORT": str(self.health_port),
            "METRICS_PORT": str(self.metrics_port),
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "trainop"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a node dies under the operator."""
        kill_group(self.proc)

    def stop(self) -> None:
        stop_group(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def training_job(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "workers": 2,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "train": {"train": {"batch_size": 4, "max_steps": 20}},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {**base, **spec},
    }


def terminate_pod(
    cluster: LocalCluster, pod: dict[str, Any], exit_code: int, message: str = "", disruption: str | None = None
) -> None:
    """Write what a kubelet writes when the trainer container ends: phase Failed, the container terminated with
    `exit_code` (and its termination message); with `disruption`, the DisruptionTarget condition first."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = pod.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c["type"] not in ("Ready", "DisruptionTarget")]
    conditions.append({"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": now})
    if disruption:
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": disruption,
                "message": f"{disruption} (test)",
                "lastTransitionTime": now,
            }
        )
    terminated = {"exitCode": exit_code, "reason": "Error", "startedAt": now, "finishedAt": now}
    if message:
        terminated["message"] = message
    container = {
        "name": "trainer",
        "image": pod["spec"]["containers"][0]["image"],
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {"terminated": terminated},
    }
    cluster.api.client.patch(
        Pod.Status,
        pod["metadata"]["name"],
        {"status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [container]}},
        namespace=pod["metadata"]["namespace"],
        patch_type=PatchType.MERGE,
    )
