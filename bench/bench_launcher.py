"""The task launcher (issue 14): submit latency and `GET /tasks` latency with 1,000 tasks, on a fresh local control
plane.

The engine tier's control plane (tests/engine/cluster.py: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) with the launcher a real `python -m skyrun serve` on 127.0.0.1 as its own ServiceAccount
bound to exactly the component's rules, and a user with a real audience-bound token from the TokenRequest API (the
harness of tests/launcher). kwok simulates the tasks' pods (scheduled by the real scheduler, counted by the real Job
controller, no container runs).

1. --submissions 2-node tasks submitted one after another through `POST /tasks/submit`: latency per request.
2. Once they have all completed: `GET /tasks` --list-calls times with that many tasks.
3. The rest of --total tasks created directly from the launcher's own builders (`workloads.task.task_manifests`,
   the record ConfigMap only, finished, as a task looks once its Job's TTL has removed the Job and its pods), then
   `GET /tasks` --list-calls times again.

    ML_PLATFORM_TOOLCHAIN=$(bash tests/engine/toolchain.sh | tail -n1) \
        .venv/bin/python bench/bench_launcher.py --submissions 100 --total 1000 --write-doc
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import string
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_bench import (
    TOOLCHAIN_ENV,
    exit_on_sigterm,
    load_average,
    machine,
    summary,
    toolchain_dir,
    utc_now,
    write_section,
)
from skyrun.manifests import Launch, task_manifests
from skyrun.task_spec import parse_task
from tests.engine.cluster import LocalCluster
from tests.harness.api import Api
from tests.harness.wait import eventually
from tests.launcher.harness import (
    ServerProcess,
    client,
    launcher_kubeconfig,
    prepare_namespace,
    token,
    user_name,
)
from workloads.task import STATE_DONE, STATE_LABEL

NS = "skyrun-bench"
HEADING = "### Task launcher (issue 14)"
TASK_YAML = """\
name: bench
num_nodes: 2
resources: {cpus: "100m", memory: 128Mi}
run: echo rank $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES
"""
FINAL = {"completed", "failed", "failed_setup", "cancelled"}
# The server's settings are its defaults except these: the harness's namespace, image, per-node defaults and kwok
# delays, and a per-user cap above the number of submissions (the default, 4, would refuse the fifth).
SETTINGS = {"SKYRUN_RECONCILE_INTERVAL_S": "15", "SKYRUN_TOKEN_CACHE_S": "10"}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def timed_lists(http: httpx.Client, calls: int, expected: int) -> list[float]:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        answer = http.get("/tasks", timeout=120)
        times.append(time.perf_counter() - began)
        assert answer.status_code == 200, answer.text
        got = len(answer.json()["tasks"])
        assert got == expected, f"GET /tasks listed {got} tasks, expected {expected}"
    return times


def bulk_id(i: int) -> str:
    """Task ids of the bulk records, `z` + 7 base-36 digits: valid, distinct, and unlike the server's random ones
    only by chance."""
    digits = string.digits + string.ascii_lowercase
    out = ""
    for _ in range(7):
        i, rest = divmod(i, 36)
        out = digits[rest] + out
    return "z" + out


def finished_record(i: int, user: str, submitted: dt.datetime) -> dict[str, Any]:
    """The record of a task that completed and whose Job's TTL has passed: what the launcher's builder writes at
    submission, then what its reconcile writes at the end (final status, state label done)."""
    parsed = parse_task(yaml.safe_load(TASK_YAML))
    launch = Launch(
        task_id=bulk_id(i),
        user=user,
        namespace=NS,
        default_image="ml-platform:test",
        image_pull_policy="IfNotPresent",
        default_cpus="100m",
        default_memory="128Mi",
        submitted_at=submitted.strftime("%Y-%m-%dT%H:%M:%SZ"),
        task_yaml=TASK_YAML,
        ignored=parsed.ignored,
    )
    record = task_manifests(parsed.task, launch).record
    record["metadata"]["labels"][STATE_LABEL] = STATE_DONE
    finished = submitted + dt.timedelta(seconds=20)
    record["data"].update(
        {"status": "completed", "message": "", "finished_at": finished.strftime("%Y-%m-%dT%H:%M:%SZ")}
    )
    return record


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cluster = LocalCluster(toolchain_dir(), workdir / "cluster")
    began = time.monotonic()
    cluster.start()
    server: ServerProcess | None = None
    clients: list[Api] = []
    try:
        cluster_start_s = time.monotonic() - began
        prepare_namespace(cluster, NS)
        kubeconfig = launcher_kubeconfig(cluster, NS, workdir)
        server = ServerProcess(
            kubeconfig,
            NS,
            workdir / "server.log",
            SKYRUN_MAX_ACTIVE_TASKS_PER_USER=str(max(args.total, 4)),
            **SETTINGS,
        )
        server.start()
        assert server.proc is not None
        user = user_name(NS, "alice")
        with client(server.url, token(cluster, NS, "alice")) as http:
            assert http.get("/whoami").json()["user"] == user  # also warms the token cache and the connection

            submit_s = []
            for _ in range(args.submissions):
                t0 = time.perf_counter()
                answer = http.post("/tasks/submit", json={"task_yaml": TASK_YAML, "envs": {}})
                submit_s.append(time.perf_counter() - t0)
                assert answer.status_code == 200, answer.text

            waited = time.monotonic()

            def all_final() -> bool:
                if server is not None and server.proc is not None and server.proc.poll() is not None:
                    raise RuntimeError(f"the launcher exited:\n{server.tail()}")
                tasks = http.get("/tasks", timeout=120).json()["tasks"]
                return len(tasks) == args.submissions and all(t["status"] in FINAL for t in tasks)

            eventually(f"{args.submissions} tasks finished", all_final, args.timeout, 2.0)
            finish_wait_s = time.monotonic() - waited
            statuses: dict[str, int] = {}
            for t in http.get("/tasks", timeout=120).json()["tasks"]:
                statuses[t["status"]] = statuses.get(t["status"], 0) + 1
            list_small = timed_lists(http, args.list_calls, args.submissions)

            bulk = args.total - args.submissions
            local = threading.local()
            pki = cluster.workdir / "pki"
            oldest = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)

            def create(i: int) -> None:
                if not hasattr(local, "api"):
                    local.api = Api(cluster.api.server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
                    clients.append(local.api)
                local.api.create(finished_record(i, user, oldest + dt.timedelta(minutes=i)))

            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(create, range(bulk)))
            bulk_create_s = time.monotonic() - t0
            list_large = timed_lists(http, args.list_calls, args.total)
        return {
            "submissions": args.submissions,
            "nodes_per_task": 2,
            "submit_s": summary(submit_s, 4),
            "submissions_wall_s": round(sum(submit_s), 2),
            "wait_until_all_finished_s": round(finish_wait_s, 1),
            "statuses": statuses,
            "list_calls": args.list_calls,
            f"list_s_with_{args.submissions}_tasks": summary(list_small, 4),
            "bulk_records_created": bulk,
            "bulk_create_s": round(bulk_create_s, 1),
            f"list_s_with_{args.total}_tasks": summary(list_large, 4),
            "server_peak_rss_mib": round(peak_rss_mib(server.proc.pid), 1),
            "cluster_start_s": round(cluster_start_s, 1),
        }
    finally:
        if server is not None:
            server.stop()
        for api in clients:
            api.close()
        cluster.stop()


def doc_body(result: dict[str, Any], args: argparse.Namespace, command: str, when: str, load: tuple[str, str]) -> str:
    sub = result["submit_s"]
    small = result[f"list_s_with_{args.submissions}_tasks"]
    large = result[f"list_s_with_{args.total}_tasks"]
    statuses = ", ".join(f"{v} {k}" for k, v in sorted(result["statuses"].items()))

    def row(what: str, s: dict[str, float]) -> str:
        cells = " | ".join(f"{s[k] * 1000:.0f}" for k in ("p50", "p90", "p99", "max"))
        return f"| {what} | {cells} | {s['count']} |"

    return f"""
