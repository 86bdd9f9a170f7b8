"""The per-user cap on active tasks with two launcher replicas racing: two `python -m skyrun serve` processes
against one real API server, one user's submissions fired at both at once. The cap must hold exactly (the lock
of skyrun/cap_lock.py), not "at most one over per replica"."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.engine.cluster import LocalCluster
from tests.launcher.harness import ServerProcess, client, launcher_kubeconfig, prepare_namespace, token

pytestmark = [pytest.mark.engine, pytest.mark.slow]
NS = "skyrun-race"
CAP = 3
SUBMISSIONS = 12
# Never scheduled (no node has that GPU): every accepted task stays pending, so it stays active.
WAITS = "name: waits\nresources: {accelerators: 'H100:1'}\nrun: nvidia-smi\n"


@pytest.fixture(scope="module")
def replicas(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    workdir = tmp_path_factory.mktemp("skyrun-race")
    prepare_namespace(cluster, NS)
    kubeconfig = launcher_kubeconfig(cluster, NS, workdir)
    servers = [
        ServerProcess(kubeconfig, NS, workdir / f"server-{i}.log", SKYRUN_MAX_ACTIVE_TASKS_PER_USER=str(CAP))
        for i in range(2)
    ]
    for server in servers:
        server.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
            print(f"--- {server.log.name} ---\n{server.tail(20)}", file=sys.stderr)


def test_two_replicas_racing_admit_exactly_the_cap(cluster: LocalCluster, replicas: list[ServerProcess]) -> None:
    bearer = token(cluster, NS, "alice")
    clients = [client(server.url, bearer) for server in replicas]

    def submit(i: int) -> tuple[int, Any]:
        answer = clients[i % 2].post("/tasks/submit", json={"task_yaml": WAITS})
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(max_workers=SUBMISSIONS) as pool:
        answers = list(pool.map(submit, range(SUBMISSIONS)))
    codes = Counter(code for code, _ in answers)
    assert codes == {200: CAP, 409: SUBMISSIONS - CAP}, answers
    refused = [body["detail"] for code, body in answers if code == 409]
    assert all(f"the most allowed is {CAP}" in detail for detail in refused), refused
    records = cluster.api.items("v1", "ConfigMap", NS, "skyrun.ml-platform.dev/kind=task")
    assert len(records) == CAP, "a refused submission creates nothing"
    jobs = cluster.api.items("batch/v1", "Job", NS, "skypilot-task=true")
    assert sorted(j["metadata"]["labels"]["task-id"] for j in jobs) == sorted(
        body["task_id"] for code, body in answers if code == 200
    )


def test_the_cap_frees_a_place_when_a_task_stops(cluster: LocalCluster, replicas: list[ServerProcess]) -> None:
    bearer = token(cluster, NS, "alice")
    first, second = (client(server.url, bearer) for server in replicas)
    tasks = first.get("/tasks").json()["tasks"]
    active = [t["task_id"] for t in tasks if t["status"] == "pending"]
    assert len(active) == CAP
    assert second.post("/tasks/submit", json={"task_yaml": WAITS}).status_code == 409
    assert first.post(f"/tasks/{active[0]}/stop").status_code == 200
    answer = second.post("/tasks/submit", json={"task_yaml": WAITS})
    assert answer.status_code == 200, answer.text
