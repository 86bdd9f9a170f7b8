"""`pulumi preview`, `up`, update and `destroy` of both stacks through the real engine (the pulumi CLI, the Python
language host and pulumi-resource-kubernetes; tests/engine/pulumi_engine.py says which) against the local control
plane, where the inference pods run but stay unready as they do until training registers a model.

What only the engine shows: the provider's await logic (what `pulumi up` waits for), replacement of the Job,
updates in place, resource options (protect) and the policy pack as the CLI runs it, and that `pulumi up` stops
before creating anything when the cluster lacks what the stack reads (an IngressClass, cert-manager). TLS stays
off otherwise: cert-manager runs on the cluster tier (tests/cluster/test_e2e.py), which kwok's pods cannot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto

from tests.engine.cluster import CPU_NODE, GPU_NODE, LocalCluster
from tests.engine.conftest import render, toolchain_dir
from tests.engine.pulumi_engine import Engine, copy_project, find_engine, install_policy_pack, stack
from tests.engine.test_control_plane import storage_class_pool
from tests.harness.api import condition
from tests.harness.wait import eventually

pytestmark = pytest.mark.engine

DEV_NS = "engine-dev"
GPU_NS = "engine-gpu"
# Other NodePorts than the control-plane tests' dev stack, which may still be deleting when these start.
DEV = {"namespace": DEV_NS, "tlsEnabled": False, "tlsInstallCertManager": False, "ingressEnabled": True,
       "inferenceNodePort": 30192, "mlflowNodePort": 30600}  # fmt: skip
# No Ingress on gpu: without TLS (no cert-manager here) the policy pack refuses it, as the last test shows.
# The dev stack on the same control plane owns the cluster-wide TrainingJob CRD.
GPU = {"namespace": GPU_NS, "tlsEnabled": False, "ingressEnabled": False, "trainingJobCrd": False}
GPU_SECRETS = {"postgresPassword": "engine-tier-pg-password"}
TIMINGS = Path(__file__).resolve().parents[2] / "build" / "engine-timings.json"
JOB_TIMEOUT_S = 240


UNCHANGED = {"same", "read"}
"""Engine steps that change nothing in the cluster."""


class Recorder:
    """Engine events of one operation: the steps (create, same, update, replace, delete-replaced, ...) per resource."""

    def __init__(self) -> None:
        self.ops: dict[str, set[str]] = {}

    def event(self, ev: auto.EngineEvent) -> None:
        pre = ev.resource_pre_event
        if pre is not None and pre.metadata is not None:
            op = pre.metadata.op
            self.ops.setdefault(pre.metadata.urn, set()).add(str(getattr(op, "value", op)))

    def changed(self) -> dict[str, set[str]]:
        """Kubernetes kind (`kubernetes:batch/v1:Job`) -> steps, for every resource that was not left the same
        (a `read`, of what the cluster must already have, such as the IngressClass, changes nothing)."""
        out: dict[str, set[str]] = {}
        for urn, ops in self.ops.items():
            if not ops <= UNCHANGED:
                out.setdefault(kind_of(urn), set()).update(ops)
        return out


def up(s: auto.Stack, **kw: Any) -> tuple[auto.UpResult, Recorder, float]:
    rec = Recorder()
    start = time.monotonic()
    try:
        result = s.up(on_event=rec.event, color="never", **kw)
    except auto.CommandError as err:
        raise AssertionError(f"pulumi up -s {s.name} failed:\n{err}") from None
    return result, rec, time.monotonic() - start


def record_timing(name: str, seconds: float) -> None:
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = round(seconds, 1)
    TIMINGS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def kind_of(urn: str) -> str:
    """`kubernetes:batch/v1:Job` from a URN."""
    return urn.split("::")[-2].split("$")[-1]


def live(cluster: LocalCluster, obj: dict[str, Any]) -> dict[str, Any] | None:
    meta = obj["metadata"]
    return cluster.api.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def wait_job_complete(cluster: LocalCluster, namespace: str, name: str, not_uid: str | None = None) -> dict[str, Any]:
    def complete() -> dict[str, Any] | None:
        job = cluster.api.get("batch/v1", "Job", name, namespace)
        if job is None or job["metadata"]["uid"] == not_uid:
            return None
        if condition(job, "Failed") == "True":
            raise AssertionError(f"Job {name} failed: {job['status']}")
        return job if condition(job, "Complete") == "True" else None

    return dict(eventually(f"Job {name} Complete", complete, JOB_TIMEOUT_S))


def pods_of(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return cluster.api.items("v1", "Pod", namespace, selector=f"app.kubernetes.io/name={name}")


def assert_everything_exists(cluster: LocalCluster, objects: list[dict[str, Any]]) -> None:
    missing = [f"{o['kind']} {o['metadata']['name']}" for o in objects if live(cluster, o) is None]
    assert not missing, f"declared but not in the cluster: {missing}"


def forget(s: auto.Stack) -> None:
    """End of a module: drop the stack's state and leave its objects to the session's control plane, which is thrown
    away with them. A full `destroy` here (unprotect, `up`, `destroy`: two stacks, about 300 s of the engine tier)
    would repeat what the cluster tier proves on real pods (test_e2e.py's
    test_destroy_with_live_work_keeps_exactly_the_protected_data_then_removes_everything); the protected destroy
    is tested here (test_dev_destroy_keeps_the_data_and_removes_the_rest). The two stacks' namespaces, names and
    volumes are their own (engine-dev, engine-gpu), so nothing later in the session meets them."""
    s.workspace.remove_stack(s.name, force=True)


# --- dev ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev_stack(
    engine: Engine, cluster: LocalCluster, ingress_classes: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[auto.Stack]:
    project = copy_project(tmp_path_factory.mktemp("project-dev"))
    s = stack(engine, project, "dev", cluster.kubeconfig, {k: str(v).lower() if isinstance(v, bool) else str(v)
                                                            for k, v in DEV.items()}, {})  # fmt: skip
    yield s
    forget(s)


@pytest.fixture(scope="module")
def dev_objects() -> list[dict[str, Any]]:
    return render("dev", **DEV)


def test_dev_up_creates_everything_without_waiting_for_a_model(
    cluster: LocalCluster, dev_stack: auto.Stack, dev_objects: list[dict[str, Any]]
) -> None:
    result, rec, seconds = up(dev_stack)
    record_timing("dev first up (s)", seconds)
    assert result.summary.result == "succeeded"
    assert_everything_exists(cluster, dev_objects)
    # No model exists yet: the inference pods run without being ready, and `up` returned all the same (it waits
    # neither for the Deployment nor for the Service's endpoints).
    pods = pods_of(cluster, DEV_NS, "inference")
    assert pods and all(condition(p, "Ready") != "True" for p in pods), [p.get("status") for p in pods]
    assert result.outputs["jobName"].value == "run-1-train"
    # Everything is created; the one read is the IngressClass the dev stack needs (the cluster has it).
    reads = [urn.rsplit("::", 1)[1] for urn, ops in rec.ops.items() if ops == {"read"}]
    assert reads == ["inference-ingressClassName=traefik"], rec.ops
    assert set().union(*(ops for ops in rec.ops.values() if ops != {"read"})) == {"create"}, rec.ops


def test_dev_preview_and_second_up_change_nothing(cluster: LocalCluster, dev_stack: auto.Stack) -> None:
    dev_stack.preview(expect_no_changes=True, color="never")
    result, rec, _ = up(dev_stack, expect_no_changes=True)
    changes = result.summary.resource_changes or {}
    assert "same" in changes and set(changes) <= UNCHANGED, rec.changed()
    assert not rec.changed()


def test_dev_training_change_replaces_the_job_and_the_new_job_runs(
    cluster: LocalCluster, dev_stack: auto.Stack
) -> None:
    """The Job's pod template is immutable and its name fixed: Pulumi deletes the old Job, waits until it is gone,
    then creates the new one (a delete that returned at once would make the create fail with 'already exists')."""
    old = wait_job_complete(cluster, DEV_NS, "run-1-train")
    dev_stack.set_config("trainMaxSteps", auto.ConfigValue("321"))
    try:
        _, rec, _ = up(dev_stack)
    finally:
        dev_stack.set_config("trainMaxSteps", auto.ConfigValue("2000"))
    changed = rec.changed()
    assert "replace" in changed.get("kubernetes:batch/v1:Job", set()), changed
    # The provider treats a ConfigMap's data as immutable: it is replaced too (delete first, the name is fixed).
    assert "replace" in changed.get("kubernetes:core/v1:ConfigMap", set()), changed
    assert set(changed) == {"kubernetes:batch/v1:Job", "kubernetes:core/v1:ConfigMap"}, changed
    new = wait_job_complete(cluster, DEV_NS, "run-1-train", not_uid=old["metadata"]["uid"])
    config = cluster.api.get("v1", "ConfigMap", "run-1-train-config", DEV_NS)
    assert config is not None and "max_steps: 321" in config["data"]["train.yaml"]
    assert new["status"]["succeeded"] == new["spec"]["completions"]
    # Back to the stack's value: replaced again, and completes again.
    up(dev_stack)
    wait_job_complete(cluster, DEV_NS, "run-1-train", not_uid=new["metadata"]["uid"])


def test_dev_inference_change_rolls_the_deployment_and_leaves_the_job(
    cluster: LocalCluster, dev_stack: auto.Stack
) -> None:
    job = cluster.api.get("batch/v1", "Job", "run-1-train", DEV_NS)
    deployment = cluster.api.get("apps/v1", "Deployment", "inference", DEV_NS)
    assert job is not None and deployment is not None
    dev_stack.set_config("inferenceMemoryLimit", auto.ConfigValue("700Mi"))
    _, rec, _ = up(dev_stack)
    assert rec.changed() == {"kubernetes:apps/v1:Deployment": {"update"}}
    after = cluster.api.get("apps/v1", "Deployment", "inference", DEV_NS)
    assert after is not None and after["metadata"]["uid"] == deployment["metadata"]["uid"]
    assert after["metadata"]["generation"] > deployment["metadata"]["generation"]
    container = after["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "700Mi"
    same_job = cluster.api.get("batch/v1", "Job", "run-1-train", DEV_NS)
    assert same_job is not None and same_job["metadata"]["uid"] == job["metadata"]["uid"]


def test_dev_policy_pack_through_the_engine(engine: Engine, dev_stack: auto.Stack) -> None:
    project = Path(dev_stack.workspace.work_dir)
    install_policy_pack(engine, project)
    result = dev_stack.preview(policy_packs=[str(project / "policy")], expect_no_changes=True, color="never")
    # The CLI lists each pack it ran with its verdict.
    assert "✅ ml-platform@" in result.stdout, result.stdout


def test_dev_destroy_keeps_the_data_and_removes_the_rest(
    cluster: LocalCluster, dev_stack: auto.Stack, dev_objects: list[dict[str, Any]]
) -> None:
    """The data claims (and their PVs) are protected, and with them what they depend on: the namespace, its quota
    and limits. `destroy` deletes everything else and then fails, naming the protected resources;
    `destroy --exclude-protected` says the same without failing; `up` brings the rest back over the same data."""
    kinds = {"Namespace", "ResourceQuota", "LimitRange", "PersistentVolumeClaim", "PersistentVolume"}

    def is_kept(obj: dict[str, Any]) -> bool:
        # The team namespaces are protected too (their users' volumes), not their quota or limits (docs/teams.md).
        return obj["kind"] in kinds and obj["metadata"].get("namespace") in (None, DEV_NS)

    claim = cluster.api.get("v1", "PersistentVolumeClaim", "checkpoints", DEV_NS)
    with pytest.raises(auto.CommandError) as refused:
        dev_stack.destroy(color="never")
    assert "protected" in str(refused.value) and "PersistentVolumeClaim" in str(refused.value), refused.value

    def rest_gone() -> list[str]:
        rest = (o for o in dev_objects if not is_kept(o))
        return [f"{o['kind']} {o['metadata']['name']}" for o in rest if live(cluster, o)]

    wait_for_empty("everything but the protected resources deleted", rest_gone)
    for obj in dev_objects:
        if is_kept(obj):
            assert live(cluster, obj) is not None, f"{obj['kind']} {obj['metadata']['name']} was deleted"
    assert cluster.api.items("v1", "Pod", DEV_NS) == []
    dev_stack.destroy(exclude_protected=True, color="never")  # nothing left to do, and no error

    result, _, _ = up(dev_stack)
    assert result.summary.result == "succeeded"
    assert_everything_exists(cluster, dev_objects)
    again = cluster.api.get("v1", "PersistentVolumeClaim", "checkpoints", DEV_NS)
    assert claim is not None and again is not None and again["metadata"]["uid"] == claim["metadata"]["uid"]


def wait_for_empty(what: str, check: Callable[[], list[str]], timeout_s: float = 180) -> None:
    """Poll until `check` returns nothing; a timeout names `what` and what was still left."""
    left: list[str] = []

    def empty() -> bool:
        left[:] = check()
        return not left

    try:
        eventually(what, empty, timeout_s, 1, retry_on=())
    except TimeoutError as err:
        raise AssertionError(f"{err}; left: {left}") from None


# --- gpu ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_stack(
    engine: Engine,
    cluster: LocalCluster,
    monitoring_crds: None,
    ingress_classes: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[auto.Stack]:
    objects = render("gpu", **GPU)
    classes = sorted({o["spec"]["storageClassName"] for o in objects if o["kind"] == "PersistentVolumeClaim"})
    for obj in (o for c in classes for o in storage_class_pool(c, 4, "64Gi")):
        if obj["kind"] == "PersistentVolume":
            obj["metadata"]["name"] = f"engine-{obj['metadata']['name']}"
        cluster.api.apply(obj)
    project = copy_project(tmp_path_factory.mktemp("project-gpu"))
    s = stack(engine, project, "gpu", cluster.kubeconfig, {k: str(v).lower() if isinstance(v, bool) else str(v)
                                                            for k, v in GPU.items()}, GPU_SECRETS)  # fmt: skip
    yield s
    forget(s)


def test_gpu_up_runs_training_on_the_gpu_node(cluster: LocalCluster, gpu_stack: auto.Stack) -> None:
    result, _, seconds = up(gpu_stack)
    record_timing("gpu first up (s)", seconds)
    assert result.summary.result == "succeeded"
    assert_everything_exists(cluster, render("gpu", **GPU))
    job = wait_job_complete(cluster, GPU_NS, "run-1-train")
    pods = cluster.api.items("v1", "Pod", GPU_NS, selector="batch.kubernetes.io/job-name=run-1-train")
    assert len(pods) == job["spec"]["completions"] > 1
    assert {p["spec"]["nodeName"] for p in pods} == {GPU_NODE}
    others = [p for p in cluster.api.items("v1", "Pod", GPU_NS) if p not in pods]
    assert others and {p["spec"].get("nodeName") for p in others} == {CPU_NODE}


def test_gpu_policy_pack_through_the_engine(engine: Engine, gpu_stack: auto.Stack) -> None:
    """The pack runs in the CLI's preview: the gpu stack passes it with no changes pending, and an Ingress without
    TLS on a GPU stack is refused by its mandatory rule."""
    project = Path(gpu_stack.workspace.work_dir)
    install_policy_pack(engine, project)
    policy = str(project / "policy")
    result = gpu_stack.preview(expect_no_changes=True, policy_packs=[policy], color="never")
    assert "✅ ml-platform@" in result.stdout, result.stdout
    gpu_stack.set_config("ingressEnabled", auto.ConfigValue("true"))
    try:
        with pytest.raises(auto.CommandError) as refused:
            gpu_stack.preview(policy_packs=[policy], color="never")
    finally:
        gpu_stack.set_config("ingressEnabled", auto.ConfigValue("false"))
    assert "tls-on-gpu-ingress" in str(refused.value), refused.value


# --- what the cluster must already have -----------------------------------------------------------------------
LACKING = {
    "ingress-class": ({"ingressClassName": "no-such-class"}, "inference-ingressClassName=no-such-class"),
    "cert-manager": (
        {"tlsEnabled": "true", "tlsInstallCertManager": "false"},
        "tls-tlsInstallCertManager=false:cert-manager-crd",
    ),
}


def test_preview_fails_and_creates_nothing_when_the_cluster_lacks_what_the_stack_reads(
    cluster: LocalCluster, ingress_classes: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No controller of `ingressClassName`, or TLS on a cluster without cert-manager and `tlsInstallCertManager`
    false: `pulumi preview` fails naming the key and what is missing, and the cluster gains nothing; so does the
    CLI's `pulumi up`, which previews first (the Automation API's `up` skips the preview, hence `preview` here).
    One project copy for both cases, with an engine of its own: its state backend holds no other `dev` stack."""
    namespace = "engine-lacks"
    engine = find_engine(toolchain_dir(), tmp_path_factory.mktemp("pulumi-home-lacks"))
    project = copy_project(tmp_path_factory.mktemp("project-lacks"))
    base = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in DEV.items()} | {"namespace": namespace}
    s = stack(engine, project, "dev", cluster.kubeconfig, base, {})
    messages = {}
    try:
        for case, (config, read) in LACKING.items():
            s.set_all_config({key: auto.ConfigValue(value) for key, value in {**base, **config}.items()})
            with pytest.raises(auto.CommandError) as failed:
                s.preview(color="never")
            messages[case] = str(failed.value)
            assert read in messages[case] and "does not exist" in messages[case], messages[case][-3000:]
            assert cluster.api.get("v1", "Namespace", namespace) is None
            for key in config:
                s.remove_config(key)
    finally:
        s.workspace.remove_stack("dev", force=True)
    for case, message in messages.items():
        print(f"\n{case}: " + next(line for line in message.splitlines() if "does not exist" in line))
