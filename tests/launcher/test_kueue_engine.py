"""Team queues against the real Kueue (tests/engine/kueue.py: its manager, webhooks and visibility API) on the engine
tier: the launcher server as a subprocess, bound to exactly the RBAC the stack gives it (`launcher_team_rules()` in
each team namespace, `launcher_cluster_role_rules()` cluster-wide), so every Kueue read it makes (LocalQueues,
ClusterQueues, Workloads, the visibility API's pending workloads) is checked as in a real cluster.

The quotas, from which every expected number below is worked out by hand: ClusterQueues skyrun-team-a and
skyrun-team-b each have 1 CPU and 4Gi of the flavor skyrun-default and share the cohort skyrun, so each can admit at
most 1 + 1 (all its peer can lend) = 2 CPUs. team-a's LocalQueue `team-a` points at skyrun-team-a, team-b's `team-b`
at skyrun-team-b; team-c names a queue `team-c` that starts out missing. kwok completes a task's pods COMPLETE_S
after they are created, far longer than the checks take: the admitted tasks hold the quota until the user stops them.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engine.cluster import LocalCluster
from tests.engine.kueue import KueueManager, kueue  # noqa: F401  (the fixture)
from tests.harness.api import condition
from tests.harness.wait import eventually
from tests.launcher.harness import (
    KWOK_DELAYS,
    LAUNCHER_SA,
    ServerProcess,
    client,
    launcher_kubeconfig,
    rbac,
    token,
    user_name,
)
from workloads.task import launcher_cluster_role_rules, launcher_team_rules

pytestmark = [pytest.mark.engine, pytest.mark.slow]

KUEUE = "kueue.x-k8s.io/v1beta2"
PLATFORM = "skyrun-kq-platform"
ANCHOR = "skyrun-anchor"
COHORT = "skyrun"
FLAVOR = "skyrun-default"
# Distinct from tests/engine/test_kueue.py's names: both modules may run in one session against one Kueue.
TEAMS = {
    "team-a": {"namespace": "skyrun-kq-a", "user": "alice", "cluster_queue": "skyrun-team-a"},
    "team-b": {"namespace": "skyrun-kq-b", "user": "bob", "cluster_queue": "skyrun-team-b"},
    "team-c": {"namespace": "skyrun-kq-c", "user": "carol", "cluster_queue": "skyrun-team-c"},
}
"""team (and the name of its LocalQueue) -> its namespace, its one user, and the ClusterQueue its LocalQueue names.
Only team-a and team-b get their queues; skyrun-team-c never exists."""
NS_A, NS_B, NS_C = (TEAMS[t]["namespace"] for t in ("team-a", "team-b", "team-c"))
COMPLETE_S = 120
WAIT_S = 60
ONE_CPU = "name: one-cpu\nresources: {cpus: 1}\nrun: train\n"
THREE_CPUS = "name: three-cpus\nresources: {cpus: 3}\nrun: train\n"
WAITING_REASON = (
    f"Pending: couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor {FLAVOR}, 1 more "
    "needed"
)
"""Kueue's reason for a 1-CPU task while team-a holds both CPUs of the cohort (its own and the one team-b lends)."""


def cluster_queue(name: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {
            "cohortName": COHORT,
            "namespaceSelector": {},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": FLAVOR, "resources": [
                {"name": "cpu", "nominalQuota": "1"}, {"name": "memory", "nominalQuota": "4Gi"}]}]}],
        },
    }  # fmt: skip


def local_queue(name: str, namespace: str, cq: str) -> dict[str, Any]:
    return {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cq}}  # fmt: skip


def _team_namespace(cluster: LocalCluster, ns: str) -> None:
    """A team namespace as the stack makes it: Pod Security restricted, the launcher's team rules bound there by a
    RoleBinding, and the anchor ConfigMap that owns every task."""
    api = cluster.api
    restricted = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "audit", "warn")}
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": restricted}})
    api.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "skyrun-launcher", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "skyrun-kq-team"},
               "subjects": [{"kind": "ServiceAccount", "name": LAUNCHER_SA, "namespace": PLATFORM}]})  # fmt: skip
    api.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ANCHOR, "namespace": ns}})
    eventually(f"the default ServiceAccount of {ns}", lambda: api.get("v1", "ServiceAccount", "default", ns), 60)


def _active(cluster: LocalCluster, kind: str, name: str, ns: str | None) -> bool:
    return condition(cluster.api.get(KUEUE, kind, name, ns), "Active") == "True"


