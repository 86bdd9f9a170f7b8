"""The operator as a real process (`python -m trainop`, as a ServiceAccount bound to exactly the operator's Role)
against the local control plane: kube-apiserver, controller-manager (the Job controller, garbage collection) and
kwok's simulated pods. Pod failures are written into pod status as a kubelet would write them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import yaml
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from tests.engine.cluster import LocalCluster
from tests.harness.api import ApiError
from tests.harness.wait import eventually
from tests.mlflow_server import mlflow_server
from tests.operator.harness import ROOT, OperatorProcess, prepare_namespace, terminate_pod, training_job
from trainop.kube import TrainingJobResource
from workloads.contracts import CHECKPOINT_PATH_TAG, CHECKPOINT_STEP_TAG, UID_TAG
from workloads.trainingjob import (
    API_VERSION,
    ATTEMPT_LABEL,
    KIND,
    PLURAL,
    TRAININGJOB_LABEL,
    crd,
)

pytestmark = pytest.mark.engine
NS = "trainop-e2e"
TIMEOUT_S = 90
# kwok: pods stay Running until a test ends them (a jitter below the delay would replace it, so both are set).
SETTLE_S = 2  # FINISHED_FOLLOW_S: how long a finished run is still reconciled on the timer
RUNNING_LONG = {"pod-complete.stage.kwok.x-k8s.io/delay": "1h", "pod-complete.stage.kwok.x-k8s.io/jitter-delay": "1h"}


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    cluster.api.apply(crd())
    eventually("the TrainingJob CRD served", lambda: cluster.api.resource(API_VERSION, KIND), 60)
    workdir = tmp_path_factory.mktemp("trainop")
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as tracking_uri:
        kubeconfig = prepare_namespace(cluster, NS, workdir)
        proc = OperatorProcess(
            kubeconfig, NS, workdir / "operator.log", MLFLOW_TRACKING_URI=tracking_uri, FINISHED_FOLLOW_S=str(SETTLE_S)
        )
        proc.start()
        yield proc
        proc.stop()
        print(proc.tail(200))


@pytest.fixture(autouse=True)
def stop_live_runs(cluster: LocalCluster) -> Iterator[None]:
    """After each test, delete its runs that still have pods, so the next test shares the machine with none."""
    yield
    for tj in cluster.api.items(API_VERSION, KIND, NS):
        if (tj.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            cluster.api.delete(API_VERSION, KIND, tj["metadata"]["name"], NS)


def tj_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict((cluster.api.get(API_VERSION, KIND, name, NS) or {}).get("status") or {})


def wait_status(cluster: LocalCluster, op: OperatorProcess, name: str, what: str, check: Any) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        assert op.alive(), f"the operator exited:\n{op.tail()}"
        status = tj_status(cluster, name)
        return status if check(status) else None

    try:
        return dict(eventually(f"{name}: {what}", ok, TIMEOUT_S))
    except TimeoutError as err:
        raise AssertionError(f"{err}\nstatus: {tj_status(cluster, name)}\noperator:\n{op.tail()}") from None


def children(cluster: LocalCluster, name: str, kind: str, api_version: str = "v1") -> list[dict[str, Any]]:
    return cluster.api.items(api_version, kind, NS, f"{TRAININGJOB_LABEL}={name}")


def running_pods(cluster: LocalCluster, job: str, count: int) -> list[dict[str, Any]]:
    seen: list[Any] = []

    def running() -> list[dict[str, Any]] | None:
        pods = cluster.api.items("v1", "Pod", NS, f"batch.kubernetes.io/job-name={job}")
        seen[:] = [(p["metadata"]["name"], (p.get("status") or {}).get("phase")) for p in pods]
        up = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return up if len(up) == count else None

    try:
        return list(eventually(f"{count} running pods of {job}", running, TIMEOUT_S))
    except TimeoutError as err:
        live = cluster.api.get("batch/v1", "Job", job, NS)
        raise AssertionError(f"{err}: pods {seen}; job status {(live or {}).get('status')}") from None


def reasons(cluster: LocalCluster, name: str) -> list[str]:
    events = cluster.api.events(NS)
    return [e.get("reason", "") for e in events if (e.get("involvedObject") or {}).get("name") == name]


def wait_event(cluster: LocalCluster, name: str, reason: str, timeout_s: float = 30) -> None:
    """Until `name` has an event with `reason` (the operator writes its events asynchronously); a timeout names
    the reasons it has."""
    seen: list[str] = []

    def recorded() -> bool:
        seen[:] = reasons(cluster, name)
        return reason in seen

    try:
        eventually(f"a {reason} event for {name}", recorded, timeout_s)
    except TimeoutError as err:
        raise AssertionError(f"{err}; its events: {seen}") from None


def test_a_run_creates_owned_children_and_succeeds(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("ok", NS, podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "2s"}))
    status = wait_status(cluster, operator, "ok", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    uid = cluster.api.get(API_VERSION, KIND, "ok", NS)["metadata"]["uid"]  # type: ignore[index]
    for kind, api_version in (("ConfigMap", "v1"), ("Service", "v1"), ("Job", "batch/v1")):
        (obj,) = children(cluster, "ok", kind, api_version)
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == (KIND, uid, True), obj["metadata"]
    (job,) = children(cluster, "ok", "Job", "batch/v1")
    assert job["metadata"]["name"] == "ok-a0-train" and job["spec"]["completions"] == 2
    assert job["spec"]["backoffLimitPerIndex"] == 0, "no per-pod retries: the operator restarts the gang"
    (cm,) = children(cluster, "ok", "ConfigMap")
    assert f"ml-platform.dev/trainingjob-uid: {uid}" in cm["data"]["train.yaml"]
    assert "dir: /checkpoints/trainingjobs/ok" in cm["data"]["train.yaml"]
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (0, 0, 0)
    assert status["startTime"] and status["completionTime"] and status["observedGeneration"] == 1
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Created"]["status"] == "True"
    assert conds["Running"]["status"] == "False"
    wait_event(cluster, "ok", "Completed")


def test_printer_columns_through_the_table_output(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("columns", NS, podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}))
    wait_status(cluster, operator, "columns", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    table = cluster.api._plain.get(
        f"/apis/{API_VERSION}/namespaces/{NS}/{PLURAL}/columns",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    table.raise_for_status()
    body = table.json()
    names = [c["name"] for c in body["columnDefinitions"]]
    assert names == ["Name", "Phase", "Reason", "Queue", "Position", "Workers", "Progress", "Val loss", "Restarts",
                     "Age", "Message"]  # fmt: skip
    row = body["rows"][0]["cells"]
    assert row[:6] == ["columns", "Succeeded", "Completed", None, None, 2] and row[8] == 0, row
    assert row[10] == "attempt 0 completed", row


def test_exit_code_1_restarts_the_whole_gang(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("flaky", NS, podAnnotations=RUNNING_LONG))
    pods = running_pods(cluster, "flaky-a0-train", 2)
    terminate_pod(cluster, pods[1], 1, "RuntimeError: NCCL watchdog")
    status = wait_status(cluster, operator, "flaky", "restart", lambda s: s.get("attempt") == 1)
    assert (status["restarts"], status["preemptions"]) == (1, 0)
    assert "exit code 1" in {c["type"]: c for c in status["conditions"]}["Restarting"]["message"]
    new = running_pods(cluster, "flaky-a1-train", 2)
    assert {p["metadata"]["labels"][ATTEMPT_LABEL] for p in new} == {"1"}
    eventually("attempt 0's Job gone", lambda: [j["metadata"]["name"] for j in
               children(cluster, "flaky", "Job", "batch/v1")] == ["flaky-a1-train"], TIMEOUT_S)  # fmt: skip
    status = wait_status(cluster, operator, "flaky", "Running", lambda s: s.get("phase") == "Running")
    assert status["restarts"] == 1
    wait_event(cluster, "flaky", "WorkerFailed")


def test_exit_code_2_fails_at_once_with_the_trainers_message(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("badcfg", NS, podAnnotations=RUNNING_LONG))
    pods = running_pods(cluster, "badcfg-a0-train", 2)
    terminate_pod(cluster, pods[0], 2, "train.lr=-1.0: must be > 0")
    status = wait_status(cluster, operator, "badcfg", "Failed", lambda s: s.get("phase") == "Failed")
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "ConfigError" and "train.lr=-1.0: must be > 0" in failed["message"]
    assert (status["restarts"], status["attempt"]) == (0, 0)
    assert [j["metadata"]["name"] for j in children(cluster, "badcfg", "Job", "batch/v1")] == ["badcfg-a0-train"]


def test_a_preemption_is_counted_apart(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("preempted", NS, podAnnotations=RUNNING_LONG))
    pods = running_pods(cluster, "preempted-a0-train", 2)
    terminate_pod(cluster, pods[0], 137, disruption="PreemptionByScheduler")
    status = wait_status(cluster, operator, "preempted", "restart", lambda s: s.get("attempt") == 1)
    assert (status["preemptions"], status["restarts"]) == (1, 0)
    running_pods(cluster, "preempted-a1-train", 2)


def test_suspend_and_resume(cluster: LocalCluster, operator: OperatorProcess) -> None:
    tj = training_job("pausable", NS, podAnnotations=RUNNING_LONG)
    cluster.api.apply(tj)
    running_pods(cluster, "pausable-a0-train", 2)
    tj["spec"]["suspend"] = True
    cluster.api.apply(tj)
    wait_status(cluster, operator, "pausable", "Suspended", lambda s: s.get("phase") == "Suspended")
    assert cluster.api.get("batch/v1", "Job", "pausable-a0-train", NS)["spec"]["suspend"] is True  # type: ignore[index]
    eventually("pods gone while suspended", lambda: not cluster.api.items(
        "v1", "Pod", NS, "batch.kubernetes.io/job-name=pausable-a0-train"), TIMEOUT_S)  # fmt: skip
    tj["spec"]["workers"] = 4  # allowed while suspended (the CEL rule); the run resumes as a new attempt
    cluster.api.apply(tj)
    tj["spec"]["suspend"] = False
    cluster.api.apply(tj)
    status = wait_status(cluster, operator, "pausable", "Running", lambda s: s.get("phase") == "Running")
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (0, 0, 1)
    running_pods(cluster, "pausable-a1-train", 4)
    wait_event(cluster, "pausable", "Suspended")


def test_invalid_train_config_fails_before_anything_is_created(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    cluster.api.apply(training_job("odd", NS, workers=3, train={"train": {"batch_size": 4, "warmup": 5}}))
    status = wait_status(cluster, operator, "odd", "Failed", lambda s: s.get("phase") == "Failed")
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "InvalidSpec"
    assert "spec.train.train.warmup: unknown key" in failed["message"], failed
    cluster.api.apply(training_job("indivisible", NS, workers=3, train={"train": {"batch_size": 4}}))
    status = wait_status(cluster, operator, "indivisible", "Failed", lambda s: s.get("phase") == "Failed")
    assert "spec.train.train.batch_size=4" in {c["type"]: c for c in status["conditions"]}["Failed"]["message"]
    cluster.api.apply(training_job("gpu", NS, gpusPerWorker=1, backend="nccl"))
    status = wait_status(cluster, operator, "gpu", "Failed", lambda s: s.get("phase") == "Failed")
    assert "spec.gpusPerWorker=1" in {c["type"]: c for c in status["conditions"]}["Failed"]["message"]
    for name in ("odd", "indivisible", "gpu"):
        assert children(cluster, name, "Job", "batch/v1") == [] and children(cluster, name, "ConfigMap") == []


def test_delete_garbage_collects_the_children(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("doomed", NS, podAnnotations=RUNNING_LONG))
    running_pods(cluster, "doomed-a0-train", 2)
    cluster.api.delete(API_VERSION, KIND, "doomed", NS)

    def gone() -> bool:
        kinds = (("Job", "batch/v1"), ("ConfigMap", "v1"), ("Service", "v1"))
        return all(not children(cluster, "doomed", k, v) for k, v in kinds)

    eventually("the children garbage-collected", gone, TIMEOUT_S)


def test_ttl_deletes_the_finished_resource(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("brief", NS, ttlSecondsAfterFinished=0,
                                   podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}))  # fmt: skip
    eventually("brief deleted after it finished", lambda: cluster.api.get(API_VERSION, KIND, "brief", NS) is None,
               TIMEOUT_S)  # fmt: skip


def test_killed_operator_restarts_without_duplicates(cluster: LocalCluster, operator: OperatorProcess) -> None:
    cluster.api.apply(training_job("crashy", NS, podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "3s"}))
    eventually("crashy's first child", lambda: children(cluster, "crashy", "ConfigMap"), TIMEOUT_S, 0.05)
    operator.kill()  # mid-reconcile: the Job may or may not exist yet, the status is not written
    operator.start()
    status = wait_status(cluster, operator, "crashy", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert status["attempt"] == 0 and status["restarts"] == 0
    for kind, api_version in (("ConfigMap", "v1"), ("Service", "v1"), ("Job", "batch/v1")):
        assert len(children(cluster, "crashy", kind, api_version)) == 1, kind


BAD_SPECS: dict[str, dict[str, Any]] = {
    "workers below 1": {"workers": 0},
    "workers not an integer": {"workers": "two"},
    "unknown backend": {"backend": "mpi"},
    "nccl without GPUs": {"backend": "nccl"},
    "negative maxRestarts": {"maxRestarts": -1},
    "limits below requests": {"resources": {"requests": {"cpu": "2", "memory": "1Gi"},
                                            "limits": {"cpu": "1", "memory": "1Gi"}}},
    "memory not a quantity": {"resources": {"requests": {"cpu": "1", "memory": "lots"},
                                            "limits": {"cpu": "1", "memory": "1Gi"}}},
    "runName not a DNS label": {"runName": "Big_Run"},
    "checkpointDir escaping the volume": {"checkpointDir": "../other"},
    "toleration effect": {"tolerations": [{"key": "gpu", "effect": "Sometimes"}]},
    "activeDeadlineSeconds zero": {"activeDeadlineSeconds": 0},
    "unknown spec field": {"gpus": 2},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_the_api_server_refuses_bad_specs(cluster: LocalCluster, operator: OperatorProcess, case: str) -> None:
    with pytest.raises(ApiError) as refused:
        cluster.api.create(training_job("bad", NS, **BAD_SPECS[case]))
    # 422: schema, enum, range and CEL violations; 400: fields the schema does not declare (strict validation).
    assert refused.value.status in (400, 422), refused.value
    assert cluster.api.get(API_VERSION, KIND, "bad", NS) is None


def test_immutable_fields_stay_while_running(cluster: LocalCluster, operator: OperatorProcess) -> None:
    tj = training_job("steady", NS, podAnnotations=RUNNING_LONG)
    cluster.api.apply(tj)
    changes: list[dict[str, Any]] = [
        {"workers": 4}, {"train": {"train": {"batch_size": 8}}}, {"runName": "other"}, {"checkpointDir": "elsewhere"}
    ]  # fmt: skip
    for change in changes:
        with pytest.raises(ApiError) as refused:
            cluster.api.apply({**tj, "spec": {**tj["spec"], **change}})
        assert refused.value.status == 422, change
        assert "immutable" in str(refused.value) or "only while suspended" in str(refused.value), change
    long = training_job("a" * 41, NS)
    with pytest.raises(ApiError, match=r"needs spec\.runName"):
        cluster.api.apply(long)


def test_health_and_metrics_endpoints(cluster: LocalCluster, operator: OperatorProcess) -> None:
    # A run of its own: the operator process may have been restarted by an earlier test (the killed-operator one),
    # and its counters start at zero with it, so "ok" from the first test may not be counted in this process.
    cluster.api.apply(training_job("probe", NS, podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}))
    wait_status(cluster, operator, "probe", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    assert httpx2.get(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=10).status_code == 200
    text = httpx2.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).text
    assert 'trainop_reconciliations_total{result="created"}' in text
    assert "trainop_reconcile_duration_seconds_bucket" in text and 'trainop_trainingjobs{phase="Succeeded"}' in text


def test_the_example_is_accepted_and_started(cluster: LocalCluster, operator: OperatorProcess) -> None:
    example = yaml.safe_load((ROOT / "examples" / "trainingjob.yaml").read_text())
    example["metadata"]["namespace"] = NS
    cluster.api.create(example)
    name = example["metadata"]["name"]
    status = wait_status(cluster, operator, name, "started", lambda s: s.get("phase") in ("Pending", "Running"))
    assert status["jobName"] == f"{name}-a0-train"


def test_progress_comes_from_the_run_the_trainer_tags(cluster: LocalCluster, operator: OperatorProcess) -> None:
    """What the trainer does on a real cluster, done here with MLflow's client against a real `mlflow server`:
    a run tagged with the TrainingJob's uid, metrics with steps, the checkpoint tags."""
    from mlflow import MlflowClient

    cluster.api.apply(training_job("tracked", NS, podAnnotations=RUNNING_LONG))
    uid = cluster.api.get(API_VERSION, KIND, "tracked", NS)["metadata"]["uid"]  # type: ignore[index]
    client = MlflowClient(operator.env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("trainop-progress")
    run = client.create_run(experiment, tags={UID_TAG: uid}).info.run_id
    for key, value in (("train_loss", 2.5), ("val_loss", 2.75), ("tokens_per_s", 512.0)):
        client.log_metric(run, key, value, step=5)
    client.set_tag(run, CHECKPOINT_PATH_TAG, "/checkpoints/trainingjobs/tracked/step-00000005")
    client.set_tag(run, CHECKPOINT_STEP_TAG, "5")
    # The operator may read the run between two of these calls; it catches up at its next refresh.
    status = wait_status(
        cluster,
        operator,
        "tracked",
        "progress",
        lambda s: s.get("latestCheckpoint", {}).get("step") == 5 and "eta" in s.get("progress", {}),
    )
    assert status["mlflowRunId"] == run
    assert status["latestCheckpoint"] == {"path": "/checkpoints/trainingjobs/tracked/step-00000005", "step": 5}
    progress = status["progress"]
    assert (progress["step"], progress["maxSteps"], progress["percent"]) == (5, 20, 25)
    assert (progress["trainLoss"], progress["valLoss"], progress["tokensPerSecond"]) == (2.5, 2.75, 512.0)
    assert progress["eta"]
    table = cluster.api._plain.get(
        f"/apis/{API_VERSION}/namespaces/{NS}/{PLURAL}/tracked",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ).json()
    assert table["rows"][0]["cells"][6:8] == [25, 2.75], "the Progress and Val loss columns (after Queue, Position)"


KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
HOLD = "ml-platform.dev/test-hold"


def patch_meta(cluster: LocalCluster, kind: Any, name: str, meta: dict[str, Any]) -> None:
    cluster.api.client.patch(kind, name, {"metadata": meta}, namespace=NS, patch_type=PatchType.MERGE)


def test_no_finalizer_holds_a_live_run_and_an_old_one_is_removed(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """A finalizer nobody removes (the operator deleted before the CRD at `pulumi destroy`, or down) blocks the
    deletion of the resource, its CRD and its namespace: a running TrainingJob carries none, and one left by an
    earlier operator version (Kopf's, for its timer) is taken away."""
    cluster.api.apply(training_job("live", NS, podAnnotations=RUNNING_LONG))
    running_pods(cluster, "live-a0-train", 2)
    assert not cluster.api.get(API_VERSION, KIND, "live", NS)["metadata"].get("finalizers")  # type: ignore[index]
    resource = TrainingJobResource
    patch_meta(cluster, resource, "live", {"finalizers": [KOPF_FINALIZER]})
    eventually(
        "Kopf's old finalizer removed",
        lambda: not (cluster.api.get(API_VERSION, KIND, "live", NS) or {})["metadata"].get("finalizers"),
        TIMEOUT_S,
    )


def test_a_run_deleted_while_the_operator_is_down_is_cleaned_up(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    cluster.api.apply(training_job("orphan", NS, podAnnotations=RUNNING_LONG))
    running_pods(cluster, "orphan-a0-train", 2)
    operator.stop()
    try:
        cluster.api.delete(API_VERSION, KIND, "orphan", NS)
        eventually("orphan gone without the operator", lambda: cluster.api.get(API_VERSION, KIND, "orphan", NS) is None,
                   TIMEOUT_S)  # fmt: skip
    finally:
        operator.start()
    kinds = (("Job", "batch/v1"), ("ConfigMap", "v1"), ("Service", "v1"), ("Pod", "v1"))

    def cleaned() -> bool:
        assert operator.alive(), operator.tail()
        return all(not children(cluster, "orphan", k, v) for k, v in kinds)

    eventually("orphan's children garbage-collected", cleaned, TIMEOUT_S)
    # The operator back up creates nothing for it. Answering /healthz says nothing about what it has reconciled
    # since: a run applied now having its Job shows it has listed and handled the namespace's runs.
    eventually("the operator healthy again", lambda: operator_healthy(operator), TIMEOUT_S)
    cluster.api.apply(training_job("witness", NS, podAnnotations=RUNNING_LONG))
    eventually("the restarted operator reconciling", lambda: children(cluster, "witness", "Job", "batch/v1"), TIMEOUT_S)
    assert all(not children(cluster, "orphan", k, v) for k, v in kinds)


def operator_healthy(operator: OperatorProcess) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5).status_code == 200
    except httpx2.HTTPError:
        return False


def reconciliations(operator: OperatorProcess, result: str) -> float:
    text = httpx2.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'trainop_reconciliations_total{{result="{result}"}} '):
            return float(line.split()[-1])
    return 0.0


def test_a_finished_run_is_not_reconciled_forever(cluster: LocalCluster, operator: OperatorProcess) -> None:
    """The timer follows live runs; a finished one only for FINISHED_FOLLOW_S (its last metrics), then never again
    (every reconciliation of a finished run polls MLflow)."""
    cluster.api.apply(training_job("settled", NS, podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "1s"}))
    cluster.api.apply(training_job("ticker", NS, podAnnotations=RUNNING_LONG))
    status = wait_status(cluster, operator, "settled", "Succeeded", lambda s: s.get("phase") == "Succeeded")
    done = dt.datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
    settled = done + dt.timedelta(seconds=SETTLE_S + 2)
    eventually("the settle window over", lambda: dt.datetime.now(dt.UTC) > settled, TIMEOUT_S)
    finished, running = reconciliations(operator, "finished"), reconciliations(operator, "running")
    # Five more rounds of the timer (RECONCILE_INTERVAL_S=1), seen through the live run it reconciles each round.
    eventually("five rounds of the timer", lambda: reconciliations(operator, "running") >= running + 5, TIMEOUT_S)
    assert reconciliations(operator, "finished") == finished, "a finished run was reconciled again"


