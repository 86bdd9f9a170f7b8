"""The launcher without a cluster: task YAML validation (every refusal a 4xx naming the field, and nothing
created), the builder's invariants, status derivation, the API's error shapes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from skyrun.app import create_app
from skyrun.manifests import Anchor, Launch, task_manifests, volume_claim
from skyrun.models import TaskStatus
from skyrun.settings import Settings
from skyrun.status import derive
from skyrun.task_spec import TaskInvalid, parse_task
from workloads.pod import container_security_context, pod_security_context
from workloads.task import NODE_INDEX_LABEL, SETUP_FAILED_EXIT_CODE

USER = "system:serviceaccount:ml:alice"
LAUNCHER_UID = "5f0c7a52-0000-4000-8000-000000000001"
ANCHOR = "skyrun-anchor"


class FakeKube:
    """Answers every read with nothing but the launcher's own Deployment (it exists wherever the server runs; None
    with `deployment=False`), the teams' anchor ConfigMaps, the namespace's `quotas` and Kueue's `local_queues` and
    `cluster_queues`; records every read of one object and every write (none is expected for a refused request).
    The cap lock's Lease is kept apart (`leases`): it is the lock, not the task."""

    def __init__(
        self,
        quotas: Sequence[dict[str, Any]] = (),
        *,
        deployment: bool = True,
        local_queues: Mapping[str, dict[str, Any]] | None = None,
        cluster_queues: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.writes: list[Any] = []
        self.reads: list[tuple[str, str]] = []
        self.namespaces: list[str] = []
        self.quotas = list(quotas)
        self.local_queues = dict(local_queues or {})
        self.cluster_queue_objects = list(cluster_queues)
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.deployment = {"metadata": {"name": "skyrun", "uid": LAUNCHER_UID}} if deployment else None

    async def objects(self, ns: str, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        self.namespaces.append(ns)
        return list(self.quotas) if kind == "ResourceQuota" else []

    async def events(self, ns: str) -> list[dict[str, Any]]:
        return []

    async def cluster_queues(self) -> list[dict[str, Any]]:
        return list(self.cluster_queue_objects)

    async def pending_workloads(self, ns: str, queue: str) -> list[dict[str, Any]] | None:
        return None

    async def get(self, ns: str, kind: str, name: str) -> dict[str, Any] | None:
        if kind == "Lease":
            return self.leases.get((ns, name))
        self.reads.append((kind, name))
        if kind == "LocalQueue":
            return self.local_queues.get(name)
        if (kind, name) == ("ConfigMap", ANCHOR):
            return {"metadata": {"name": ANCHOR, "namespace": ns, "uid": f"anchor-{ns}"}}
        return self.deployment if (kind, name) == ("Deployment", "skyrun") else None

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Lease":
            return await self.replace(obj)
        self.namespaces.append(obj["metadata"]["namespace"])
        self.writes.append(("create", obj))
        return dict(obj)

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        assert obj["kind"] == "Lease", obj
        self.leases[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = dict(obj)
        return dict(obj)

    async def merge_patch(self, ns: str, kind: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("patch", kind, name))
        return {}

    async def delete(self, ns: str, kind: str, name: str, **_: Any) -> None:
        self.writes.append(("delete", kind, name))

    async def access_review(self, *_: Any) -> bool:
        return False


@pytest.fixture
def api() -> Iterator[tuple[TestClient, FakeKube]]:
    app = create_app(Settings(dev_trusted_user_header=True, reconcile_interval_s=3600), client=object())  # type: ignore[arg-type]
    kube = FakeKube()
    with TestClient(app, headers={"X-Skyrun-User": USER}) as http:
        app.state.launcher.kube = kube
        app.state.auth.kube = kube
        yield http, kube


BAD_TASKS = [
    ("run: [1, 2]", "run"),
    ("name: x", "run"),
    ("run: ''", "run"),
    ("run: x\nnum_nodes: 0", "num_nodes"),
    ("run: x\nnum_nodes: two", "num_nodes"),
    ("run: x\nnum_nodes: 1000", "num_nodes"),
    ("run: x\nnum_nodes: true", "num_nodes"),
    ("run: x\nfile_mounts: {/data: s3://b}", "file_mounts"),
    ("run: x\nworkdir: .", "workdir"),
    ("run: x\ncolour: blue", "colour"),
    ("run: x\nresources: {gpus: 1}", "resources.gpus"),
    ("run: x\nresources: {cpus: -1}", "resources.cpus"),
    ("run: x\nresources: {cpus: lots}", "resources.cpus"),
    ("run: x\nresources: {cpus: '0'}", "resources.cpus"),
    ("run: x\nresources: {memory: 4XB}", "resources.memory"),
    ("run: x\nresources: {memory: '0'}", "resources.memory"),
    ("run: x\nresources: {accelerators: 'H100:0'}", "resources.accelerators"),
    ("run: x\nresources: {accelerators: 'H100:99'}", "resources.accelerators"),
    ("run: x\nresources: {accelerators: {H100: 1, A100: 1}}", "resources.accelerators"),
    ("run: x\nresources: {accelerators: ':2'}", "resources.accelerators"),
    ("run: x\nresources: {image_id: 'docker:'}", "resources.image_id"),
    ("run: x\nresources: {any_of: [{cpus: 2}]}", "resources.any_of"),
    ("run: x\nresources: [cpus]", "resources"),
    ("run: x\nenvs: {SKYPILOT_NODE_RANK: 3}", "envs.SKYPILOT_NODE_RANK"),
    ("run: x\nenvs: {MASTER_ADDR: h}", "envs.MASTER_ADDR"),
    ("run: x\nenvs: {1BAD: v}", "envs.1BAD"),
    ("run: x\nenvs: {TOKEN: null}", "envs.TOKEN"),
    ("run: x\nenvs: {NESTED: {a: b}}", "envs.NESTED"),
    ("run: x\nenvs: [A]", "envs"),
    ("run: x\nvolumes: {data: vol}", "volumes.data"),
    ("run: x\nvolumes: {/tmp: vol}", "volumes./tmp"),
    ("run: x\nvolumes: {/data: Not_A_Name}", "volumes./data"),
    ("run: x\nvolumes: {/data: mine}", "volumes./data"),  # the user has no volume named mine
    ("run: x\nsetup: [a]", "setup"),
    ("run: x\nname: ''", "name"),
    ("- run: x", "task"),
    ("run: x\n  bad: [indent", "task_yaml"),
]


@pytest.mark.parametrize(("task_yaml", "field"), BAD_TASKS, ids=[f for _, f in BAD_TASKS])
def test_a_bad_task_is_a_400_naming_the_field_and_creates_nothing(
    api: tuple[TestClient, FakeKube], task_yaml: str, field: str
) -> None:
    http, kube = api
    answer = http.post("/tasks/submit", json={"task_yaml": task_yaml})
    assert answer.status_code == 400, answer.text
    assert field in [d["field"] for d in answer.json()["detail"]]
    assert kube.writes == []


BAD_REQUESTS = [
    ("post", "/tasks/submit", {"json": {}}, 422, "task_yaml"),
    ("post", "/tasks/submit", {"json": {"task_yaml": ""}}, 422, "task_yaml"),
    ("post", "/tasks/submit", {"json": {"task_yaml": "run: x", "envs": {"A": {"b": 1}}}}, 422, "envs.A"),
    ("post", "/tasks/submit", {"json": {"task_yaml": "run: x", "envs": {"NODE_RANK": "1"}}}, 400, "envs.NODE_RANK"),
    ("post", "/volumes/create", {"json": {"name": "Bad Name", "size": "1"}}, 422, "name"),
    ("post", "/volumes/create", {"json": {"name": "ok", "size": "huge"}}, 400, "size"),
    ("post", "/volumes/create", {"json": {"name": "ok", "size": "1", "access_modes": ["Sometimes"]}}, 400,
     "access_modes"),
    ("post", "/volumes/create", {"json": {"name": "ok", "size": "1", "access_modes": []}}, 422, "access_modes"),
    ("get", "/tasks", {"params": {"all_users": "maybe"}}, 422, "all_users"),
    ("get", "/tasks/NOT-AN-ID", {}, 404, None),
    ("get", "/tasks/abcd1234", {}, 404, None),
    ("get", "/volumes/abcd1234", {}, 404, None),
    ("delete", "/volumes/abcd1234", {}, 404, None),
    ("post", "/tasks/abcd1234/stop", {}, 404, None),
    ("get", "/tasks/abcd1234/logs", {}, 404, None),
    ("get", "/tasks", {"params": {"all_users": True}}, 403, None),
    ("post", "/tasks/stop", {"params": {"all_users": True}}, 403, None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "kw", "status", "field"), BAD_REQUESTS)
def test_a_bad_request_is_a_4xx_with_a_detail_and_creates_nothing(
    api: tuple[TestClient, FakeKube], method: str, path: str, kw: dict[str, Any], status: int, field: str | None
) -> None:
    http, kube = api
    answer = getattr(http, method)(path, **kw)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    if field is not None:
        assert field in [d.get("field") or ".".join(map(str, d["loc"][1:])) for d in detail], detail
    else:
        assert isinstance(detail, str) and detail
    assert kube.writes == []


def test_a_deleted_volume_is_gone_while_its_claim_waits_for_its_finalizer(api: tuple[TestClient, FakeKube]) -> None:
    http, kube = api
    claim = volume_claim(volume_id="abcd1234", name="data", user=USER, namespace="ml", size="1Gi",
                         storage_class=None, access_modes=("ReadWriteOnce",))  # fmt: skip
    deleting = {**claim, "metadata": {**claim["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z",
                                      "finalizers": ["kubernetes.io/pvc-protection"]}}  # fmt: skip

    async def objects(ns: str, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return [deleting] if kind == "PersistentVolumeClaim" else []

    kube.objects = objects  # type: ignore[method-assign]
    assert http.get("/volumes").json()["volumes"] == []
    assert http.get("/volumes/abcd1234").status_code == 404
    assert http.post("/volumes/create", json={"name": "data", "size": "1"}).status_code == 200


def test_without_the_dev_flag_the_user_header_is_not_trusted() -> None:
    app = create_app(Settings(reconcile_interval_s=3600), client=object())  # type: ignore[arg-type]
    with TestClient(app) as http:
        answer = http.get("/tasks", headers={"X-Skyrun-User": USER})
    assert answer.status_code == 401 and "bearer" in answer.json()["detail"]


def test_ignored_fields_are_reported_and_every_problem_is_reported_at_once() -> None:
    parsed = parse_task(yaml.safe_load("run: x\nresources: {use_spot: true, region: us, disk_size: 100}"))
    assert parsed.ignored == ("resources.use_spot", "resources.region", "resources.disk_size")
    with pytest.raises(TaskInvalid) as err:
        parse_task({"num_nodes": 0, "workdir": ".", "resources": {"cpus": "x"}})
    assert {e.field for e in err.value.errors} == {"num_nodes", "workdir", "resources.cpus", "run"}


def launch(**kw: Any) -> Launch:
    base: dict[str, Any] = {
        "task_id": "abcd1234", "user": USER, "namespace": "ml", "default_image": "img:1",
        "image_pull_policy": "IfNotPresent", "default_cpus": "1", "default_memory": "2Gi",
    }  # fmt: skip
    return Launch(**{**base, **kw})


@pytest.mark.parametrize("num_nodes", [1, 2, 8])
def test_builder_invariants(num_nodes: int) -> None:
    task = parse_task({"num_nodes": num_nodes, "run": "echo $(hostname)", "resources": {"accelerators": "H100:2",
                       "cpus": "4+", "memory": "16"}, "volumes": {"/data": "d"}}).task  # fmt: skip
    m = task_manifests(task, launch(claims=(("/data", "vol-x1234567"),)))
    job, service = m.job, m.service
    spec = job["spec"]
    assert spec["completions"] == spec["parallelism"] == num_nodes and spec["completionMode"] == "Indexed"
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] == 3600
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"] == pod_security_context() and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"] == container_security_context()
    res = container["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}
    assert pod["nodeSelector"] == {"skypilot.co/accelerator": "h100"}
    assert container["command"][-1] == "echo $$(hostname)", "the kubelet must not expand the script's $(...)"
    env = {e["name"]: e for e in container["env"]}
    assert env["SKYPILOT_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{NODE_INDEX_LABEL}']"
    assert env["SKYPILOT_NODE_IPS"]["value"].splitlines()[0] == env["MASTER_ADDR"]["value"]
    assert len(env["SKYPILOT_NODE_IPS"]["value"].splitlines()) == num_nodes
    names = [e["name"] for e in container["env"]]
    assert names.index("SKYPILOT_NODE_RANK") < names.index("NODE_RANK"), "$(SKYPILOT_NODE_RANK) needs it first"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[1]["onExitCodes"]["values"] == [SETUP_FAILED_EXIT_CODE] and rules[1]["action"] == "FailJob"
    assert {"name": "vol-0", "persistentVolumeClaim": {"claimName": "vol-x1234567"}} in pod["volumes"]
    for obj in m.objects():
        assert obj["metadata"]["labels"]["task-id"] == "abcd1234"


def test_every_object_of_a_task_is_owned_by_the_launchers_deployment_and_nothing_else_controls_it() -> None:
    task = parse_task({"num_nodes": 2, "run": "x"}).task
    owned = task_manifests(task, launch(anchor=Anchor(name="skyrun", uid=LAUNCHER_UID)))
    reference = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "skyrun", "uid": LAUNCHER_UID,
                 "controller": False, "blockOwnerDeletion": False}  # fmt: skip
    assert [o["metadata"]["ownerReferences"] for o in owned.objects()] == [[reference]] * 4
    assert "ownerReferences" not in owned.job["spec"]["template"]["metadata"], "the Job controller owns the pods"
    unowned = task_manifests(task, launch())
    assert all("ownerReferences" not in o["metadata"] for o in unowned.objects())


def test_submitted_tasks_are_owned_by_the_deployment_read_once(api: tuple[TestClient, FakeKube]) -> None:
    http, kube = api
    for _ in range(2):
        assert http.post("/tasks/submit", json={"task_yaml": "run: x"}).status_code == 200
    created = [obj for op, obj in kube.writes if op == "create"]
    assert sorted({o["kind"] for o in created}) == ["ConfigMap", "Job", "NetworkPolicy", "Service"]
    assert len(created) == 8
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in created} == {LAUNCHER_UID}
    assert kube.reads.count(("Deployment", "skyrun")) == 1, "the uid is read at the first submission, then kept"


def test_without_the_launchers_deployment_nothing_is_created() -> None:
    app = create_app(Settings(dev_trusted_user_header=True, reconcile_interval_s=3600), client=object())  # type: ignore[arg-type]
    kube = FakeKube(deployment=False)
    with TestClient(app, headers={"X-Skyrun-User": USER}) as http:
        app.state.launcher.kube = kube
        answer = http.post("/tasks/submit", json={"task_yaml": "run: x"})
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("the launcher's Deployment skyrun is not in namespace ml-platform")
    assert kube.writes == []


def test_with_no_deployment_setting_tasks_are_owned_by_nothing() -> None:
    settings = Settings(dev_trusted_user_header=True, reconcile_interval_s=3600, deployment="")
    app = create_app(settings, client=object())  # type: ignore[arg-type]
    kube = FakeKube(deployment=False)
    with TestClient(app, headers={"X-Skyrun-User": USER}) as http:
        app.state.launcher.kube = kube
        assert http.post("/tasks/submit", json={"task_yaml": "run: x"}).status_code == 200
    assert all("ownerReferences" not in obj["metadata"] for _, obj in kube.writes)
    assert kube.reads == []


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RECORD = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "data": {"num_nodes": "2"}}


def pod(index: int, phase: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"p{index}", "labels": {NODE_INDEX_LABEL: str(index)}},
            "status": {"phase": phase, **status}}  # fmt: skip


def job(*conditions: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "sky-x"}, "spec": {"completions": 2}, "status": {"conditions": list(conditions)}}


