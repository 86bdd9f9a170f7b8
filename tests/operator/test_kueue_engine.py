"""The operator with the real Kueue v0.17 manager (tests/engine/kueue.py: its webhooks, fair sharing, its visibility
API as an APIService) on the engine tier's control plane, kwok running the pods: a queued run is admitted and
runs, one that does not fit waits with Kueue's words and its position, a missing queue and a gang no queue could
admit are refused before anything exists, and a preemption by a higher-priority run evicts the same Job, counted
in preemptions, not restarts, until Kueue admits it again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.cluster import LocalCluster
from tests.engine.kueue import KueueManager
from tests.harness.wait import eventually
from tests.operator.harness import OperatorProcess, prepare_namespace, training_job
from tests.operator.test_engine import RUNNING_LONG, TIMEOUT_S
from workloads.trainingjob import API_VERSION, KIND, crd, operator_cluster_role_rules

pytestmark = pytest.mark.engine
NS = "trainop-kueue"
KUEUE = "kueue.x-k8s.io/v1beta2"
QUEUE, CLUSTER_QUEUE = "team-a", "trainop-kueue-cq"
# Two workers of 400m fit the ClusterQueue's 1 cpu once; a second such run waits.
WORKER = {"requests": {"cpu": "400m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}


def kueue_objects() -> list[dict[str, Any]]:
    quota = [{"name": "cpu", "nominalQuota": "1"}, {"name": "memory", "nominalQuota": "4Gi"}]
    return [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": "default"}, "spec": {}},
        {
            "apiVersion": KUEUE,
            "kind": "ClusterQueue",
            "metadata": {"name": CLUSTER_QUEUE},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default", "resources": quota}]}
                ],
                "preemption": {"withinClusterQueue": "LowerPriority"},
            },
        },
        {
            "apiVersion": KUEUE,
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": NS},
            "spec": {"clusterQueue": CLUSTER_QUEUE},
        },
        *(
            {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": f"trainop-{name}"},
             "value": value}
            for name, value in (("low", 100), ("high", 1000))
        ),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, kueue: KueueManager, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    cluster.api.apply(crd())
    eventually("the TrainingJob CRD served", lambda: cluster.api.resource(API_VERSION, KIND), 60)
    workdir = tmp_path_factory.mktemp("trainop-kueue")
    kubeconfig = prepare_namespace(cluster, NS, workdir)
    # What infra renders besides the Role: the one cluster-wide read (ClusterQueues).
    cluster.api.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                       "metadata": {"name": f"{NS}-operator"}, "rules": operator_cluster_role_rules()})  # fmt: skip
    cluster.api.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{NS}-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{NS}-operator"},
            "subjects": [{"kind": "ServiceAccount", "name": "trainop", "namespace": NS}],
        }
    )
    for obj in kueue_objects():
        cluster.api.apply(obj)
    proc = OperatorProcess(kubeconfig, NS, workdir / "operator.log")
    proc.start()
    yield proc
    proc.stop()
    print(proc.tail(200))
    print(kueue.log_tail(80))


@pytest.fixture(autouse=True)
def stop_runs(cluster: LocalCluster) -> Iterator[None]:
    """After each test, delete its runs, so the next one finds the ClusterQueue's quota free."""
    yield
    for tj in cluster.api.items(API_VERSION, KIND, NS):
        cluster.api.delete(API_VERSION, KIND, tj["metadata"]["name"], NS)
    eventually("the test's Jobs gone", lambda: not cluster.api.items("batch/v1", "Job", NS), TIMEOUT_S)


