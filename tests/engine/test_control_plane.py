"""The objects both stacks declare, applied to a real API server with the admission plugins of a real cluster,
run by the real controllers and scheduler on kwok's simulated nodes.

What this catches that the mocks cannot: field validation (server-side apply with fieldValidation=Strict),
defaulting, ResourceQuota and Pod Security admission of the pods the controllers create, scheduling against
node capacity, GPU resources, taints and node selectors, PV/PVC binding, Job completion, Deployment
availability, and the immutability of a Job's pod template (why the program replaces the Job).

The objects come from `infra.render` (the real program under the SDK's mocks), not from `pulumi up`: the
pulumi CLI and pulumi-resource-kubernetes cannot be built from the Go module proxy this project reaches
(docs/engine.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.cluster import CPU_NODE, GPU_NODE, LocalCluster
from tests.engine.conftest import render
from tests.harness.api import ApiError, condition
from tests.harness.wait import eventually

pytestmark = pytest.mark.engine

DEV_NS = "ml-platform-dev"
GPU_NS = "ml-platform-gpu"
# The dev stack without TLS: the cert-manager chart cannot be fetched here, and without it the cluster has no
# cert-manager.io CRDs for the Issuer and Certificate objects.
DEV = {"namespace": DEV_NS, "tlsEnabled": False, "tlsInstallCertManager": False, "ingressEnabled": True}
GPU = {"namespace": GPU_NS, "tlsEnabled": False, "ingressEnabled": True}
JOB_TIMEOUT_S = 240
ROLLOUT_TIMEOUT_S = 180


def key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"


def apply_all(cluster: LocalCluster, objects: list[dict[str, Any]]) -> None:
    errors = []
    for obj in objects:
        try:
            cluster.api.apply(obj)
        except ApiError as err:
            errors.append(str(err))
    assert not errors, "the API server rejected objects:\n" + "\n".join(errors)


def delete_all(cluster: LocalCluster, objects: list[dict[str, Any]]) -> None:
    for obj in reversed(objects):
        meta = obj["metadata"]
        cluster.api.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


def only(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def job_pods(cluster: LocalCluster, job: dict[str, Any]) -> list[dict[str, Any]]:
    ns = job["metadata"]["namespace"]
    return cluster.api.items("v1", "Pod", ns, selector=f"batch.kubernetes.io/job-name={job['metadata']['name']}")


def events(cluster: LocalCluster, namespace: str, *reasons: str) -> list[str]:
    return [
        f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e.get('reason')}: {e.get('message')}"
        for e in cluster.api.events(namespace)
        if e.get("reason") in reasons
    ]


def failed_creates(cluster: LocalCluster, namespace: str) -> list[str]:
    """Controllers that could not create a pod: quota, Pod Security or service account admission refused it."""
    return events(cluster, namespace, "FailedCreate")


def diagnostics(cluster: LocalCluster, namespace: str) -> str:
    return "events: " + "\n".join(
        events(cluster, namespace, "FailedCreate", "FailedScheduling", "BackoffLimitExceeded")
    )


def wait_job_complete(cluster: LocalCluster, job: dict[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]

    def complete() -> dict[str, Any] | None:
        live = cluster.api.get("batch/v1", "Job", meta["name"], meta["namespace"])
        if condition(live, "Failed") == "True":
            raise AssertionError(f"Job {meta['name']} failed: {live['status']}")  # type: ignore[index]
        return live if condition(live, "Complete") == "True" else None

    try:
        return dict(eventually(f"Job {meta['name']} Complete", complete, JOB_TIMEOUT_S))
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{diagnostics(cluster, meta['namespace'])}\ncontroller-manager:\n"
                             f"{cluster.log_tail('kube-controller-manager', 15)}") from None  # fmt: skip


def wait_deployments_available(cluster: LocalCluster, deployments: list[dict[str, Any]]) -> None:
    for dep in deployments:
        meta = dep["metadata"]

        def available(meta: dict[str, Any] = meta) -> bool:
            live = cluster.api.get("apps/v1", "Deployment", meta["name"], meta["namespace"]) or {}
            status = live.get("status") or {}
            return (
                condition(live, "Available") == "True"
                and status.get("observedGeneration") == live["metadata"]["generation"]
                and status.get("readyReplicas", 0) >= 1
                and status.get("readyReplicas") == status.get("replicas") == status.get("updatedReplicas")
            )

        try:
            eventually(f"Deployment {meta['name']} Available", available, ROLLOUT_TIMEOUT_S)
        except TimeoutError as err:
            raise AssertionError(f"{err}\n{diagnostics(cluster, meta['namespace'])}") from None


# --- dev ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev(cluster: LocalCluster) -> Iterator[list[dict[str, Any]]]:
    objects = render("dev", **DEV)
    apply_all(cluster, objects)
    yield objects


def test_dev_every_object_is_created(cluster: LocalCluster, dev: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in dev}
    assert {"Namespace", "ResourceQuota", "LimitRange", "PersistentVolume", "PersistentVolumeClaim", "Job",
            "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"} <= kinds  # fmt: skip
    missing = [key(o) for o in dev
               if cluster.api.get(o["apiVersion"], o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
               is None]  # fmt: skip
    assert not missing
    for pvc in only(dev, "PersistentVolumeClaim"):
        meta = pvc["metadata"]

        def bound(meta: dict[str, Any] = meta) -> bool:
            live = cluster.api.get("v1", "PersistentVolumeClaim", meta["name"], meta["namespace"]) or {}
            return bool(live.get("status", {}).get("phase") == "Bound")

        eventually(f"PVC {meta['name']} Bound", bound, 60)


def test_dev_training_job_pods_pass_admission_and_the_job_completes(
    cluster: LocalCluster, dev: list[dict[str, Any]]
) -> None:
    (job,) = only(dev, "Job")
    live = wait_job_complete(cluster, job)
    workers = job["spec"]["completions"]
    assert live["status"]["succeeded"] == workers
    pods = job_pods(cluster, job)
    assert len(pods) == workers, [p["metadata"]["name"] for p in pods]
    for pod in pods:
        assert pod["status"]["phase"] == "Succeeded"
        assert pod["spec"]["nodeName"] == CPU_NODE
        # LimitRange and the program's own resources: every container ends up with cpu/memory limits.
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
    assert sorted(int(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]) for p in pods) == list(
        range(workers)
    )
    assert not [e for e in failed_creates(cluster, DEV_NS) if "train" in e]


def serving_deployments(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployments that become Available without a trained model (all but inference)."""
    return [d for d in only(objects, "Deployment") if d["metadata"]["name"] != "inference"]


