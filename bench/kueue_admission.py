"""Kueue admission vs a ResourceQuota alone: N small Jobs submitted at once to the engine tier's control plane.

The engine tier's control plane (tests/engine/cluster.py) with Kueue's real manager as a process
(tests/engine/kueue.py: webhooks and visibility API registered). Each Job is shaped like one of skyrun's tasks
(Indexed, backoffLimit 0) with one pod asking for 100m CPU and 64Mi; kwok starts its pod at once and completes it
after --pod-seconds. Two ways to run at most --concurrent of them at a time, each in a fresh namespace:
- kueue: the Jobs name a LocalQueue whose ClusterQueue has --concurrent x 100m CPU; Kueue's webhook suspends them
  and Kueue unsuspends each when it admits its Workload;
- quota: plain Jobs in a namespace whose ResourceQuota allows --concurrent x 100m CPU of requests; the Job
  controller's pod creations beyond it are refused (403) and retried with the controller's backoff.
Measured per Job: submit (just before the create call) -> its pod first seen Running (a watch of the namespace's
pods); per run: first submit -> last pod Succeeded, as Jobs/s. Medians over --reps runs of each (alternating).
Prints a JSON summary; with --write-doc, puts the section HEADING at the end of docs/benchmarks.md.

    ML_PLATFORM_TOOLCHAIN=$(bash tests/engine/toolchain.sh | tail -n1) \
    ML_PLATFORM_KUEUE_TOOLCHAIN=$(bash tests/toolchain/kueue.sh | tail -n1) \
        .venv/bin/python bench/kueue_admission.py --jobs 50 --concurrent 10 --reps 3 --write-doc
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightkube.generic_resource import GenericNamespacedResource

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
from tests.engine.cluster import LocalCluster
from tests.engine.kueue import KueueManager
from tests.engine.kueue import toolchain_dir as kueue_toolchain_dir
from tests.harness.api import Api, condition
from tests.harness.wait import eventually

HEADING = "### Kueue admission vs a ResourceQuota alone"
KUEUE = "kueue.x-k8s.io/v1beta2"
CPU_PER_JOB_M = 100
RUN_TIMEOUT_S = 900


def job(name: str, namespace: str, pod_seconds: float, queue: str | None) -> dict[str, Any]:
    delay = f"{pod_seconds:g}s"
    annotations = {
        # kwok's stages (tests/engine/cluster.py): start at once, complete after pod_seconds.
        "pod-create.stage.kwok.x-k8s.io/delay": "0s", "pod-create.stage.kwok.x-k8s.io/jitter-delay": "0s",
        "pod-ready.stage.kwok.x-k8s.io/delay": "0s", "pod-ready.stage.kwok.x-k8s.io/jitter-delay": "0s",
        "pod-complete.stage.kwok.x-k8s.io/delay": delay, "pod-complete.stage.kwok.x-k8s.io/jitter-delay": delay,
    }  # fmt: skip
    resources = {"cpu": f"{CPU_PER_JOB_M}m", "memory": "64Mi"}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"kueue.x-k8s.io/queue-name": queue} if queue else {}},
        "spec": {
            "completionMode": "Indexed", "completions": 1, "parallelism": 1, "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"restartPolicy": "Never", "containers": [{
                    "name": "task", "image": "registry.invalid/task:1",
                    "resources": {"requests": resources, "limits": resources}}]},
            },
        },
    }  # fmt: skip


class PodWatch:
    """When each Job's pod was first seen Running and Succeeded (time.monotonic), from a watch of a namespace."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.running: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}
        self._api = api
        self._namespace = namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pods = self._api.resource("v1", "Pod")
        assert issubclass(pods, GenericNamespacedResource)
        while not self._stop.is_set():
            for _, pod in self._api.client.watch(pods, namespace=self._namespace, server_timeout=5):
                obj = pod.to_dict()
                job_name = obj["metadata"].get("labels", {}).get("job-name")
                phase = (obj.get("status") or {}).get("phase")
                now = time.monotonic()
                if job_name and phase in ("Running", "Succeeded"):
                    self.running.setdefault(job_name, now)
                if job_name and phase == "Succeeded":
                    self.succeeded.setdefault(job_name, now)
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()


