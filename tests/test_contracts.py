"""The contracts between the Pulumi program and what its pods run: the rendered train.yaml and Job environment
must be accepted by the trainer, and the inference Deployment's environment by the inference settings."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from inference.settings import Settings
from trainer.config import build_config
from trainer.distenv import parse_env

from .infra.conftest import find, objects_of, render_stack


@pytest.fixture(scope="module", params=["dev", "gpu"])
def stack(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return objects_of(render_stack(request.param))


def job_env(job: dict[str, Any]) -> dict[str, str]:
    env = {}
    for e in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
    env["POD_NAMESPACE"] = job["metadata"]["namespace"]  # the downward API fills it in a pod
    return env


def train_yaml(stack: list[dict[str, Any]], job: dict[str, Any]) -> Any:
    """The train.yaml of the ConfigMap the Job's pods mount (the stack has other ConfigMaps too)."""
    volumes = job["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
    return yaml.safe_load(find(stack, "ConfigMap", name)["data"]["train.yaml"])


def test_rendered_train_yaml_is_a_valid_trainer_config(stack: list[dict[str, Any]]) -> None:
    job = find(stack, "Job")
    document = train_yaml(stack, job)
    config = build_config(document, environ=job_env(job))
    assert config.train.batch_size % job["spec"]["completions"] == 0
    assert config.tracking.uri == job_env(job)["MLFLOW_TRACKING_URI"], "tracking.uri comes from the pod env"
    assert config.distributed.backend in ("gloo", "nccl")
    ports = {p["name"]: p["containerPort"] for p in job["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", ports["metrics"]), "Prometheus scrapes the pod IP"


def test_job_environment_resolves_every_rank(stack: list[dict[str, Any]]) -> None:
    job = find(stack, "Job")
    document = train_yaml(stack, job)
    env = job_env(job)
    config = build_config(document, environ=env)
    workers = job["spec"]["completions"]
    service = job["spec"]["template"]["spec"]["subdomain"]
    for index in range(workers):
        resolved = parse_env({**env, "JOB_COMPLETION_INDEX": str(index)}, config.distributed)
        assert (resolved.rank, resolved.world_size, resolved.source) == (index, workers, "indexed-job")
        assert resolved.master_addr == f"{job['metadata']['name']}-0.{service}"


def test_inference_deployment_environment_is_valid_settings(
    stack: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = find(stack, "Deployment", "inference")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for e in container["env"]:
        monkeypatch.setenv(e["name"], e["value"])
    settings = Settings()
    assert settings.model_uri == "models:/tiny-gpt@champion"
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.host == "0.0.0.0"
    assert settings.tracking_uri == "http://mlflow.ml-platform.svc.cluster.local:5000"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.drain_delay_s + settings.request_timeout_s, "SIGTERM drain must fit the grace period"
