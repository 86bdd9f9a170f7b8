"""Unit tests of the operator's pure parts: the CRD and the children it stands for, spec validation, the phase and
condition mapping from Job and pod states, the restart decision and backoff, and progress from an MLflow run."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from tests.operator.harness import training_job
from trainop.decide import (
    CONFIG_ERROR,
    FAILED,
    MISSING,
    PENDING,
    PREEMPTED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    Observation,
    backoff_seconds,
    conditions,
    observe,
    transition,
)
from trainop.progress import progress_from_run
from trainop.settings import SettingsError, from_env
from trainop.validate import run_shape, spec_problems
from workloads.contracts import CHECKPOINT_PATH_TAG, CHECKPOINT_STEP_TAG, UID_TAG
from workloads.trainingjob import (
    ATTEMPT_LABEL,
    PRINTER_COLUMNS,
    Platform,
    attempt_manifests,
    crd,
    operator_cluster_role_rules,
    operator_role_rules,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
PLATFORM = Platform(namespace="ml", image="platform:1", image_pull_policy="IfNotPresent",
                    tracking_uri="http://mlflow:5000", checkpoint_claim="ckpt", checkpoint_sub_path="sub",
                    service_account_name="trainer")  # fmt: skip


def tj(**spec: Any) -> dict[str, Any]:
    obj = training_job("run", "ml", **spec)
    obj["metadata"]["uid"] = "u-1"
    return obj


def pod(name: str, phase: str, exit_code: int | None = None, message: str = "", disrupted: bool = False) -> dict:
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
        ]
    if disrupted:
        status["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"})
    return {"metadata": {"name": name}, "status": status}


def job(*conds: str, suspend: bool = False) -> dict[str, Any]:
    return {"spec": {"suspend": suspend}, "status": {"conditions": [{"type": c, "status": "True"} for c in conds]}}


# --- the resource and its children -------------------------------------------------------------------------
def test_crd_names_columns_and_status_subresource() -> None:
    spec = crd()["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["plural"], spec["names"]["shortNames"]) == (
        "ml-platform.dev", "Namespaced", "trainingjobs", ["tj"])  # fmt: skip
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in PRINTER_COLUMNS] == [
        "Phase", "Reason", "Queue", "Position", "Workers", "Progress", "Val loss", "Restarts", "Age",
        "Message"]  # fmt: skip
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    for column in PRINTER_COLUMNS:  # every column's path exists in the schema
        node: dict[str, Any] = {"properties": {**schema, "metadata": {"properties": {"creationTimestamp": {}}}}}
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]


def test_role_is_namespaced_least_privilege() -> None:
    rules = operator_role_rules()
    verbs = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("", "pods")] == {"get", "list"}
    assert "*" not in {v for vs in verbs.values() for v in vs} and ("", "secrets") not in verbs
    assert not any(r.startswith("customresourcedefinitions") or r == "namespaces" for _, r in verbs)
    # Kueue: read-only, namespaced (ClusterQueues are cluster-scoped: operator_cluster_role_rules)
    assert verbs[("kueue.x-k8s.io", "localqueues")] == verbs[("kueue.x-k8s.io", "workloads")] == {"get", "list"}
    assert verbs[("visibility.kueue.x-k8s.io", "localqueues/pendingworkloads")] == {"get"}
    assert ("kueue.x-k8s.io", "clusterqueues") not in verbs
    assert operator_cluster_role_rules() == [
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues"], "verbs": ["get", "list"]}
    ]


def test_children_come_from_the_shared_builder_owned_and_per_attempt() -> None:
    objects = attempt_manifests(tj(workers=3, train={"train": {"batch_size": 6}}), 2, PLATFORM, suspend=False)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    for obj in objects:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == ("TrainingJob", "u-1",
                                                                                          True, True)  # fmt: skip
        assert obj["metadata"]["labels"][ATTEMPT_LABEL] == "2" and obj["metadata"]["namespace"] == "ml"
    job_obj = objects[-1]
    assert job_obj["metadata"]["name"] == "run-a2-train" and len(job_obj["metadata"]["name"]) <= 63
    assert job_obj["spec"]["backoffLimitPerIndex"] == 0 and job_obj["spec"]["completions"] == 3
    assert job_obj["spec"]["suspend"] is False
    train_yaml = objects[0]["data"]["train.yaml"]
    assert "dir: /checkpoints/trainingjobs/run\n" in train_yaml and f"{UID_TAG}: u-1" in train_yaml
    volumes = job_obj["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "checkpoints", "mountPath": "/checkpoints", "subPath": "sub"} in volumes
    other = attempt_manifests(tj(workers=3, train={"train": {"batch_size": 6}}), 3, PLATFORM, suspend=True)
    assert other[0]["data"]["train.yaml"] == train_yaml, "every attempt resumes from the same checkpoint dir"
    assert other[-1]["spec"]["suspend"] is True


# --- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"workers": 3, "train": {"train": {"batch_size": 4}}}, "spec.train.train.batch_size=4"),
        ({"train": {"train": {"warmup": 3}}}, "spec.train.train.warmup: unknown key"),
        ({"train": {"optimizer": {}}}, "spec.train.optimizer: unknown section"),
        ({"train": {"train": {"lr": -1}}}, "spec.train.train.lr=-1.0"),
        ({"train": {"checkpoint": {"dir": "/x"}}}, "spec.train.checkpoint.dir: set spec.checkpointDir instead"),
        ({"train": {"distributed": {"backend": "nccl"}}}, "spec.train.distributed.backend: set spec.backend"),
        ({"gpusPerWorker": 1}, "spec.gpusPerWorker=1: this platform has no GPUs"),
        ({"train": "nope"}, "spec.train: must be a mapping"),
    ],
)
def test_spec_problems_name_the_field(spec: dict[str, Any], needle: str) -> None:
    problems = spec_problems(tj(**spec), gpus_available=False)
    assert any(needle in p for p in problems), problems


def test_more_than_one_worker_on_a_read_write_once_pod_volume_is_refused() -> None:
    # ReadWriteOncePod: one pod in the cluster may mount the checkpoint volume, so rank 1 could never start.
    problems = spec_problems(tj(workers=2), gpus_available=False, access_mode="ReadWriteOncePod")
    assert problems == [
        "spec.workers=2: the checkpoint volume is ReadWriteOncePod, so only one pod can mount it; "
        "use workers: 1 with more GPUs per worker, or ask the platform for a ReadWriteOnce/ReadWriteMany volume"
    ]
    assert spec_problems(tj(workers=1), gpus_available=False, access_mode="ReadWriteOncePod") == []
    assert spec_problems(tj(workers=2), gpus_available=False, access_mode="ReadWriteOnce") == []


def test_ranks_share_one_node_on_a_read_write_once_volume() -> None:
    """ReadWriteOnce: pods of one node may share the volume, so the ranks are kept on one node (required pod
    affinity on the run's pods); ReadWriteMany needs nothing."""
    rwo_platform = replace(PLATFORM, checkpoint_access_mode="ReadWriteOnce")
    rwo = attempt_manifests(tj(workers=2), 0, rwo_platform, suspend=False)
    affinity = rwo[-1]["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    term = affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    selector = term["labelSelector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == "run-a0", selector  # this attempt's pods, no other run's
    assert selector.items() <= rwo[-1]["spec"]["template"]["metadata"]["labels"].items()
    rwx = attempt_manifests(tj(workers=2), 0, replace(PLATFORM, checkpoint_access_mode="ReadWriteMany"), suspend=False)
    assert "affinity" not in rwx[-1]["spec"]["template"]["spec"]
    single = attempt_manifests(tj(workers=1), 0, rwo_platform, suspend=False)
    assert "affinity" not in single[-1]["spec"]["template"]["spec"]


def test_a_valid_spec_has_no_problems_and_gpus_count_in_the_world_size() -> None:
    assert spec_problems(tj(), gpus_available=False) == []
    assert spec_problems(tj(workers=2, gpusPerWorker=2, train={"train": {"batch_size": 8}}), gpus_available=True) == []
    assert spec_problems(tj(workers=2, gpusPerWorker=3, train={"train": {"batch_size": 8}}), gpus_available=True)
    assert run_shape(tj()) == (20, 4 * 64)


def test_validation_imports_no_torch() -> None:
    code = "import trainop.validate, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_settings_report_every_problem() -> None:
    with pytest.raises(SettingsError, match=r"WATCH_NAMESPACE is required.*CHECKPOINT_CLAIM is required.*GPUS"):
        from_env({"PLATFORM_IMAGE": "x", "GPUS_AVAILABLE": "maybe"})
    settings = from_env({"WATCH_NAMESPACE": "ml", "PLATFORM_IMAGE": "x", "CHECKPOINT_CLAIM": "c"})
    assert settings.gpus_available is False and settings.platform.checkpoint_sub_path is None


# --- observation: Job and pods -> state ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("the_job", "pods", "state"),
    [
        (None, [], MISSING),
        (job(), [pod("p0", "Pending")], PENDING),
        (job(), [pod("p0", "Running"), pod("p1", "Pending")], RUNNING),
        (job("Complete"), [pod("p0", "Succeeded", 0)], SUCCEEDED),
        (job(), [pod("p0", "Running"), pod("p1", "Failed", 1)], FAILED),
        (job("Failed"), [], FAILED),
        (job(), [pod("p0", "Failed", 1), pod("p1", "Failed", 2, "bad key")], CONFIG_ERROR),
        (job(), [pod("p0", "Failed", 1), pod("p1", "Failed", 137, disrupted=True)], PREEMPTED),
        (job(suspend=True), [pod("p0", "Failed", 143)], SUSPENDED),
        # The Job ignored a preempted pod's failure (podFailurePolicy) and completed with its replacement: done.
        (job("Complete"), [pod("p1", "Failed", 137, disrupted=True), pod("p1b", "Succeeded", 0)], SUCCEEDED),
        (job("Complete"), [pod("p1", "Failed", 1), pod("p1b", "Succeeded", 0)], SUCCEEDED),
    ],
)
def test_observe(the_job: dict | None, pods: list[dict], state: str) -> None:
    assert observe(the_job, pods).state == state


def test_a_config_error_carries_the_trainers_message() -> None:
    seen = observe(job("Failed"), [pod("run-a0-train-1-x", "Failed", 2, "train.lr=-1.0: must be > 0")])
    assert seen == Observation(CONFIG_ERROR, "pod run-a0-train-1-x: train.lr=-1.0: must be > 0")


# --- the restart decision -----------------------------------------------------------------------------------
def decide(status: dict[str, Any], state: str, max_restarts: int = 3) -> Any:
    return transition(status, Observation(state, "pod p failed"), max_restarts=max_restarts, now=NOW,
                      backoff_base_s=10)  # fmt: skip


def test_a_retriable_failure_restarts_the_gang_with_backoff() -> None:
    step = decide({"phase": "Running", "attempt": 0, "restarts": 0}, FAILED)
    assert (step.phase, step.reason, step.attempt, step.restarts, step.preemptions) == (
        "Restarting", "WorkerFailed", 1, 1, 0)  # fmt: skip
    assert step.restart_after == NOW + dt.timedelta(seconds=10)
    step = decide({"phase": "Running", "attempt": 2, "restarts": 2}, FAILED)
    assert step.restart_after == NOW + dt.timedelta(seconds=40) and step.attempt == 3


def test_restarts_stop_at_max_restarts() -> None:
    step = decide({"phase": "Running", "attempt": 3, "restarts": 3}, FAILED)
    assert (step.phase, step.reason, step.attempt) == ("Failed", "RestartLimitExceeded", 3)
    assert decide({"phase": "Running"}, FAILED, max_restarts=0).phase == "Failed"


def test_preemptions_are_counted_apart_and_do_not_use_up_restarts() -> None:
    step = decide({"phase": "Running", "attempt": 3, "restarts": 3, "preemptions": 1}, PREEMPTED)
    assert (step.phase, step.reason, step.attempt, step.restarts, step.preemptions) == (
        "Restarting", "Preempted", 4, 3, 2)  # fmt: skip
    assert step.restart_after == NOW


def test_config_error_fails_at_once() -> None:
    step = decide({"phase": "Running", "attempt": 0, "restarts": 0}, CONFIG_ERROR)
    assert (step.phase, step.reason, step.attempt, step.restarts) == ("Failed", "ConfigError", 0, 0)


@pytest.mark.parametrize(("state", "phase"), [(SUCCEEDED, "Succeeded"), (SUSPENDED, "Suspended"),
                                              (RUNNING, "Running"), (PENDING, "Pending")])  # fmt: skip
def test_other_states_map_to_phases(state: str, phase: str) -> None:
    assert decide({"phase": "Running", "attempt": 1, "restarts": 1}, state).phase == phase


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_seconds(n, 10) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_seconds(12, 10) == 300


# --- conditions -------------------------------------------------------------------------------------------
def test_conditions_are_written_whole_and_keep_transition_times() -> None:
    first = conditions([], "Pending", "Created", "made", NOW)
    assert first == [{"type": "Created", "status": "True", "reason": "Created", "message": "made",
                      "lastTransitionTime": "2030-01-01T00:00:00Z"}]  # fmt: skip
    later = NOW + dt.timedelta(minutes=5)
    running = conditions(first, "Running", "Running", "up", later)
    by_type = {c["type"]: c for c in running}
    assert by_type["Created"]["status"] == "True" and by_type["Created"]["lastTransitionTime"] == "2030-01-01T00:00:00Z"
    assert by_type["Running"]["status"] == "True" and by_type["Running"]["lastTransitionTime"] == "2030-01-01T00:05:00Z"
    suspended = {c["type"]: c for c in conditions(running, "Suspended", "Suspended", "paused", later)}
    assert suspended["Running"]["status"] == "False" and suspended["Running"]["reason"] == "Running"
    assert suspended["Suspended"]["status"] == "True"


# --- progress from MLflow -------------------------------------------------------------------------------
def test_progress_from_an_mlflow_run() -> None:
    run = {
        "info": {"run_id": "abc"},
        "data": {
            "metrics": [{"key": "train_loss", "value": 1.5, "step": 50}, {"key": "val_loss", "value": 1.7, "step": 50},
                        {"key": "tokens_per_s", "value": 256.0, "step": 50}],
            "tags": [{"key": CHECKPOINT_PATH_TAG, "value": "/checkpoints/x/step-00000050"},
                     {"key": CHECKPOINT_STEP_TAG, "value": "50"}, {"key": "registered_model_version", "value": "3"}],
        },
    }  # fmt: skip
    out = progress_from_run(run, (200, 256), NOW)
    assert out["mlflowRunId"] == "abc" and out["modelVersion"] == "3"
    assert out["latestCheckpoint"] == {"path": "/checkpoints/x/step-00000050", "step": 50}
    progress = out["progress"]
    assert (progress["step"], progress["maxSteps"], progress["percent"]) == (50, 200, 25)
    assert (progress["trainLoss"], progress["valLoss"], progress["tokensPerSecond"]) == (1.5, 1.7, 256.0)
    assert progress["eta"] == "2030-01-01T00:02:30Z"  # 150 steps x 256 tokens at 256 tokens/s
    assert progress_from_run({"info": {"run_id": "r"}, "data": {}}, None, NOW) == {"mlflowRunId": "r"}
