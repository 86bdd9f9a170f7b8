"""The platform's two images (the project's Dockerfile, built here by tests/cluster/images.py) in the real cluster,
under the restricted Pod Security Standard the platform's namespaces enforce: the platform image runs torch, the
trainer and inference; the services image runs MLflow, the operator and the launcher, and has no torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.kube import create_namespace, diagnose, wait_pod_done
from tests.cluster.realcluster import RealCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def run_restricted(cluster: RealCluster, ns: str, name: str, image: str, code: str) -> str:
    """Run `python -c code` in `image` as a pod the restricted Pod Security Standard admits; its log, once it
    Succeeded."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "check",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", code],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "512Mi"},
                        "limits": {"cpu": "1", "memory": "2Gi"},
                    },
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }
    cluster.api.create(pod)  # refused by Pod Security admission if the spec were not restricted
    phase = wait_pod_done(cluster, ns, name, timeout_s=300)
    logs = cluster.pod_logs(ns, name)
    assert phase == "Succeeded", f"{logs}\n{diagnose(cluster, ns)}"
    return logs


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.mark.timeout(3600)  # a cold build of the image (torch from PyPI) happens in this test's setup
def test_platform_image_imports_torch_trainer_inference_as_restricted_pod(
    real_cluster: RealCluster, platform_image: str
) -> None:
    ns = create_namespace(real_cluster, "platform-image", RESTRICTED)
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert torch_version, "the Dockerfile no longer declares ARG TORCH_VERSION=..."
    code = (
        "import os, torch, trainer, inference\n"
        "print(torch.__version__)\n"
        "print('uid', os.getuid(), 'gid', os.getgid())\n"
        "print('matmul', float((torch.ones(2, 3) @ torch.ones(3, 2)).sum()))\n"
        "open('/tmp/scratch', 'w').write('ok')\n"
        "try:\n"
        "    open('/app/should-not-write', 'w')\n"
        "except OSError as err:\n"
        "    print('rootfs', type(err).__name__)\n"
    )
    logs = run_restricted(real_cluster, ns, "import-check", platform_image, code)
    lines = logs.splitlines()
    assert lines[0].split("+")[0] == torch_version.group(1), logs
    assert "uid 10001 gid 10001" in lines, logs
    assert "matmul 12.0" in lines, logs
    assert "rootfs OSError" in lines, logs


@pytest.mark.timeout(1800)  # a cold build of the services image happens in this test's setup
def test_services_image_runs_mlflow_the_operator_and_the_launcher_without_torch(
    real_cluster: RealCluster, services_image: str
) -> None:
    ns = create_namespace(real_cluster, "services-image", RESTRICTED)
    code = (
        "import importlib.util, os, subprocess\n"
        "import trainop.__main__, trainop.validate, skyrun.service, mlflow.server, psycopg2\n"
        "print('torch', importlib.util.find_spec('torch') is not None)\n"
        "print('uid', os.getuid(), 'gid', os.getgid())\n"
        "print('mlflow', subprocess.run(['mlflow', '--version'], capture_output=True, text=True).returncode)\n"
    )
    lines = run_restricted(real_cluster, ns, "services-check", services_image, code).splitlines()
    assert "torch False" in lines, lines
    assert "uid 10001 gid 10001" in lines, lines
    assert "mlflow 0" in lines, lines
