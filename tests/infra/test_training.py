"""The training run: the pure builder (workloads.training) alone, and the Pulumi component and the whole program
declaring exactly what it builds."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pulumi
import pytest
import yaml

from infra.common import AWAIT_CREATED_ONLY, MANAGED_BY
from infra.config import StackConfig, read_raw_config
from infra.program import training_spec
from infra.render import normalize
from infra.training import TrainingArgs, TrainingJob, declared_spec
from workloads.pod import Resources, Toleration
from workloads.training import (
    CONFIG_CHECKSUM_ANNOTATION,
    POD_METRICS,
    TrainingJobSpec,
    threads_per_rank,
    training_manifests,
)

from .conftest import PROJECT, objects_of, render_stack
from .test_components import Run, assert_equal

SPEC = TrainingJobSpec(
    run_name="exp", namespace="team-a", image="img:1", image_pull_policy="IfNotPresent", workers=3,
    master_port=29400, discovery="dns", backoff_limit=1, train_config={"train": {"max_steps": 5}},
    tracking_uri="http://mlflow:5000", service_account_name="trainer", checkpoint_claim="checkpoints",
    resources=Resources("1500m", "2500m", "1Gi", "2Gi"), shm_size="1Gi",
    tolerations=(Toleration("dedicated", "ml", "NoSchedule"), Toleration("nvidia.com/gpu", None, "NoSchedule")),
    managed_by=MANAGED_BY,
)  # fmt: skip


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def null_fields(value: Any, path: str = "") -> Iterator[str]:
    """Paths of every None value inside `value`."""
    if value is None:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from null_fields(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from null_fields(item, f"{path}[{index}]")


def training_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's objects among everything rendered, in the builder's order."""
    return [o for o in objects if o["metadata"]["labels"].get("app.kubernetes.io/component") == "training"
            and o["kind"] in ("ConfigMap", "Service", "NetworkPolicy", "Job")]  # fmt: skip


# --- the component and the program declare the builder's objects -------------------------------------------------


@pytest.mark.parametrize("wait", [False, True])
def test_component_declares_exactly_the_builders_objects(component: Run, wait: bool) -> None:
    args = TrainingArgs(spec=SPEC, wait=wait, timeout_minutes=30)

    def build() -> Any:
        job = TrainingJob("train", args)
        return pulumi.Output.all(job.job_name, job.rank0_address).apply(
            lambda v: assert_equal(v, ["exp-train", "exp-train-0.exp-workers.team-a.svc.cluster.local:29400"])
        )

    rendered = sorted(training_objects(component(build).objects()), key=lambda o: o["kind"])
    # The one thing the component adds: unless it waits, `pulumi up` returns once the Job exists.
    expected_spec = SPEC if wait else replace(SPEC, job_annotations=tuple(AWAIT_CREATED_ONLY.items()))
    assert declared_spec(args) == expected_spec
    expected = sorted(normalize(training_manifests(expected_spec).objects()), key=lambda o: o["kind"])
    assert rendered == expected


def stack_config(stack: str, **overrides: Any) -> StackConfig:
    """The StackConfig the program builds for `stack` (render.stack_config's values, as the CLI passes them)."""
    from infra.render import stack_config as cli_config

    values, secret = cli_config(stack)
    values |= {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in overrides.items()}
    raw = read_raw_config(lambda key: values.get(f"{PROJECT}:{key}"))
    return StackConfig.from_raw(stack, raw, secrets_set={key.split(":", 1)[1] for key in secret})


@pytest.mark.parametrize(("stack", "overrides"), [("dev", {}), ("gpu", {}), ("dev", {"waitForTraining": True})])
def test_program_declares_the_builders_objects_for_the_stack(stack: str, overrides: dict[str, Any]) -> None:
    config = stack_config(stack, **overrides)
    sub_path = f"{stack}/checkpoints" if config.storage.mode == "hostPath" else None
    spec = declared_spec(TrainingArgs(spec=training_spec(config, sub_path), wait=config.training.wait))
    rendered = training_objects(objects_of(render_stack(stack, **overrides)))
    assert sorted(rendered, key=lambda o: o["kind"]) == sorted(
        normalize(training_manifests(spec).objects()), key=lambda o: o["kind"]
    )


# --- the builder alone -----------------------------------------------------------------------------------------


def test_builder_is_owner_neutral() -> None:
    """An operator builds the same objects with its own managed-by label and annotations, and nothing of Pulumi's."""
    spec = replace(SPEC, managed_by="training-operator", job_annotations=(("example.com/owner", "tj-1"),))
    manifests = training_manifests(spec)
    assert "pulumi" not in yaml.safe_dump(manifests.objects())
    for obj in manifests.objects():
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "training-operator"
        assert obj["metadata"]["namespace"] == "team-a"
    assert manifests.job["metadata"]["annotations"]["example.com/owner"] == "tj-1"


