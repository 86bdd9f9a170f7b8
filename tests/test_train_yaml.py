"""One train.yaml for one run, whoever creates it: the stack's own run and a TrainingJob asking for the same run get
the same train.yaml, and both refuse a user's key the platform decides, naming the field to set instead."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from trainop.validate import spec_problems
from workloads.trainingjob import Platform, attempt_manifests

from .infra.conftest import find, objects_of, render_stack
from .operator.harness import training_job

PLATFORM = Platform(namespace="ml-platform", image="platform:1", image_pull_policy="IfNotPresent",
                    tracking_uri="http://mlflow.ml-platform.svc.cluster.local:5000", checkpoint_claim="checkpoints",
                    checkpoint_sub_path=None, service_account_name="trainer")  # fmt: skip


def stack_train_yaml(**overrides: Any) -> dict[str, Any]:
    stack = objects_of(render_stack("dev", **overrides))
    job = find(stack, "Job")
    volumes = job["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
    return yaml.safe_load(find(stack, "ConfigMap", name)["data"]["train.yaml"])


def trainingjob_train_yaml(**spec: Any) -> dict[str, Any]:
    tj = training_job("tiny", "ml-platform", **spec)
    tj["metadata"]["uid"] = "uid-1"
    config_map = attempt_manifests(tj, 0, PLATFORM, suspend=False)[0]
    return yaml.safe_load(config_map["data"]["train.yaml"])


def test_the_stacks_run_and_an_equivalent_trainingjob_get_the_same_train_yaml() -> None:
    stack = stack_train_yaml(
        runName="tiny", trainMaxSteps=120, trainBatchSize=8, checkpointEvery=40, workers=2,
        trainCpuRequest="500m", trainCpuLimit="2", trainMemoryRequest="1Gi", trainMemoryLimit="2Gi", quotaCpu="16",
        trainSettings=["model.n_layer=3", "train.lr=0.002"],
        modelName="tinygpt", modelAlias="champion",
    )  # fmt: skip
    tj = trainingjob_train_yaml(
        workers=2,
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        train={"train": {"max_steps": 120, "batch_size": 8, "lr": 0.002}, "model": {"n_layer": 3},
               "checkpoint": {"every": 40}},
        checkpointDir="tiny",
        tracking={"experiment": "tiny", "modelName": "tinygpt", "alias": "champion"},
    )  # fmt: skip
    # What only a TrainingJob has: the resource's uid, by which the operator finds its MLflow run.
    assert tj["tracking"].pop("tags") == {"ml-platform.dev/trainingjob-uid": "uid-1"}
    assert stack == tj
    # What both carry, written out: the values asked for, the platform's decisions and defaults.
    assert stack["train"] == {"max_steps": 120, "batch_size": 8, "lr": 0.002, "device": "cpu", "threads_per_rank": 2}
    assert stack["checkpoint"] == {"dir": "/checkpoints/tiny", "every": 40}
    assert stack["tracking"] == {"uri": "", "experiment": "tiny", "model_name": "tinygpt", "alias": "champion"}
    assert stack["distributed"] == {"backend": "gloo", "discovery": "dns"}
    assert stack["metrics"] == {"host": "0.0.0.0", "port": 9400}


@pytest.mark.parametrize(
    ("path", "stack_says", "trainingjob_says"),
    [
        ("checkpoint.dir=/x", "set runName instead", "set spec.checkpointDir instead"),
        ("tracking.alias=x", "set modelAlias instead", "set spec.tracking.alias instead"),
        ("distributed.backend=nccl", "set trainBackend instead", "set spec.backend instead"),
        ("distributed.discovery=kubernetes-api", "set rankDiscovery instead", "find rank 0 by its DNS name"),
        ("tracking.uri=http://elsewhere", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    ],
)
def test_a_key_the_platform_decides_is_refused_on_both_surfaces(
    path: str, stack_says: str, trainingjob_says: str
) -> None:
    from infra.config import ConfigError

    with pytest.raises(ConfigError, match=stack_says):
        render_stack("dev", trainSettings=[path])
    key, value = path.split("=", 1)
    section, field = key.split(".")
    problems = spec_problems(training_job("tiny", "ml", train={section: {field: value}}), gpus_available=False)
    assert [p for p in problems if p.startswith(f"spec.train.{key}:") and trainingjob_says in p], problems


@pytest.mark.parametrize("path", ["train.max_steps=7", "train.batch_size=4", "checkpoint.every=3"])
def test_keys_the_stack_types_are_the_trainingjobs_own(path: str) -> None:
    """The stack has typed keys for these (trainMaxSteps, ...); a TrainingJob sets them in spec.train."""
    from infra.config import ConfigError

    with pytest.raises(ConfigError, match="instead"):
        render_stack("dev", trainSettings=[path])
    key, value = path.split("=", 1)
    section, field = key.split(".")
    tj = training_job("tiny", "ml", workers=1, train={"train": {"batch_size": 4}, section: {field: int(value)}})
    assert spec_problems(tj, gpus_available=False) == []
