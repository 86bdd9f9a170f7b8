"""The launcher against a real control plane (kube-apiserver, controller-manager with the Job controller,
scheduler, kwok nodes): the API server as a subprocess running as its own ServiceAccount, users with real
audience-bound tokens, and the CLI as a subprocess."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from tests.engine.cluster import LocalCluster
from tests.harness.wait import eventually
from tests.launcher.harness import (
    LAUNCHER_DEPLOYMENT,
    ROOT,
    ServerProcess,
    client,
    launcher_kubeconfig,
    prepare_namespace,
    token,
    user_name,
)
from workloads.task import NODE_INDEX_LABEL, SETUP_FAILED_EXIT_CODE, USER_ANNOTATION

pytestmark = [pytest.mark.engine, pytest.mark.slow]
NS = "skyrun-test"
TWO_NODES = """
name: ddp-smoke
num_nodes: 2
resources: {cpus: "250m", memory: 256Mi, use_spot: true}
envs: {EPOCHS: 3}
setup: echo setting up
run: echo rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES
"""
PENDING_FOREVER = "name: waits\nresources: {accelerators: 'H100:1'}\nrun: nvidia-smi\n"
# What the launcher creates for a task (all named sky-<id>); the pods are the Job's.
TASK_KINDS = (("batch/v1", "Job"), ("v1", "Service"), ("v1", "ConfigMap"), ("networking.k8s.io/v1", "NetworkPolicy"))


class Env:
    def __init__(self, cluster: LocalCluster, server: ServerProcess, kubeconfig: Path, launcher_uid: str) -> None:
        self.cluster = cluster
        self.server = server
        self.kubeconfig = kubeconfig
        self.launcher_uid = launcher_uid
        self.tokens = {u: token(cluster, NS, u) for u in ("alice", "bob", "admin")}
        self.alice = client(server.url, self.tokens["alice"])
        self.bob = client(server.url, self.tokens["bob"])
        self.admin = client(server.url, self.tokens["admin"])

    def submit(self, http: httpx.Client, task_yaml: str, **envs: str) -> str:
        answer = http.post("/tasks/submit", json={"task_yaml": task_yaml, "envs": envs})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["task_id"])

    def status(self, http: httpx.Client, task_id: str) -> dict[str, Any]:
        answer = http.get(f"/tasks/{task_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait_status(self, http: httpx.Client, task_id: str, wanted: str, timeout_s: float = 60) -> dict[str, Any]:
        return dict(eventually(f"task {task_id} {wanted}", lambda: (s := self.status(http, task_id))["status"] == wanted
                               and s, timeout_s, 0.3))  # fmt: skip

    def job(self, task_id: str) -> dict[str, Any] | None:
        return self.cluster.api.get("batch/v1", "Job", f"sky-{task_id}", NS)

    def pods(self, task_id: str) -> list[dict[str, Any]]:
        return self.cluster.api.items("v1", "Pod", NS, f"task-id={task_id}")


def task_objects(cluster: LocalCluster, ns: str, selector: str = "skypilot-task=true") -> list[dict[str, Any]]:
    """Every Job, Service, ConfigMap and NetworkPolicy of the tasks `selector` picks (with their kinds: a list
    answer's items have none)."""
    return [{**o, "kind": kind} for api_version, kind in TASK_KINDS
            for o in cluster.api.items(api_version, kind, ns, selector)]  # fmt: skip


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("skyrun")
    launcher = prepare_namespace(cluster, NS)
    kubeconfig = launcher_kubeconfig(cluster, NS, workdir)
    server = ServerProcess(kubeconfig, NS, workdir / "server.log")
    server.start()
    try:
        yield Env(cluster, server, kubeconfig, launcher["metadata"]["uid"])
    finally:
        server.stop()
        print(f"--- launcher log ---\n{server.tail(40)}", file=sys.stderr)


def test_a_two_node_task_is_one_indexed_job_with_the_skypilot_env(env: Env) -> None:
    answer = env.alice.post("/tasks/submit", json={"task_yaml": TWO_NODES, "envs": {"EXTRA": "x"}}).json()
    assert answer["status"] == "pending" and answer["ignored"] == ["resources.use_spot"]
    task_id = answer["task_id"]
    assert len(task_id) == 8
    jobs = env.cluster.api.items("batch/v1", "Job", NS, f"task-id={task_id}")
    assert len(jobs) == 1, "one Indexed Job per task, not one Job per node"
    job = jobs[0]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    labels = job["metadata"]["labels"]
    assert labels["skypilot-task"] == "true" and labels["task-name"] == "ddp-smoke"
    assert labels["username"] == "system-serviceaccount-skyrun-test-alice"
    container = spec["template"]["spec"]["containers"][0]
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    name = f"sky-{task_id}"
    assert env_vars["SKYPILOT_NODE_IPS"] == f"{name}-0.{name}\n{name}-1.{name}"
    assert env_vars["MASTER_ADDR"] == f"{name}-0.{name}" and env_vars["NUM_NODES"] == "2"
    assert env_vars["SKYPILOT_TASK_ID"] == task_id and env_vars["EPOCHS"] == "3" and env_vars["EXTRA"] == "x"
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    service = env.cluster.api.get("v1", "Service", name, NS)
    assert service is not None and service["spec"]["clusterIP"] == "None"
    pods = eventually("both pods", lambda: len(p := env.pods(task_id)) == 2 and p, 30)
    assert sorted(p["metadata"]["labels"][NODE_INDEX_LABEL] for p in pods) == ["0", "1"]
    assert all(p["spec"]["subdomain"] == name for p in pods)
    env.wait_status(env.alice, task_id, "completed")


def test_statuses_go_pending_running_completed_as_kwok_moves_the_pods(env: Env) -> None:
    task_id = env.submit(env.alice, TWO_NODES)
    seen: list[str] = []

    def completed() -> bool:  # records every status it sees on the way
        status = env.status(env.alice, task_id)["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == "completed"

    try:  # nothing retried: an error answer fails the test at once
        eventually(f"task {task_id} completed", completed, 90, 0.2, retry_on=())
    except TimeoutError as err:
        raise AssertionError(f"{err}; statuses seen: {seen}") from None
    assert seen == ["pending", "running", "completed"], seen
    info = env.status(env.alice, task_id)
    assert info["finished_at"] and [n["index"] for n in info["nodes"]] == [0, 1]


def test_a_pending_task_says_why(env: Env) -> None:
    task_id = env.submit(env.alice, PENDING_FOREVER)
    info = eventually("an unschedulable reason", lambda: "unschedulable" in (s := env.status(env.alice, task_id))
                      ["message"] and s, 60)  # fmt: skip
    assert info["status"] == "pending" and "node" in info["message"], info
    assert env.alice.post(f"/tasks/{task_id}/stop").json() == {"stopped": [task_id]}


def test_stop_really_stops(env: Env) -> None:
    task_id = env.submit(env.alice, TWO_NODES)
    env.wait_status(env.alice, task_id, "running")
    assert env.alice.post(f"/tasks/{task_id}/stop").json() == {"stopped": [task_id]}
    assert env.status(env.alice, task_id)["status"] == "cancelled"
    eventually("the Job and its pods gone", lambda: env.job(task_id) is None and not env.pods(task_id), 60)
    assert env.alice.post(f"/tasks/{task_id}/stop").status_code == 409
    assert env.status(env.alice, task_id)["status"] == "cancelled"


def test_a_failing_setup_is_failed_setup_and_fails_the_whole_gang(env: Env) -> None:
    task_id = env.submit(env.alice, TWO_NODES)
    env.wait_status(env.alice, task_id, "running")
    pod = next(p for p in env.pods(task_id) if p["metadata"]["labels"][NODE_INDEX_LABEL] == "1")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {"exitCode": SETUP_FAILED_EXIT_CODE, "reason": "Error", "startedAt": now, "finishedAt": now}
    status = {  # what the kubelet writes when the wrapper exits with the setup code
        "phase": "Failed",
        "containerStatuses": [{"name": "task", "image": "ml-platform:test", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": terminated}}],
    }  # fmt: skip
    env.cluster.api.client.patch(Pod.Status, pod["metadata"]["name"], {"status": status}, namespace=NS,
                                 patch_type=PatchType.MERGE)  # fmt: skip
    info = env.wait_status(env.alice, task_id, "failed_setup")
    assert "setup" in info["message"]
    eventually("rank 0 stopped by the Job", lambda: all(p["metadata"].get("deletionTimestamp") or
               p["status"]["phase"] in ("Failed", "Succeeded") for p in env.pods(task_id)), 60)  # fmt: skip


def test_every_object_of_a_task_is_owned_by_the_launchers_deployment(env: Env) -> None:
    task_id = env.submit(env.alice, PENDING_FOREVER)
    objects = task_objects(env.cluster, NS, f"task-id={task_id}")
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Job", "NetworkPolicy", "Service"]
    for obj in objects:
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": LAUNCHER_DEPLOYMENT, "uid": env.launcher_uid,
            "controller": False, "blockOwnerDeletion": False,
        }], obj["kind"]  # fmt: skip
    pods = eventually("the task's pod", lambda: env.pods(task_id), 30)
    assert [o["kind"] for p in pods for o in p["metadata"]["ownerReferences"]] == ["Job"]
    assert env.alice.post(f"/tasks/{task_id}/stop").json() == {"stopped": [task_id]}


def test_a_task_over_the_namespace_quota_is_refused_and_creates_nothing(env: Env) -> None:
    hard = {"limits.memory": "10Gi", "requests.memory": "10Gi", "limits.cpu": "4", "requests.cpu": "4", "pods": "10"}
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "platform-quota", "namespace": NS},
             "spec": {"hard": hard}}  # fmt: skip
    env.cluster.api.apply(quota)
    try:
        before = {o["metadata"]["uid"] for o in task_objects(env.cluster, NS)}
        over = "name: big\nnum_nodes: 2\nresources: {memory: 8Gi}\nrun: train\n"
        answer = env.alice.post("/tasks/submit", json={"task_yaml": over})
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"] == [
            {"field": "resources.memory", "message": "limits.memory: the task asks 2 x 8Gi = 16Gi, the namespace "
             "quota platform-quota allows 10Gi in all (6Gi over); ask for less or raise quotaMemory"},
            {"field": "resources.memory", "message": "requests.memory: the task asks 2 x 8Gi = 16Gi, the namespace "
             "quota platform-quota allows 10Gi in all (6Gi over); ask for less or raise quotaMemory"},
        ]  # fmt: skip
        assert {o["metadata"]["uid"] for o in task_objects(env.cluster, NS)} == before, "nothing was created"
        task_id = env.submit(env.alice, over.replace("8Gi", "5Gi"))  # 2 x 5Gi: exactly the quota
        assert env.job(task_id) is not None
        assert env.alice.post(f"/tasks/{task_id}/stop").json() == {"stopped": [task_id]}
    finally:
        env.cluster.api.delete("v1", "ResourceQuota", "platform-quota", NS)


