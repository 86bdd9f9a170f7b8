"""The sizes of the platform's own servers (MLflow, PostgreSQL, the operator, the launcher) are stack keys: each
reaches its pod, the quota check counts it, and a request above its limit is refused naming both keys."""

from __future__ import annotations

import pytest

from infra.config import ConfigError

from .conftest import find, objects_of, render_stack


def container_resources(objects: list[dict], kind: str, name: str) -> dict:
    return find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_each_servers_size_reaches_its_pod() -> None:
    objects = objects_of(render_stack(
        "gpu", mlflowMemoryLimit="3Gi", mlflowCpuRequest="500m", postgresMemoryLimit="2Gi", operatorCpuLimit="1",
        launcherMemoryRequest="256Mi", launcherMemoryLimit="512Mi",
    ))  # fmt: skip
    mlflow = container_resources(objects, "Deployment", "mlflow")
    assert mlflow == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "3Gi"}}
    assert container_resources(objects, "StatefulSet", "postgres")["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert container_resources(objects, "Deployment", "trainop")["limits"] == {"cpu": "1", "memory": "512Mi"}
    launcher = container_resources(objects, "Deployment", "skyrun")
    assert launcher == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}


def test_the_quota_check_counts_the_servers() -> None:
    """dev's quotaCpu is 10 (Pulumi.dev.yaml): an operator limit of 8 cpus cannot fit beside the rest."""
    with pytest.raises(ConfigError, match=r"quotaCpu='10': must cover the limits of .* the operator"):
        render_stack("dev", operatorCpuLimit="8")


def test_a_request_above_its_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"mlflowMemoryRequest.*must not exceed mlflowMemoryLimit='1Gi'"):
        render_stack("dev", mlflowMemoryRequest="2Gi")