@pytest.fixture(scope="module")
def server(
    cluster: LocalCluster,
    kueue: KueueManager,  # noqa: F811  (the imported fixture)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    api = cluster.api
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLATFORM}})
    for sa in (LAUNCHER_SA, *(t["user"] for t in TEAMS.values())):
        api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": PLATFORM}})
    api.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": "skyrun-kq-team"}, "rules": launcher_team_rules()})  # fmt: skip
    for obj in rbac("skyrun-kq-cluster", PLATFORM, launcher_cluster_role_rules(), LAUNCHER_SA, cluster_scoped=True):
        api.apply(obj)
    for team in TEAMS.values():
        _team_namespace(cluster, team["namespace"])

    api.apply({"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}})
    for name in ("team-a", "team-b"):
        api.apply(cluster_queue(TEAMS[name]["cluster_queue"]))
        api.apply(local_queue(name, TEAMS[name]["namespace"], TEAMS[name]["cluster_queue"]))
    for name in ("team-a", "team-b"):
        cq, ns = TEAMS[name]["cluster_queue"], TEAMS[name]["namespace"]
        eventually(f"ClusterQueue {cq} Active", partial(_active, cluster, "ClusterQueue", cq, None), WAIT_S)
        eventually(f"LocalQueue {ns}/{name} Active", partial(_active, cluster, "LocalQueue", name, ns), WAIT_S)

    settings = [{"name": name, "namespace": t["namespace"], "users": [user_name(PLATFORM, t["user"])], "queue": name}
                for name, t in TEAMS.items()]  # fmt: skip
    # The admitted tasks must hold the quota while the test looks at the queue behind them.
    delays = {**KWOK_DELAYS, "pod-complete.stage.kwok.x-k8s.io/delay": f"{COMPLETE_S}s",
              "pod-complete.stage.kwok.x-k8s.io/jitter-delay": f"{COMPLETE_S + 1}s"}  # fmt: skip
    workdir = tmp_path_factory.mktemp("skyrun-kueue")
    process = ServerProcess(launcher_kubeconfig(cluster, PLATFORM, workdir), PLATFORM, workdir / "server.log",
                            SKYRUN_TEAMS=json.dumps(settings), SKYRUN_ANCHOR=ANCHOR,
                            SKYRUN_POD_ANNOTATIONS=json.dumps(delays))  # fmt: skip
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"--- launcher log ---\n{process.tail(30)}\n--- kueue log ---\n{kueue.log_tail(30)}", file=sys.stderr)
        for team in TEAMS.values():
            api.delete("v1", "Namespace", team["namespace"])
        for name in ("team-a", "team-b"):
            api.delete(KUEUE, "ClusterQueue", TEAMS[name]["cluster_queue"])
        api.delete(KUEUE, "ResourceFlavor", FLAVOR)


def user(cluster: LocalCluster, server: ServerProcess, team: str) -> httpx.Client:
    return client(server.url, token(cluster, PLATFORM, TEAMS[team]["user"]))


def submit(http: httpx.Client, task_yaml: str) -> str:
    answer = http.post("/tasks/submit", json={"task_yaml": task_yaml})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["task_id"])


def status(http: httpx.Client, task_id: str) -> dict[str, Any]:
    answer = http.get(f"/tasks/{task_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def wait_status(http: httpx.Client, task_id: str, wanted: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    return dict(eventually(f"task {task_id} {wanted}", lambda: (s := status(http, task_id))["status"] == wanted and s,
                           timeout_s, 0.3))  # fmt: skip


def queued_as(http: httpx.Client, task_id: str, position: int) -> dict[str, Any]:
    """The task once the launcher shows it waiting at `position` for Kueue's reason."""

    def check() -> dict[str, Any] | None:
        s = status(http, task_id)
        return s if (s["status"], s["queue_position"], s["waiting_reason"]) == ("pending", position,
                                                                              WAITING_REASON) else None  # fmt: skip

    return dict(eventually(f"task {task_id} queued at position {position}", check, WAIT_S, 0.3))