def test_a_new_attempt_waits_for_the_old_gang_to_exit(cluster: LocalCluster, operator: OperatorProcess) -> None:
    """A preempted gang's survivors get SIGTERM and write a checkpoint into the directory the next attempt resumes
    from: the next attempt starts only once they are gone (a finalizer here keeps one Terminating)."""
    cluster.api.apply(training_job("relay", NS, podAnnotations=RUNNING_LONG))
    pods = running_pods(cluster, "relay-a0-train", 2)
    survivor = next(p for p in pods if p["metadata"]["labels"].get("batch.kubernetes.io/job-completion-index") == "0")
    victim = next(p for p in pods if p is not survivor)
    patch_meta(cluster, Pod, survivor["metadata"]["name"], {"finalizers": [HOLD]})
    try:
        terminate_pod(cluster, victim, 137, disruption="PreemptionByScheduler")

        def waiting(s: dict[str, Any]) -> bool:
            messages = [c.get("message", "") for c in s.get("conditions") or []]
            return any("waiting for the pods of earlier attempts" in m for m in messages)

        status = wait_status(cluster, operator, "relay", "waiting for the old gang", waiting)
        assert status["attempt"] == 1, status
        assert cluster.api.get("batch/v1", "Job", "relay-a1-train", NS) is None, "started while the old gang ran"
        live = cluster.api.get("v1", "Pod", survivor["metadata"]["name"], NS)
        assert live is not None and live["metadata"].get("deletionTimestamp"), "the survivor is being deleted"
    finally:
        patch_meta(cluster, Pod, survivor["metadata"]["name"], {"finalizers": None})
    running_pods(cluster, "relay-a1-train", 2)
    # Read again: the status above was the waiting one; once the old gang is gone attempt 1 runs.
    status = wait_status(cluster, operator, "relay", "attempt 1 Running",
                         lambda s: (s.get("phase"), s.get("attempt")) == ("Running", 1))  # fmt: skip
    assert (status["preemptions"], status["jobName"]) == (1, "relay-a1-train"), status