def status_of(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict((cluster.api.get(API_VERSION, KIND, name, NS) or {}).get("status") or {})


def wait_for(cluster: LocalCluster, op: OperatorProcess, kueue: KueueManager, name: str, what: str, check: Any) -> dict:
    def ok() -> dict[str, Any] | None:
        assert op.alive(), f"the operator exited:\n{op.tail()}"
        status = status_of(cluster, name)
        return status if check(status) else None

    try:
        return dict(eventually(f"{name}: {what}", ok, TIMEOUT_S))
    except TimeoutError as err:
        workloads = cluster.api.items(KUEUE, "Workload", NS)
        raise AssertionError(
            f"{err}\nstatus: {status_of(cluster, name)}\nworkloads: {[w.get('status') for w in workloads]}\n"
            f"operator:\n{op.tail()}\nkueue:\n{kueue.log_tail()}"
        ) from None


def queued_run(name: str, **spec: Any) -> dict[str, Any]:
    return training_job(name, NS, queueName=QUEUE, resources=WORKER, **spec)


def test_a_queued_run_is_admitted_by_kueue_and_runs(
    cluster: LocalCluster, kueue: KueueManager, operator: OperatorProcess
) -> None:
    cluster.api.apply(queued_run("admitted"))
    wait_for(cluster, operator, kueue, "admitted", "Running", lambda s: s.get("phase") == "Running")
    job = cluster.api.get("batch/v1", "Job", "admitted-a0-train", NS)
    assert job is not None and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    status = wait_for(cluster, operator, kueue, "admitted", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (0, 0, 0), status
    assert status["queueWorkload"].startswith("job-admitted-a0-train-"), status
    assert "queuePosition" not in status and "queueReason" not in status, status


def test_a_run_that_does_not_fit_waits_with_kueues_reason_and_position(
    cluster: LocalCluster, kueue: KueueManager, operator: OperatorProcess
) -> None:
    cluster.api.apply(queued_run("first", podAnnotations=RUNNING_LONG))
    wait_for(cluster, operator, kueue, "first", "Running", lambda s: s.get("phase") == "Running")
    cluster.api.apply(queued_run("second"))
    status = wait_for(cluster, operator, kueue, "second", "waiting with a position",
                      lambda s: s.get("reason") == "Queued" and "queuePosition" in s)  # fmt: skip
    assert status["phase"] == "Pending", status
    assert "insufficient unused quota for cpu in flavor default" in status["message"], status
    assert (status["queueReason"], status["queuePosition"]) == ("Quota", 1), status  # next in line
    assert cluster.api.get("batch/v1", "Job", "second-a0-train", NS)["spec"]["suspend"] is True  # type: ignore[index]
    table = kueue.visibility.get(
        f"/apis/ml-platform.dev/v1alpha1/namespaces/{NS}/trainingjobs/second",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ).json()
    columns = [c["name"] for c in table["columnDefinitions"]]
    row = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert (row["Phase"], row["Reason"], row["Queue"], row["Position"]) == ("Pending", "Queued", QUEUE, 1), row
    # The first run's quota freed, the second is admitted: its position and reason go.
    cluster.api.delete(API_VERSION, KIND, "first", NS)
    status = wait_for(cluster, operator, kueue, "second", "Running", lambda s: s.get("phase") == "Running")
    assert "queuePosition" not in status and "queueReason" not in status, status


def test_a_missing_queue_is_invalid_and_nothing_is_created(
    cluster: LocalCluster, kueue: KueueManager, operator: OperatorProcess
) -> None:
    cluster.api.apply(training_job("lost", NS, queueName="no-such-queue"))
    status = wait_for(cluster, operator, kueue, "lost", "Failed", lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "InvalidSpec", status
    assert status["message"] == (
        f"spec.queueName=no-such-queue: no LocalQueue no-such-queue in namespace {NS} (it has {QUEUE}); use one "
        f"that `kubectl get localqueues -n {NS}` lists, or remove spec.queueName"
    ), status
    assert cluster.api.get("batch/v1", "Job", "lost-a0-train", NS) is None
    assert not cluster.api.items("v1", "ConfigMap", NS, "ml-platform.dev/trainingjob=lost")


def test_a_gang_the_queue_could_never_admit_is_refused_naming_the_resource(
    cluster: LocalCluster, kueue: KueueManager, operator: OperatorProcess
) -> None:
    big = {"requests": {"cpu": "800m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
    cluster.api.apply(training_job("huge", NS, queueName=QUEUE, resources=big))
    status = wait_for(cluster, operator, kueue, "huge", "Failed", lambda s: s.get("phase") == "Failed")
    assert status["reason"] == "InvalidSpec", status
    assert status["message"].startswith("spec.resources.requests.cpu: cpu: the gang asks for 1600m"), status
    assert f"queue {QUEUE} can admit at most 1 (nominal 1): 600m too many" in status["message"], status
    assert cluster.api.get("batch/v1", "Job", "huge-a0-train", NS) is None


def test_a_preemption_by_kueue_is_counted_and_the_same_job_resumes(
    cluster: LocalCluster, kueue: KueueManager, operator: OperatorProcess
) -> None:
    cluster.api.apply(queued_run("low", priorityClassName="trainop-low", podAnnotations=RUNNING_LONG))
    wait_for(cluster, operator, kueue, "low", "Running", lambda s: s.get("phase") == "Running")
    # A higher-priority run the ClusterQueue has no room for: Kueue evicts the lower one (withinClusterQueue).
    cluster.api.apply(queued_run("high", priorityClassName="trainop-high", podAnnotations=RUNNING_LONG))
    status = wait_for(cluster, operator, kueue, "low", "preempted", lambda s: s.get("preemptions") == 1)
    wait_for(cluster, operator, kueue, "high", "Running", lambda s: s.get("phase") == "Running")
    status = status_of(cluster, "low")
    assert (status["phase"], status["reason"]) == ("Pending", "Preempted"), status
    assert (status["preemptions"], status["restarts"], status["attempt"]) == (1, 0, 0), status
    assert status["message"].startswith("evicted by Kueue (Preempted)"), status
    job = cluster.api.get("batch/v1", "Job", "low-a0-train", NS)
    assert job is not None and job["spec"]["suspend"] is True, "the same Job, suspended by Kueue"
    # The preemptor gone, Kueue admits the same Job again: it runs, one preemption, no restart, no new attempt.
    cluster.api.delete(API_VERSION, KIND, "high", NS)
    status = wait_for(cluster, operator, kueue, "low", "running again", lambda s: s.get("phase") == "Running")
    assert (status["preemptions"], status["restarts"], status["attempt"]) == (1, 0, 0), status
    assert status["jobName"] == "low-a0-train" and not cluster.api.items(
        "batch/v1", "Job", NS, "ml-platform.dev/attempt=1"
    )