def assert_inference_waits_for_a_model(cluster: LocalCluster, namespace: str) -> None:
    """The inference pods are admitted, scheduled and running, but not ready: /readyz answers 503 until a model
    version carries the alias (the cluster's kwok stage for them, see NEVER_READY_LABEL)."""

    def running_unready() -> list[dict[str, Any]]:
        pods = cluster.api.items("v1", "Pod", namespace, selector="app.kubernetes.io/name=inference")
        return [p for p in pods if p["status"].get("phase") == "Running" and condition(p, "Ready") == "False"]

    assert eventually("inference pods running, unready", running_unready, ROLLOUT_TIMEOUT_S)


def test_dev_deployments_become_available(cluster: LocalCluster, dev: list[dict[str, Any]]) -> None:
    deployments = serving_deployments(dev)
    assert {d["metadata"]["name"] for d in deployments} >= {"mlflow"}
    wait_deployments_available(cluster, deployments)
    assert_inference_waits_for_a_model(cluster, DEV_NS)


def test_admission_is_enforced_in_the_platform_namespace(cluster: LocalCluster, dev: list[dict[str, Any]]) -> None:
    """The fixture's admission is real: a pod the restricted Pod Security level forbids and a pod over the
    namespace's quota are both rejected (so the passing pods above did pass them)."""

    def pod(name: str, *, privileged: bool = False, cpu: str = "100m") -> dict[str, Any]:
        security: dict[str, Any] = (
            {"privileged": True}
            if privileged
            else {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            }
        )
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": DEV_NS},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "c",
                        "image": "busybox:1.36",
                        "securityContext": security,
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"cpu": cpu, "memory": "16Mi"}},
                    }
                ],
            },
        }  # fmt: skip

    with pytest.raises(ApiError) as denied:
        cluster.api.create(pod("privileged", privileged=True))
    assert denied.value.status == 403 and "PodSecurity" in str(denied.value), denied.value
    with pytest.raises(ApiError) as over:
        cluster.api.create(pod("greedy", cpu="1000"))
    assert over.value.status == 403 and "exceeded quota" in str(over.value), over.value


def test_apply_rejects_what_the_api_server_would_not_store(cluster: LocalCluster, dev: list[dict[str, Any]]) -> None:
    """The apply above is strict: an unknown field (a typo the provider's schema types would let through as
    raw YAML, or a field of another API version) and an invalid value are errors, not silently dropped."""
    (job,) = only(dev, "Job")
    typo = {**job, "metadata": {**job["metadata"], "name": "strict-typo"}}
    typo["spec"] = {**job["spec"], "completionz": 2}
    with pytest.raises(ApiError) as unknown:
        cluster.api.apply(typo)
    assert ".spec.completionz: field not declared in schema" in str(unknown.value), unknown.value
    bad = {**job, "metadata": {**job["metadata"], "name": "strict-invalid"}}
    bad["spec"] = {**job["spec"], "completionMode": "Sometimes"}
    with pytest.raises(ApiError) as invalid:
        cluster.api.apply(bad)
    assert invalid.value.status == 422 and "completionMode" in str(invalid.value), invalid.value