def tight_quota(cluster: LocalCluster, memory: str) -> None:
    quota = {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "tight", "namespace": NS},
        "spec": {"hard": {"limits.memory": memory}},
    }  # fmt: skip
    cluster.api.apply(quota)
    eventually("the quota counted", lambda: (cluster.api.get("v1", "ResourceQuota", "tight", NS) or {}).get(
        "status", {}).get("hard"), TIMEOUT_S)  # fmt: skip


def test_a_run_the_quota_cannot_admit_waits_visibly(cluster: LocalCluster, operator: OperatorProcess) -> None:
    """The namespace's ResourceQuota could hold the gang, but another run uses most of it: the Job controller
    cannot create the pods, and the TrainingJob says so (reason QuotaExceeded, the quota's own message) instead of
    a bare Pending. It waits; it does not fail."""
    tight_quota(cluster, "600Mi")
    try:
        hog = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "400Mi"}}
        cluster.api.apply(training_job("hog", NS, workers=1, resources=hog, podAnnotations=RUNNING_LONG))
        running_pods(cluster, "hog-a0-train", 1)
        cluster.api.apply(training_job("crowded", NS, podAnnotations=RUNNING_LONG))

        def quota_reason(s: dict[str, Any]) -> bool:
            return any(c.get("reason") == "QuotaExceeded" and c["status"] == "True" for c in s.get("conditions") or [])

        status = wait_status(cluster, operator, "crowded", "QuotaExceeded", quota_reason)
        assert (status["phase"], status["reason"]) == ("Pending", "QuotaExceeded"), status
        assert status["message"].startswith("the Job's pods cannot be created: "), status
        created = next(c for c in status["conditions"] if c["reason"] == "QuotaExceeded")
        assert "exceeded quota: tight" in created["message"] and "limits.memory" in created["message"], created
    finally:
        cluster.api.delete("v1", "ResourceQuota", "tight", NS)


def test_a_run_larger_than_the_whole_quota_is_refused_at_once(cluster: LocalCluster, operator: OperatorProcess) -> None:
    """2 workers x 256Mi of memory limits against a quota of 300Mi in all: it could never run, so it fails at once
    (InvalidSpec), naming the key, the amounts and how far over, and nothing is created."""
    tight_quota(cluster, "300Mi")
    try:
        cluster.api.apply(training_job("huge", NS, podAnnotations=RUNNING_LONG))
        status = wait_status(cluster, operator, "huge", "Failed", lambda s: s.get("phase") == "Failed")
    finally:
        cluster.api.delete("v1", "ResourceQuota", "tight", NS)
    assert status["reason"] == "InvalidSpec", status
    assert status["message"] == (
        "spec.resources.limits.memory: limits.memory: the TrainingJob asks 2 x 256Mi = 512Mi, the namespace quota "
        "tight allows 300Mi in all (212Mi over); ask for less or have ResourceQuota tight raised"
    ), status
    assert not children(cluster, "huge", "Job", "batch/v1") and not children(cluster, "huge", "ConfigMap")