def test_isolation_both_ways_on_every_endpoint(env: Env) -> None:
    mine = env.submit(env.alice, PENDING_FOREVER)
    theirs = env.submit(env.bob, PENDING_FOREVER)
    vol_a = env.alice.post("/volumes/create", json={"name": "shared-name", "size": "1"}).json()["volume_id"]
    vol_b = env.bob.post("/volumes/create", json={"name": "shared-name", "size": "1Gi"}).json()["volume_id"]
    for me, other, task_id, vol in ((env.alice, env.bob, mine, vol_a), (env.bob, env.alice, theirs, vol_b)):
        user = me.get("/whoami").json()["user"]
        assert other.get(f"/tasks/{task_id}").status_code == 404
        assert other.get(f"/tasks/{task_id}/logs", params={"follow": False}).status_code == 404
        assert other.post(f"/tasks/{task_id}/stop").status_code == 404
        assert task_id not in {t["task_id"] for t in other.get("/tasks").json()["tasks"]}
        assert {t["user"] for t in me.get("/tasks").json()["tasks"]} == {user}
        assert other.get(f"/volumes/{vol}").status_code == 404
        assert other.delete(f"/volumes/{vol}").status_code == 404
        assert vol not in {v["volume_id"] for v in other.get("/volumes").json()["volumes"]}
    # Stopping "all my tasks" stops only the caller's own.
    assert env.bob.post("/tasks/stop").json()["stopped"] == [theirs]
    assert env.status(env.alice, mine)["status"] == "pending"
    assert env.alice.post("/tasks/stop").json()["stopped"] == [mine]
    mine, theirs = env.submit(env.alice, PENDING_FOREVER), env.submit(env.bob, PENDING_FOREVER)
    assert env.alice.get("/tasks", params={"all_users": True}).status_code == 403
    assert env.bob.post("/tasks/stop", params={"all_users": True}).status_code == 403
    everyone = {t["task_id"] for t in env.admin.get("/tasks", params={"all_users": True}).json()["tasks"]}
    assert {mine, theirs} <= everyone
    assert env.admin.get("/whoami").json()["all_users_allowed"] is True
    assert set(env.admin.post("/tasks/stop", params={"all_users": True}).json()["stopped"]) >= {mine, theirs}
    for http, vol in ((env.alice, vol_a), (env.bob, vol_b)):
        assert http.delete(f"/volumes/{vol}").status_code == 200


