"""Team namespaces against a real API server: the launcher's ServiceAccount has `launcher_team_rules()` in each team
namespace (a ClusterRole bound by a RoleBinding there, as the stack renders it) and only the cluster-wide rules
elsewhere, so any call into the platform namespace would be refused; a user's tasks land in their team's namespace,
owned by its anchor ConfigMap; a user in no team gets 403; an administrator lists every team's tasks."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.cluster import LocalCluster
from tests.harness.wait import eventually
from tests.launcher.harness import LAUNCHER_SA, ServerProcess, client, launcher_kubeconfig, rbac, token, user_name
from workloads.task import launcher_cluster_role_rules, launcher_team_rules

pytestmark = [pytest.mark.engine, pytest.mark.slow]
PLATFORM = "skyrun-platform"
TEAMS = ("skyrun-team-a", "skyrun-team-b")
ANCHOR = "skyrun-anchor"
WAITS = "name: waits\nresources: {accelerators: 'H100:1'}\nrun: nvidia-smi\n"


def _apply_all(cluster: LocalCluster, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        cluster.api.apply(obj)


@pytest.fixture(scope="module")
def teams(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    api = cluster.api
    restricted = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "audit", "warn")}
    for ns in (PLATFORM, *TEAMS):
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": restricted}})
    for sa in (LAUNCHER_SA, "alice", "bob", "carol", "admin"):
        api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": PLATFORM}})
    team_role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "skyrun-team-launcher"}, "rules": launcher_team_rules()}  # fmt: skip
    _apply_all(cluster, [team_role, *rbac("skyrun-teams-cluster", PLATFORM, launcher_cluster_role_rules(), LAUNCHER_SA,
                                          cluster_scoped=True)])  # fmt: skip
    admin_rule = [{"apiGroups": ["skyrun.ml-platform.dev"], "resources": ["tasks"], "verbs": ["list", "delete"]}]
    _apply_all(cluster, rbac("skyrun-admin", PLATFORM, admin_rule, "admin"))
    anchors = {}
    for ns in TEAMS:
        api.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "skyrun-launcher", "namespace": ns},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "skyrun-team-launcher"},
                   "subjects": [{"kind": "ServiceAccount", "name": LAUNCHER_SA, "namespace": PLATFORM}]})  # fmt: skip
        anchor = api.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ANCHOR, "namespace": ns}})
        anchors[ns] = anchor["metadata"]["uid"]
        eventually(f"the default ServiceAccount of {ns}", lambda ns=ns: api.get("v1", "ServiceAccount", "default", ns),
                   60)  # fmt: skip
    settings = [
        {"name": "team-a", "namespace": TEAMS[0], "users": [user_name(PLATFORM, "alice")], "queue": ""},
        {"name": "team-b", "namespace": TEAMS[1], "users": [user_name(PLATFORM, "bob")], "queue": ""},
    ]
    workdir = tmp_path_factory.mktemp("skyrun-teams")
    server = ServerProcess(launcher_kubeconfig(cluster, PLATFORM, workdir), PLATFORM, workdir / "server.log",
                           SKYRUN_TEAMS=json.dumps(settings), SKYRUN_ANCHOR=ANCHOR)  # fmt: skip
    server.start()
    try:
        yield {"server": server, "anchors": anchors}
    finally:
        server.stop()
        print(f"--- launcher log ---\n{server.tail(30)}", file=sys.stderr)


def test_tasks_live_in_their_teams_namespace_owned_by_its_anchor(cluster: LocalCluster, teams: dict[str, Any]) -> None:
    url = teams["server"].url
    alice, bob = (client(url, token(cluster, PLATFORM, u)) for u in ("alice", "bob"))
    ids = {}
    for http, ns in ((alice, TEAMS[0]), (bob, TEAMS[1])):
        answer = http.post("/tasks/submit", json={"task_yaml": WAITS})
        assert answer.status_code == 200, answer.text
        ids[ns] = answer.json()["task_id"]
        for api_version, kind in (("batch/v1", "Job"), ("v1", "Service"), ("v1", "ConfigMap"),
                                  ("networking.k8s.io/v1", "NetworkPolicy")):  # fmt: skip
            obj = cluster.api.get(api_version, kind, f"sky-{ids[ns]}", ns)
            assert obj is not None, (kind, ns)
            assert [(o["kind"], o["name"], o["uid"]) for o in obj["metadata"]["ownerReferences"]] == [
                ("ConfigMap", ANCHOR, teams["anchors"][ns])
            ]
        assert http.get(f"/tasks/{ids[ns]}").json()["namespace"] == ns
    assert cluster.api.items("batch/v1", "Job", PLATFORM, "skypilot-task=true") == []
    assert alice.get(f"/tasks/{ids[TEAMS[1]]}").status_code == 404, "bob's task is not alice's"
    volume = alice.post("/volumes/create", json={"name": "data", "size": "1"})
    assert volume.status_code == 200, volume.text
    assert cluster.api.get("v1", "PersistentVolumeClaim", f"vol-{volume.json()['volume_id']}", TEAMS[0]) is not None
    admin = client(url, token(cluster, PLATFORM, "admin"))
    listed = {t["task_id"]: t["namespace"] for t in admin.get("/tasks", params={"all_users": True}).json()["tasks"]}
    assert listed == {ids[TEAMS[0]]: TEAMS[0], ids[TEAMS[1]]: TEAMS[1]}
    assert alice.get("/tasks", params={"all_users": True}).status_code == 403
    whoami = alice.get("/whoami").json()
    assert (whoami["team"], whoami["namespace"]) == ("team-a", TEAMS[0])


def test_a_user_in_no_team_is_refused_with_the_fix(cluster: LocalCluster, teams: dict[str, Any]) -> None:
    carol = client(teams["server"].url, token(cluster, PLATFORM, "carol"))
    answer = carol.post("/tasks/submit", json={"task_yaml": WAITS})
    assert answer.status_code == 403
    assert answer.json()["detail"] == (
        f"{user_name(PLATFORM, 'carol')} is in no team of this launcher: an administrator adds them to a team's "
        "`users` in the stack's `teams` config key (SKYRUN_TEAMS); until then they can run no task and own no volume"
    )
    assert carol.get("/volumes").status_code == 403


def test_without_its_anchor_a_team_gets_503_and_nothing(cluster: LocalCluster, teams: dict[str, Any]) -> None:
    """A fresh server (the anchor's uid is read once per namespace and kept) after the anchor of team-b is gone."""
    cluster.api.delete("v1", "ConfigMap", ANCHOR, TEAMS[1])
    server: ServerProcess = teams["server"]
    server.stop()
    server.start()
    bob = client(server.url, token(cluster, PLATFORM, "bob"))
    answer = bob.post("/tasks/submit", json={"task_yaml": WAITS})
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith(f"the anchor ConfigMap {ANCHOR} is not in namespace {TEAMS[1]}")
    # The garbage collector deletes bob's earlier task with its anchor; the refused submission added none.
    records = "skyrun.ml-platform.dev/kind=task"
    eventually("team-b's tasks gone", lambda: cluster.api.items("v1", "ConfigMap", TEAMS[1], records) == [], 60)
    assert cluster.api.items("batch/v1", "Job", TEAMS[1], "skypilot-task=true") == []