def test_status_derivation() -> None:
    assert derive(RECORD, job(), [pod(0, "Running"), pod(1, "Pending")], [], NOW).status is TaskStatus.PENDING
    assert derive(RECORD, job(), [pod(0, "Running"), pod(1, "Running")], [], NOW).status is TaskStatus.RUNNING
    done = job({"type": "Complete", "status": "True"})
    assert derive(RECORD, done, [], [], NOW).status is TaskStatus.COMPLETED
    message = "Container task for pod ml/p1 failed with exit code {} matching FailJob rule at index {}"
    setup = job({"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": message.format(100, 1)})
    assert derive(RECORD, setup, [], [], NOW).status is TaskStatus.FAILED_SETUP
    run = job(
        {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": message.format(3, 2)}
    )
    assert derive(RECORD, run, [], [], NOW).status is TaskStatus.FAILED
    final = {**RECORD, "data": {"status": "cancelled", "message": "stopped"}}
    assert derive(final, None, [], [], NOW).status is TaskStatus.CANCELLED
    assert derive(RECORD, None, [], [], NOW + dt.timedelta(hours=1)).status is TaskStatus.FAILED


def test_pending_reasons() -> None:
    unschedulable = pod(1, "Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                                   "message": "0/2 nodes are available"}])  # fmt: skip
    assert derive(RECORD, job(), [unschedulable], [], NOW).message.startswith("unschedulable: 0/2 nodes")
    image = pod(0, "Pending", containerStatuses=[{"state": {"waiting": {"reason": "ImagePullBackOff",
                                                                        "message": "no such image"}}}])  # fmt: skip
    assert derive(RECORD, job(), [image], [], NOW).message.startswith("image: ImagePullBackOff")
    quota = {"type": "Warning", "reason": "FailedCreate", "involvedObject": {"kind": "Job", "name": "sky-x"},
             "message": "pods is forbidden: exceeded quota: compute"}  # fmt: skip
    assert derive(RECORD, job(), [], [quota], NOW).message.startswith("quota: ")