def test_volumes_are_mounted_by_name_and_only_by_their_owner(env: Env) -> None:
    created = env.alice.post("/volumes/create", json={"name": "data", "size": "2", "access_modes": ["ReadWriteMany"]})
    assert created.status_code == 200, created.text
    vol = created.json()
    assert (vol["size"], vol["access_modes"]) == ("2Gi", ["ReadWriteMany"])
    assert env.alice.post("/volumes/create", json={"name": "data", "size": "1"}).status_code == 409
    claim = env.cluster.api.get("v1", "PersistentVolumeClaim", f"vol-{vol['volume_id']}", NS)
    assert claim is not None and claim["metadata"]["annotations"][USER_ANNOTATION] == user_name(NS, "alice")
    task = "volumes: {/data: data}\nresources: {accelerators: 1}\nrun: ls /data\n"
    refused = env.bob.post("/tasks/submit", json={"task_yaml": task})
    assert refused.status_code == 400 and refused.json()["detail"][0]["field"] == "volumes./data"
    task_id = env.submit(env.alice, PENDING_FOREVER.replace("run:", "volumes: {/data: data}\nrun:"))
    job = env.job(task_id)
    assert job is not None
    claims = [v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims == [f"vol-{vol['volume_id']}"]
    listed = env.alice.get("/volumes").json()["volumes"]
    assert [v["in_use_by"] for v in listed if v["name"] == "data"] == [[task_id]]
    assert env.alice.delete(f"/volumes/{vol['volume_id']}").status_code == 409
    env.alice.post(f"/tasks/{task_id}/stop")
    assert env.alice.delete(f"/volumes/{vol['volume_id']}").status_code == 200
    assert env.alice.get(f"/volumes/{vol['volume_id']}").status_code == 404


def test_tokens_are_checked_with_tokenreview_and_their_audience(env: Env) -> None:
    assert env.alice.get("/whoami").json()["user"] == user_name(NS, "alice")
    assert client(env.server.url, None).get("/tasks").status_code == 401
    assert client(env.server.url, "not-a-token").get("/tasks").status_code == 401
    api_audience = token(env.cluster, NS, "alice", None)  # a real token, but for the API server
    assert client(env.server.url, api_audience).get("/tasks").status_code == 401
    spoof = httpx.get(f"{env.server.url}/tasks", headers={"X-Skyrun-User": user_name(NS, "alice")})
    assert spoof.status_code == 401, "the user header is trusted only in local-development mode"


def test_a_user_has_a_cap_on_active_tasks(env: Env) -> None:
    ids = [env.submit(env.bob, PENDING_FOREVER) for _ in range(4)]
    over = env.bob.post("/tasks/submit", json={"task_yaml": PENDING_FOREVER})
    assert over.status_code == 409 and "4" in over.json()["detail"]
    assert env.alice.post("/tasks/submit", json={"task_yaml": "run: 'true'"}).status_code == 200
    assert sorted(env.bob.post("/tasks/stop").json()["stopped"]) == sorted(ids)
    env.submit(env.bob, "run: 'true'")


def test_logs_are_streamed_per_node(env: Env) -> None:
    task_id = env.submit(env.alice, TWO_NODES)
    with env.alice.stream("GET", f"/tasks/{task_id}/logs", timeout=120) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    # kwok's nodes serve no container logs here; every node still answers, prefixed with its rank.
    assert sorted(line.split(" | ")[0] for line in lines if line) == ["node-0", "node-1"], lines


def test_a_restarted_server_still_lists_everything(env: Env) -> None:
    before = {t["task_id"]: t["status"] for t in env.admin.get("/tasks", params={"all_users": True}).json()["tasks"]}
    volumes = env.alice.get("/volumes").json()
    env.server.kill()
    env.server.start()
    after = {t["task_id"]: t["status"] for t in env.admin.get("/tasks", params={"all_users": True}).json()["tasks"]}
    finished = {k: v for k, v in before.items() if v not in ("pending", "running")}
    assert set(after) == set(before) and {k: after[k] for k in finished} == finished
    assert env.alice.get("/volumes").json() == volumes


def test_deleting_the_launchers_deployment_deletes_every_task_and_a_rolling_update_keeps_them(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    ns = "skyrun-gc"  # a namespace of its own: this test deletes the launcher
    launcher = prepare_namespace(cluster, ns)
    server = ServerProcess(launcher_kubeconfig(cluster, ns, tmp_path), ns, tmp_path / "server.log")
    server.start()
    try:
        alice = client(server.url, token(cluster, ns, "alice"))
        first = alice.post("/tasks/submit", json={"task_yaml": PENDING_FOREVER}).json()["task_id"]
        eventually("the first task's pod", lambda: cluster.api.items("v1", "Pod", ns, f"task-id={first}"), 30)
        # A rolling update (a new pod template) keeps the Deployment and its uid: the tasks stay, and new ones are
        # owned by the same uid.
        patch = {"spec": {"template": {"metadata": {"annotations": {"rollout": "2"}}}}}
        cluster.api.client.patch(Deployment, LAUNCHER_DEPLOYMENT, patch, namespace=ns, patch_type=PatchType.MERGE)
        eventually("the rollout observed", lambda: (d := cluster.api.get("apps/v1", "Deployment", LAUNCHER_DEPLOYMENT,
                   ns)) and d["status"].get("observedGeneration") == d["metadata"]["generation"] == 2, 30)  # fmt: skip
        second = alice.post("/tasks/submit", json={"task_yaml": PENDING_FOREVER}).json()["task_id"]
        objects = task_objects(cluster, ns)
        assert {o["metadata"]["labels"]["task-id"] for o in objects} == {first, second}
        assert {r["uid"] for o in objects for r in o["metadata"]["ownerReferences"]} == {launcher["metadata"]["uid"]}
        cluster.api.delete("apps/v1", "Deployment", LAUNCHER_DEPLOYMENT, ns)  # what `pulumi destroy` does
        eventually("every task object and pod collected", lambda: not task_objects(cluster, ns)
                   and not cluster.api.items("v1", "Pod", ns, "skypilot-task=true"), 60)  # fmt: skip
    finally:
        server.stop()
        cluster.api.delete("v1", "Namespace", ns)


def cli(env: Env, user: str, *args: str, stdin: str | None = None, home: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SKYRUN_")}
    environ |= {"SKYRUN_API_URL": env.server.url, "SKYRUN_CONFIG": str(home / f"{user}.yaml"), "COLUMNS": "200",
                "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "skyrun", *args], env=environ, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def test_the_cli_end_to_end(env: Env, tmp_path: Path) -> None:
    token_file = tmp_path / "alice.token"
    token_file.write_text(env.tokens["alice"])
    login = cli(env, "alice", "auth", "login", "--token-file", str(token_file), home=tmp_path)
    assert login.returncode == 0 and user_name(NS, "alice") in login.stdout, login.stderr
    assert cli(env, "bob", "whoami", home=tmp_path).returncode == 3  # bob never logged in
    task = tmp_path / "task.yaml"
    task.write_text(TWO_NODES)
    submitted = cli(env, "alice", "jobs", "submit", str(task), "--detach", "--env", "EPOCHS=5", home=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.split()[1].rstrip(":")
    listed = cli(env, "alice", "jobs", "list", "--details", home=tmp_path)
    assert listed.returncode == 0 and task_id in listed.stdout and "ddp-smoke" in listed.stdout
    status = cli(env, "alice", "jobs", "status", task_id, home=tmp_path)
    assert status.returncode == 0 and task_id in status.stdout, status.stderr
    followed = cli(env, "alice", "jobs", "submit", str(task), home=tmp_path)  # follows logs to the end
    assert followed.returncode == 0 and "completed" in followed.stdout, followed.stdout + followed.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\nfile_mounts: {/a: b}\n")
    refused = cli(env, "alice", "jobs", "submit", str(bad), home=tmp_path)
    assert refused.returncode == 2 and "file_mounts" in refused.stderr
    assert cli(env, "alice", "jobs", "status", "zzzzzzzz", home=tmp_path).returncode == 4
    created = cli(env, "alice", "volumes", "create", "cli-vol", "1", home=tmp_path)
    assert created.returncode == 0, created.stderr
    vol_id = created.stdout.split()[1].rstrip(":")
    assert "cli-vol" in cli(env, "alice", "volumes", "list", home=tmp_path).stdout
    declined = cli(env, "alice", "volumes", "delete", vol_id, stdin="n\n", home=tmp_path)
    assert declined.returncode == 5 and "cli-vol" in cli(env, "alice", "volumes", "list", home=tmp_path).stdout
    assert cli(env, "alice", "volumes", "delete", vol_id, "--force", home=tmp_path).returncode == 0
    stop = cli(env, "alice", "jobs", "stop", "--all", home=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert cli(env, "alice", "jobs", "stop", "--all", "--all-users", home=tmp_path).returncode == 3