def workload_created(cluster: LocalCluster, ns: str, task_id: str) -> dt.datetime | None:
    """When Kueue created the Workload of a task's Job."""
    for wl in cluster.api.items(KUEUE, "Workload", ns):
        if any(r["kind"] == "Job" and r["name"] == f"sky-{task_id}" for r in wl["metadata"].get("ownerReferences", [])):
            return dt.datetime.fromisoformat(wl["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    return None


def rejections(server: ServerProcess) -> dict[str, float]:
    """The launcher's skyrun_submit_rejections_total by reason."""
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    families = [f for f in text_string_to_metric_families(text) if f.name == "skyrun_submit_rejections"]
    return {s.labels["reason"]: s.value for f in families for s in f.samples if s.name.endswith("_total")}


def created_in(cluster: LocalCluster, ns: str) -> dict[str, list[str]]:
    """The names of what a submission could create in `ns`: the task's objects and the cap lock's Lease (but the
    controller manager's CA bundle ConfigMap, which every namespace gets)."""
    kinds = (("batch/v1", "Job"), ("v1", "ConfigMap"), ("v1", "Service"), ("networking.k8s.io/v1", "NetworkPolicy"),
             ("coordination.k8s.io/v1", "Lease"))  # fmt: skip
    return {kind: sorted(o["metadata"]["name"] for o in cluster.api.items(v, kind, ns)
                         if o["metadata"]["name"] != "kube-root-ca.crt") for v, kind in kinds}  # fmt: skip


NOTHING = {"Job": [], "ConfigMap": [ANCHOR], "Service": [], "NetworkPolicy": [], "Lease": []}
"""What a team namespace holds before its first task: the anchor only."""


def test_tasks_beyond_the_quota_wait_in_queue_order_and_run_when_it_frees(
    cluster: LocalCluster, server: ServerProcess
) -> None:
    alice = user(cluster, server, "team-a")
    # 2 CPUs: team-a's own and the one team-b, idle, lends it.
    running = [submit(alice, ONE_CPU) for _ in range(2)]
    for task_id in running:
        info = wait_status(alice, task_id, "running")
        assert (info["queue"], info["queue_position"], info["waiting_reason"]) == ("team-a", None, "")

    first = submit(alice, ONE_CPU)
    waiting = queued_as(alice, first, 1)
    assert waiting["queue"] == "team-a"
    assert waiting["message"] == f"queued in team-a at position 1: {WAITING_REASON}"
    job = cluster.api.get("batch/v1", "Job", f"sky-{first}", NS_A)
    assert job is not None and job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # Kueue orders equal priorities by creation time, to the second, and ties arbitrarily: the next task's Workload
    # must be created in a later second than this one's for the order to be certain.
    created = eventually(f"task {first}'s Workload", lambda: workload_created(cluster, NS_A, first), WAIT_S)
    eventually("the next second", lambda: dt.datetime.now(dt.UTC) >= created + dt.timedelta(seconds=1), 5, 0.05)
    second = submit(alice, ONE_CPU)
    assert queued_as(alice, second, 2)["message"] == f"queued in team-a at position 2: {WAITING_REASON}"

    view = alice.get("/queue")
    assert view.status_code == 200, view.text
    body = view.json()
    assert (body["team"], body["namespace"], body["queue"]) == ("team-a", NS_A, "team-a")
    assert [(t["task_id"], t["queue_position"], t["waiting_reason"]) for t in body["tasks"]] == [
        (first, 1, WAITING_REASON),
        (second, 2, WAITING_REASON),
    ]
    statuses = {t["task_id"]: t["status"] for t in alice.get("/tasks").json()["tasks"]}
    assert statuses == {running[0]: "running", running[1]: "running", first: "pending", second: "pending"}
    bob = user(cluster, server, "team-b")
    assert bob.get("/queue").json() == {"team": "team-b", "namespace": NS_B, "queue": "team-b", "tasks": []}

    # The user stops the first two (their pods would run COMPLETE_S, long enough that a loaded machine never frees
    # the quota before the checks above): Kueue admits the waiting two in the CPUs they free.
    for task_id in running:
        stopped = alice.post(f"/tasks/{task_id}/stop")
        assert stopped.status_code == 200, stopped.text
    for task_id in (first, second):
        info = wait_status(alice, task_id, "running", WAIT_S)
        assert (info["queue"], info["queue_position"], info["waiting_reason"]) == ("team-a", None, "")
        alice.post(f"/tasks/{task_id}/stop")
    assert alice.get("/queue").json()["tasks"] == []


def test_a_task_larger_than_the_queue_could_ever_admit_is_refused_and_creates_nothing(
    cluster: LocalCluster, server: ServerProcess
) -> None:
    bob = user(cluster, server, "team-b")
    before = rejections(server).get("over_queue_quota", 0)
    answer = bob.post("/tasks/submit", json={"task_yaml": THREE_CPUS})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == [{
        "field": "resources.cpus",
        "message": "cpu: the task asks for 3, queue team-b can admit at most 2 (nominal 1 + 1 borrowable from cohort "
                   "skyrun): 1 too many; ask for less or have ClusterQueue skyrun-team-b's quota raised",
    }]  # fmt: skip
    assert rejections(server)["over_queue_quota"] == before + 1
    assert created_in(cluster, NS_B) == NOTHING
    assert bob.get("/tasks").json()["tasks"] == []


def test_a_team_whose_queue_is_missing_is_refused_and_gets_nothing(
    cluster: LocalCluster, server: ServerProcess
) -> None:
    carol = user(cluster, server, "team-c")
    before = rejections(server).get("unknown_queue", 0)
    fix = "an administrator creates it or corrects the team's `queue` in the stack's `teams` key; nothing was created"
    answer = carol.post("/tasks/submit", json={"task_yaml": ONE_CPU})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == f"queue team-c (a Kueue LocalQueue) is not in namespace {NS_C}: {fix}"
    assert created_in(cluster, NS_C) == NOTHING

    # The LocalQueue now exists, but its ClusterQueue does not (Kueue accepts such a LocalQueue and keeps it inactive).
    cluster.api.apply(local_queue("team-c", NS_C, "skyrun-team-c"))
    answer = carol.post("/tasks/submit", json={"task_yaml": ONE_CPU})
    assert answer.status_code == 422, answer.text
    missing = "queue team-c points at ClusterQueue 'skyrun-team-c', which does not exist"
    assert answer.json()["detail"] == f"{missing}: {fix}"
    assert rejections(server)["unknown_queue"] == before + 2
    assert created_in(cluster, NS_C) == NOTHING