def run_once(api: Api, mode: str, rep: int, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench-{mode}-{rep}"
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    queue = None
    if mode == "kueue":
        queue = "bench"
        api.apply({"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": queue, "namespace": namespace},
                   "spec": {"clusterQueue": "bench"}})  # fmt: skip
        eventually("LocalQueue Active", lambda: condition(api.get(KUEUE, "LocalQueue", queue, namespace),
                                                          "Active") == "True", 60)  # fmt: skip
    else:
        api.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "bench", "namespace": namespace},
                   "spec": {"hard": {"requests.cpu": f"{args.concurrent * CPU_PER_JOB_M}m"}}})  # fmt: skip
        eventually("ResourceQuota counted", lambda: (api.get("v1", "ResourceQuota", "bench", namespace) or {})
                   .get("status", {}).get("hard"), 60)  # fmt: skip
    watch = PodWatch(api, namespace)
    names = [f"task-{i:03d}" for i in range(args.jobs)]
    submitted: dict[str, float] = {}
    try:
        for name in names:
            submitted[name] = time.monotonic()
            api.create(job(name, namespace, args.pod_seconds, queue))
        eventually(f"{mode}: {args.jobs} pods Succeeded", lambda: len(watch.succeeded) == args.jobs, RUN_TIMEOUT_S)
    finally:
        watch.stop()
    to_running = [watch.running[n] - submitted[n] for n in names]
    wall = max(watch.succeeded.values()) - min(submitted.values())
    api.delete("v1", "Namespace", namespace)
    return {"to_running": summary(to_running), "wall_s": round(wall, 2), "jobs_per_s": round(args.jobs / wall, 3)}


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "p50_to_running_s": statistics.median(r["to_running"]["p50"] for r in runs),
        "p99_to_running_s": statistics.median(r["to_running"]["p99"] for r in runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "jobs_per_s": statistics.median(r["jobs_per_s"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=10, help="Jobs admitted (quota) at a time")
    parser.add_argument("--pod-seconds", type=float, default=2.0, help="how long kwok runs each pod")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--write-doc", action="store_true")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    runs: dict[str, list[dict[str, Any]]] = {"kueue": [], "quota": []}
    with (
        tempfile.TemporaryDirectory(prefix="kueue-bench-") as tmp,
        LocalCluster(toolchain_dir(), Path(tmp) / "cluster") as cluster,
        KueueManager(kueue_toolchain_dir(), cluster, Path(tmp) / "kueue"),
    ):
        api = cluster.api
        quota = {"cpu": f"{args.concurrent * CPU_PER_JOB_M}m", "memory": f"{args.concurrent * 64}Mi"}
        api.apply({"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": "default"}})
        api.apply({"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": "bench"}, "spec": {
            "namespaceSelector": {},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": "default",
                "resources": [{"name": r, "nominalQuota": q} for r, q in quota.items()]}]}]}})  # fmt: skip
        eventually("ClusterQueue Active", lambda: condition(api.get(KUEUE, "ClusterQueue", "bench"),
                                                            "Active") == "True", 60)  # fmt: skip
        for rep in range(args.reps):
            for mode in ("kueue", "quota"):
                result = run_once(api, mode, rep, args)
                print(json.dumps({"mode": mode, "rep": rep, **result}), file=sys.stderr)
                runs[mode].append(result)
    medians = {mode: median_of(r) for mode, r in runs.items()}
    out = {"jobs": args.jobs, "concurrent": args.concurrent, "pod_seconds": args.pod_seconds, "reps": args.reps,
           "median": medians, "runs": runs, "machine": machine(), "load_average": load_average()}  # fmt: skip
    print(json.dumps(out, indent=2))
    if args.write_doc:
        write_doc(out, argv if argv is not None else sys.argv[1:])
    return 0


def write_doc(out: dict[str, Any], argv: list[str]) -> None:
    k, q = out["median"]["kueue"], out["median"]["quota"]
    command = f"{TOOLCHAIN_ENV} ML_PLATFORM_KUEUE_TOOLCHAIN=$(bash tests/toolchain/kueue.sh | tail -n1) " + shlex.join(
        [".venv/bin/python", "bench/kueue_admission.py", *argv]
    )
    rows = [
        ("submit -> pod Running, p50 (s)", "p50_to_running_s"),
        ("submit -> pod Running, p99 (s)", "p99_to_running_s"),
        ("first submit -> last pod Succeeded (s)", "wall_s"),
        ("throughput (Jobs/s)", "jobs_per_s"),
    ]
    table = "\n".join(f"| {label} | {k[key]} | {q[key]} |" for label, key in rows)
    body = f"""
{out["jobs"]} Jobs (Indexed, one pod of 100m CPU each, run {out["pod_seconds"]:g} s by kwok) submitted at once to the
engine tier's control plane, at most {out["concurrent"]} running at a time: admitted by Kueue v0.17.0's real
manager (tests/engine/kueue.py: the Configuration of Kueue's Helm chart, client QPS 50 and burst 100; a LocalQueue
whose ClusterQueue has {out["concurrent"]} x 100m CPU; webhooks and visibility API registered) or limited by a
namespace ResourceQuota of {out["concurrent"]} x 100m CPU alone (the Job controller
retries the refused pod creations). Medians of {out["reps"]} runs of each, alternating; {utc_now()}; machine:
{out["machine"]}; load average after: {out["load_average"]}.

| | Kueue | ResourceQuota alone |
|---|---|---|
{table}

Command: `{command}`
"""
    write_section(HEADING, body)


if __name__ == "__main__":
    sys.exit(main())