def test_builder_objects_refer_to_each_other() -> None:
    m = training_manifests(SPEC)
    job, pod_template = m.job, m.job["spec"]["template"]
    pod = pod_template["spec"]
    assert pod["subdomain"] == m.service["metadata"]["name"]
    selector = m.service["spec"]["selector"]
    assert selector and all(pod_template["metadata"]["labels"][k] == v for k, v in selector.items())
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = pod["containers"][0]
    assert {mount["name"] for mount in container["volumeMounts"]} == set(volumes)
    assert volumes["config"]["configMap"]["name"] == m.config_map["metadata"]["name"]
    assert container["command"][-1].startswith(next(x["mountPath"] for x in container["volumeMounts"]
                                                    if x["name"] == "config"))  # fmt: skip
    train_yaml = m.config_map["data"]["train.yaml"]
    assert yaml.safe_load(train_yaml) == {**SPEC.train_config, "metrics": POD_METRICS}
    assert (
        pod_template["metadata"]["annotations"][CONFIG_CHECKSUM_ANNOTATION]
        == hashlib.sha256(train_yaml.encode()).hexdigest()
    )
    port = m.service["spec"]["ports"][0]
    assert port["targetPort"] == container["ports"][0]["name"] and port["port"] == int(env_of(job)["MASTER_PORT"])
    assert env_of(job)["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{m.service['metadata']['name']}"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(env_of(job)["WORLD_SIZE"]) == 3
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    # Optional fields are left out, not null: the API server and every creator see the same object.
    assert "nodeSelector" not in pod and not list(null_fields(m.objects()))


def test_builder_objects_do_not_share_mutable_parts() -> None:
    m = training_manifests(SPEC)
    before = copy.deepcopy(m.objects())
    m.config_map["metadata"]["labels"]["extra"] = "x"
    m.job["spec"]["template"]["metadata"]["labels"]["extra"] = "y"
    assert m.service["metadata"]["labels"] == before[1]["metadata"]["labels"]
    assert m.job["metadata"]["labels"] == before[2]["metadata"]["labels"]


def test_several_gpus_per_pod_run_the_launcher_one_rank_per_gpu() -> None:
    spec = replace(SPEC, resources=replace(SPEC.resources, cpu_limit="8", gpus=2))
    job = training_manifests(spec).job
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:4] == ["python", "-m", "trainer", "launch"]
    flags = dict(zip(command[4::2], command[5::2], strict=True))
    assert flags["--nproc"] == container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert flags["--nnodes"] == str(job["spec"]["completions"])
    assert flags["--node-rank"] == "$(JOB_COMPLETION_INDEX)"  # expanded by the kubelet from the Job's env
    assert env_of(job)["WORLD_SIZE"] == str(spec.workers * 2)
    assert env_of(job)["OMP_NUM_THREADS"] == "4"  # the pod's 8 cpus shared by its 2 ranks


def test_kubernetes_api_discovery_mounts_the_token_and_drops_master_addr() -> None:
    job = training_manifests(replace(SPEC, discovery="kubernetes-api")).job
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert "MASTER_ADDR" not in env_of(job) and env_of(job)["TRAINER_JOB_NAME"] == job["metadata"]["name"]
    assert training_manifests(SPEC).job["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_sub_path_and_queue_only_when_set() -> None:
    plain = training_manifests(SPEC).job
    mount = next(m for m in plain["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                 if m["name"] == "checkpoints")  # fmt: skip
    assert "subPath" not in mount and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    job = training_manifests(replace(SPEC, checkpoint_sub_path="dev/checkpoints", kueue_queue="q")).job
    mount = next(m for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                 if m["name"] == "checkpoints")  # fmt: skip
    assert mount["subPath"] == "dev/checkpoints"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize(("cpu_limit", "ranks", "threads"), [("500m", 1, 1), ("4", 1, 4), ("2500m", 1, 2),
                                                              ("8", 2, 4), ("1", 4, 1)])  # fmt: skip
def test_threads_per_rank(cpu_limit: str, ranks: int, threads: int) -> None:
    assert threads_per_rank(cpu_limit, ranks) == threads


def test_changed_train_config_changes_the_pod_template() -> None:
    """Pulumi replaces a Job whose pod template changes; a new train.yaml must change it (checksum annotation)."""

    def checksum(spec: TrainingJobSpec) -> str:
        return training_manifests(spec).job["spec"]["template"]["metadata"]["annotations"][CONFIG_CHECKSUM_ANNOTATION]

    assert checksum(SPEC) == checksum(replace(SPEC))
    assert checksum(SPEC) != checksum(replace(SPEC, train_config={"train": {"max_steps": 6}}))
