"""The platform image (the project's Dockerfile, built here by tests/cluster/images.py) in the real cluster, under
the restricted Pod Security Standard the platform's namespaces enforce."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.kube import create_namespace, diagnose, wait_pod_done
from tests.cluster.realcluster import RealCluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(3600)  # a cold build of the image (torch from PyPI) happens in this test's setup
def test_platform_image_imports_torch_trainer_inference_as_restricted_pod(
    real_cluster: RealCluster, platform_image: str
) -> None:
    ns = create_namespace(
        real_cluster,
        "platform-image",
        {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"},
    )
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
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "import-check", "namespace": ns},
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
                    "image": platform_image,
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
    real_cluster.api.create(pod)  # refused by Pod Security admission if the spec were not restricted
    phase = wait_pod_done(real_cluster, ns, "import-check", timeout_s=300)
    logs = real_cluster.pod_logs(ns, "import-check")
    assert phase == "Succeeded", f"{logs}\n{diagnose(real_cluster, ns)}"
    lines = logs.splitlines()
    assert lines[0].split("+")[0] == torch_version.group(1), logs
    assert "uid 10001 gid 10001" in lines, logs
    assert "matmul 12.0" in lines, logs
    assert "rootfs OSError" in lines, logs