Measured {when} on the project machine ({result["machine"]}) by `{command}`; load average (1/5/15 min)
{load[0]} before and {load[1]} after. A fresh engine-tier control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok on 127.0.0.1), the launcher a real `python -m skyrun serve` on
127.0.0.1 as its ServiceAccount bound to exactly the component's rules, one user (alice) with a real
audience-bound token (the harness of tests/launcher). Server settings are the defaults (token cache 10 s,
reconcile every 15 s) except the harness's namespace, image, per-node defaults and kwok delays, and a per-user cap
of {max(args.total, 4)} active tasks (the default 4 would refuse the fifth submission). **kwok simulates the
pods**: the real scheduler places them and the real Job controller completes the Jobs, but no container runs.
Latencies are the client's, one HTTP/1.1 keep-alive connection, one request at a time.

| figure | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | n |
| --- | --- | --- | --- | --- | --- |
{row("`POST /tasks/submit`, a 2-node task, one after another", sub)}
{row(f"`GET /tasks` with the {args.submissions} submitted tasks (finished; Jobs and pods still there)", small)}
{row(f"`GET /tasks` with {args.total:,} tasks", large)}

The {args.submissions} submissions went through the API ({result["submissions_wall_s"]} s in all) and all ran:
{statuses}, {result["wait_until_all_finished_s"]} s after the last submission. The other
{result["bulk_records_created"]} of the {args.total} tasks were **not submitted through the API**: their record
ConfigMaps were created directly from the launcher's builder (`workloads.task.task_manifests(...).record`, with
the final status and `state=done` label its reconcile writes), as finished tasks look once their Jobs' TTL has
removed the Job and pods ({result["bulk_create_s"]} s for all, 4 threads). So the
{args.total:,}-task list reads {args.total:,} records, {args.submissions} Jobs and {2 * args.submissions} pods;
every task in it is final, so no status is derived from pods or events. The server's peak RSS (VmHWM) at the end:
{result["server_peak_rss_mib"]} MiB.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=100, help="2-node tasks submitted through the API")
    parser.add_argument("--total", type=int, default=1000, help="tasks when the second list is timed")
    parser.add_argument("--list-calls", type=int, default=20, help="timed GET /tasks calls at each size")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the submitted tasks")
    parser.add_argument("--write-doc", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    if args.total < args.submissions:
        parser.error("--total must be at least --submissions")
    exit_on_sigterm()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        result = run(args, Path(tmp))
    load_after = load_average()
    when = utc_now()
    result["date"], result["machine"], result["load_average_before_after"] = when, machine(), [load_before, load_after]
    print(json.dumps(result, indent=2))
    if args.write_doc:
        command = f"{TOOLCHAIN_ENV} .venv/bin/python bench/bench_launcher.py {shlex.join(sys.argv[1:])}"
        write_section(HEADING, doc_body(result, args, command.strip(), when, (load_before, load_after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