def test_dev_changed_training_run_needs_a_new_job(cluster: LocalCluster, dev: list[dict[str, Any]]) -> None:
    """A changed train.yaml changes the Job's pod template (checksum annotation). Kubernetes refuses to update
    a Job's template in place, which is why the program declares the Job with deleteBeforeReplace; the
    replacement (delete, then create) runs to completion."""
    (old_job,) = only(dev, "Job")
    changed = render("dev", **DEV, trainMaxSteps=1234)
    (new_job,) = only(changed, "Job")
    assert new_job["metadata"]["name"] == old_job["metadata"]["name"]
    old_template = old_job["spec"]["template"]["metadata"]["annotations"]
    new_template = new_job["spec"]["template"]["metadata"]["annotations"]
    assert old_template != new_template, "a changed trainMaxSteps must change the Job's pod template"

    for obj in changed:
        if obj["kind"] != "Job":
            cluster.api.apply(obj)  # the ConfigMap takes the new train.yaml in place
    with pytest.raises(ApiError) as immutable:
        cluster.api.apply(new_job)
    assert immutable.value.status == 422 and "immutable" in str(immutable.value), immutable.value

    meta = new_job["metadata"]
    old_uid = cluster.api.get("batch/v1", "Job", meta["name"], meta["namespace"])["metadata"]["uid"]  # type: ignore[index]
    cluster.api.delete("batch/v1", "Job", meta["name"], meta["namespace"])
    eventually("old Job gone", lambda: cluster.api.get("batch/v1", "Job", meta["name"], meta["namespace"]) is None, 120)
    cluster.api.apply(new_job)
    live = wait_job_complete(cluster, new_job)
    assert live["metadata"]["uid"] != old_uid
    volumes = new_job["spec"]["template"]["spec"]["volumes"]
    cm_name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)  # the stack has other ConfigMaps
    cm = next(o for o in changed if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name)
    live_cm = cluster.api.get("v1", "ConfigMap", cm["metadata"]["name"], DEV_NS)
    assert "max_steps: 1234" in next(iter(live_cm["data"].values()))  # type: ignore[index]


def test_dev_delete_removes_everything(cluster: LocalCluster, dev: list[dict[str, Any]]) -> None:
    delete_all(cluster, dev)

    def gone() -> bool:
        api = cluster.api
        return not [
            key(o)
            for o in dev
            if api.get(o["apiVersion"], o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
        ]

    eventually("every dev object deleted (namespace finalized)", gone, 180)
    assert cluster.api.items("v1", "Pod", DEV_NS) == []


# --- gpu ----------------------------------------------------------------------------------------------------
def storage_class_pool(name: str, count: int, size: str) -> list[dict[str, Any]]:
    """What the gpu stack's cluster provides and this one lacks: a StorageClass `name` with volumes behind it
    (statically provisioned here, since no provisioner runs)."""
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
    ]
    for i in range(count):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{name}-{i}"},
                "spec": {
                    "storageClassName": name,
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                    "hostPath": {"path": f"/tmp/{name}-{i}"},
                    "persistentVolumeReclaimPolicy": "Delete",
                },
            }
        )
    return objects


@pytest.fixture(scope="module")
def gpu(cluster: LocalCluster, monitoring_crds: None) -> Iterator[list[dict[str, Any]]]:
    objects = render("gpu", **GPU)
    classes = {o["spec"]["storageClassName"] for o in only(objects, "PersistentVolumeClaim")}
    pool = [obj for c in sorted(classes) for obj in storage_class_pool(c, 4, "64Gi")]
    apply_all(cluster, pool)
    try:
        apply_all(cluster, objects)
        yield objects
    finally:  # also when an object was refused: what was created must not stay on the nodes for later tests
        delete_all(cluster, objects)


def test_gpu_training_runs_on_the_gpu_node(cluster: LocalCluster, gpu: list[dict[str, Any]]) -> None:
    (job,) = only(gpu, "Job")
    live = wait_job_complete(cluster, job)
    workers = job["spec"]["completions"]
    assert workers > 1 and live["status"]["succeeded"] == workers
    pods = job_pods(cluster, job)
    assert len(pods) == workers
    for pod in pods:
        assert pod["spec"]["nodeName"] == GPU_NODE
        trainer = pod["spec"]["containers"][0]
        assert int(trainer["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    quota = only(gpu, "ResourceQuota")[0]["metadata"]
    used = cluster.api.get("v1", "ResourceQuota", quota["name"], GPU_NS)["status"]  # type: ignore[index]
    assert "requests.nvidia.com/gpu" in used["hard"]


def test_gpu_services_come_up_off_the_gpu_node(cluster: LocalCluster, gpu: list[dict[str, Any]]) -> None:
    wait_deployments_available(cluster, serving_deployments(gpu))
    assert_inference_waits_for_a_model(cluster, GPU_NS)
    (sts,) = only(gpu, "StatefulSet")
    meta = sts["metadata"]

    def ready() -> bool:
        live = cluster.api.get("apps/v1", "StatefulSet", meta["name"], GPU_NS) or {}
        return (live.get("status") or {}).get("readyReplicas", 0) >= 1

    eventually(f"StatefulSet {meta['name']} ready", ready, ROLLOUT_TIMEOUT_S)
    for pod in cluster.api.items("v1", "Pod", GPU_NS):
        if pod["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "training":
            assert pod["spec"].get("nodeName") == CPU_NODE, pod["metadata"]["name"]
