"""The training run: the pure builder (workloads.training) alone, and the Pulumi component and the whole program
declaring exactly what it builds."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pulumi
import pytest
import yaml

from infra.common import MANAGED_BY
from infra.render import normalize
from infra.training import TrainingArgs, TrainingJob, declared_spec
from workloads.pod import Resources, Toleration
from workloads.training import TrainingJobSpec, threads_per_rank, training_manifests

from .conftest import objects_of, render_stack
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


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The run's objects by kind, after checking there is exactly one of each."""
    run = training_objects(objects)
    assert sorted(o["kind"] for o in run) == ["ConfigMap", "Job", "NetworkPolicy", "Service"]
    return {o["kind"]: o for o in run}


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.mark.parametrize("wait", [False, True])
def test_component_declares_exactly_the_builders_objects(component: Run, wait: bool) -> None:
    args = TrainingArgs(spec=SPEC, wait=wait, timeout_minutes=30)

    def build() -> Any:
        job = TrainingJob("train", args)
        return pulumi.Output.all(job.job_name, job.rank0_address).apply(
            lambda v: assert_equal(v, ["exp-train", "exp-train-0.exp-workers.team-a.svc.cluster.local:29400"])
        )

    rendered = training_objects(component(build).objects())
    objects = by_kind(rendered)
    assert {k: o["metadata"]["name"] for k, o in objects.items()} == {
        "ConfigMap": "exp-train-config", "Service": "exp-workers", "NetworkPolicy": "exp-ranks", "Job": "exp-train",
    }  # fmt: skip
    for obj in rendered:
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pulumi"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "exp"
    job = objects["Job"]
    # The one thing the component adds: unless it waits, `pulumi up` returns once the Job exists (has a uid).
    assert job["metadata"]["annotations"].get("pulumi.com/waitFor") == (None if wait else "jsonpath={.metadata.uid}")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 3, 3)
    assert (job["spec"]["backoffLimitPerIndex"], job["spec"]["maxFailedIndexes"]) == (1, 0)
    container = container_of(job)
    assert (container["image"], container["imagePullPolicy"]) == ("img:1", "IfNotPresent")
    assert container["resources"] == {"requests": {"cpu": "1500m", "memory": "1Gi"},
                                      "limits": {"cpu": "2500m", "memory": "2Gi"}}  # fmt: skip
    assert {k: env_of(job)[k] for k in ("WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "MLFLOW_TRACKING_URI")} == {
        "WORLD_SIZE": "3", "MASTER_PORT": "29400", "MASTER_ADDR": "exp-train-0.exp-workers",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }  # fmt: skip
    assert yaml.safe_load(objects["ConfigMap"]["data"]["train.yaml"]) == {
        "train": {"max_steps": 5}, "metrics": {"host": "0.0.0.0", "port": 9400},
    }  # fmt: skip
    assert objects["Service"]["spec"]["ports"] == [{"name": "rendezvous", "port": 29400, "targetPort": "rendezvous"}]
    # What the builder (shared with the TrainingJob operator) makes of the same spec reaches the API server unchanged:
    # the Pulumi resources drop and rename nothing. The expectation is the builder's, so this holds only beside the
    # literal values above.
    awaited = (("pulumi.com/waitFor", "jsonpath={.metadata.uid}"),)
    expected_spec = SPEC if wait else replace(SPEC, job_annotations=awaited)
    assert declared_spec(args) == expected_spec
    expected = sorted(normalize(training_manifests(expected_spec).objects()), key=lambda o: o["kind"])
    assert sorted(rendered, key=lambda o: o["kind"]) == expected


# What each stack file asks of its run (Pulumi.dev.yaml, Pulumi.gpu.yaml; runName and masterPort are Pulumi.yaml's
# defaults, run-1 and 29500).
STACK_RUNS: dict[str, dict[str, Any]] = {
    "dev": {
        "workers": 2, "image": "ml-platform:dev", "pull": "IfNotPresent", "shm": "256Mi", "sub_path": "dev/checkpoints",
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "threads": "1", "tolerations": None, "node_selector": None,
        "train": {"max_steps": 2000, "batch_size": 12, "device": "cpu"}, "backend": "gloo", "model": None,
    },
    "gpu": {
        "workers": 4, "image": "registry.example.com/ml-platform:0.1.0-cuda", "pull": "Always", "shm": "8Gi",
        "sub_path": None,
        "resources": {"requests": {"cpu": "6", "memory": "24Gi", "nvidia.com/gpu": "1"},
                      "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}},
        "threads": "8", "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "train": {"max_steps": 20000, "batch_size": 256, "device": "cuda"}, "backend": "nccl",
        "model": {"n_layer": 8, "n_head": 8, "n_embd": 512, "block_size": 256},
    },
}  # fmt: skip


@pytest.mark.parametrize(("stack", "overrides"), [("dev", {}), ("gpu", {}), ("dev", {"waitForTraining": True})])
def test_program_declares_the_builders_objects_for_the_stack(stack: str, overrides: dict[str, Any]) -> None:
    want = STACK_RUNS[stack]
    objects = by_kind(objects_of(render_stack(stack, **overrides)))
    assert {k: o["metadata"]["name"] for k, o in objects.items()} == {
        "ConfigMap": "run-1-train-config", "Service": "run-1-workers", "NetworkPolicy": "run-1-ranks",
        "Job": "run-1-train",
    }  # fmt: skip
    assert {o["metadata"]["namespace"] for o in objects.values()} == {"ml-platform"}
    job = objects["Job"]
    waits = overrides.get("waitForTraining", False)
    assert job["metadata"]["annotations"].get("pulumi.com/waitFor") == (None if waits else "jsonpath={.metadata.uid}")
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (want["workers"], want["workers"])
    assert job["spec"]["backoffLimitPerIndex"] == 3  # backoffLimit's default
    pod = job["spec"]["template"]["spec"]
    container = container_of(job)
    assert (container["image"], container["imagePullPolicy"]) == (want["image"], want["pull"])
    assert container["resources"] == want["resources"]
    assert container["command"] == ["python", "-m", "trainer", "train", "--config", "/etc/trainer/train.yaml"]
    assert {k: env_of(job)[k] for k in ("WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "MLFLOW_TRACKING_URI",
                                        "OMP_NUM_THREADS")} == {
        "WORLD_SIZE": str(want["workers"]), "MASTER_PORT": "29500", "MASTER_ADDR": "run-1-train-0.run-1-workers",
        "MLFLOW_TRACKING_URI": "http://mlflow.ml-platform.svc.cluster.local:5000", "OMP_NUM_THREADS": want["threads"],
    }  # fmt: skip
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"rendezvous": 29500, "metrics": 9400}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "checkpoints")
    assert (mount["mountPath"], mount.get("subPath")) == ("/checkpoints", want["sub_path"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "checkpoints"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": want["shm"]}
    assert volumes["config"]["configMap"] == {"name": "run-1-train-config"}
    assert pod["serviceAccountName"] == "trainer"
    assert (pod.get("tolerations"), pod.get("nodeSelector")) == (want["tolerations"], want["node_selector"])
    train = yaml.safe_load(objects["ConfigMap"]["data"]["train.yaml"])
    assert {k: train["train"][k] for k in want["train"]} == want["train"]
    assert train["distributed"]["backend"] == want["backend"]
    assert train["metrics"] == {"host": "0.0.0.0", "port": 9400}
    assert train["checkpoint"]["dir"] == "/checkpoints/run-1"
    assert train.get("model") == want["model"]
    assert objects["Service"]["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": "rendezvous"}]


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
    # Every rank serves its metrics on all interfaces of the pod, port 9400 (docs/observability.md).
    assert yaml.safe_load(train_yaml) == {"train": {"max_steps": 5}, "metrics": {"host": "0.0.0.0", "port": 9400}}
    assert (
        pod_template["metadata"]["annotations"]["ml-platform/train-config-sha256"]
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
    assert flags["--nnodes"] == str(job["spec"]["completions"]) == "3"
    assert flags["--node-rank"] == "$(JOB_COMPLETION_INDEX)"  # expanded by the kubelet from the Job's env
    assert env_of(job)["WORLD_SIZE"] == "6"  # 3 pods x 2 GPUs
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
    checksum_annotation = "ml-platform/train-config-sha256"

    def checksum(spec: TrainingJobSpec) -> str:
        return training_manifests(spec).job["spec"]["template"]["metadata"]["annotations"][checksum_annotation]

    assert checksum(SPEC) == checksum(replace(SPEC))
    assert checksum(SPEC) != checksum(replace(SPEC, train_config={"train": {"max_steps": 6}}))
