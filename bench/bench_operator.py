"""The TrainingJob operator under load (issue 13): N TrainingJobs applied at once to a fresh local control plane.

The engine tier's control plane (tests/engine/cluster.py: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) with the CRD applied and the operator a real `python -m trainop` process whose kubeconfig
holds the token of a ServiceAccount bound to exactly `workloads.trainingjob.operator_role_rules()` (the harness of
tests/operator). kwok simulates the pods: they are scheduled by the real scheduler, run for --pod-seconds and
complete. Measured: per TrainingJob, apply -> phase Running and apply -> phase Succeeded (first seen by a watch);
the time from the first apply to the last Succeeded; the operator's own reconcile-time histogram
(`trainop_reconcile_duration_seconds` on its /metrics, p50/p99 interpolated within buckets as Prometheus'
histogram_quantile does); the operator process's peak RSS (VmHWM). Prints a JSON summary; with --write-doc, puts
the section "### TrainingJob operator under load (issue 13)" at the end of docs/benchmarks.md.

    ML_PLATFORM_TOOLCHAIN=$(bash tests/engine/toolchain.sh | tail -n1) \
        .venv/bin/python bench/bench_operator.py --jobs 50 --write-doc
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
from lightkube.generic_resource import GenericNamespacedResource

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
from tests.engine.cluster import LocalCluster
from tests.harness.api import Api
from tests.harness.wait import eventually
from tests.operator.harness import OperatorProcess, prepare_namespace, training_job
from workloads.trainingjob import API_VERSION, HEALTH_PATH, KIND, crd

NS = "trainop-bench"
HEADING = "### TrainingJob operator under load (issue 13)"
HISTOGRAM = "trainop_reconcile_duration_seconds"
DEFAULT_INTERVAL_S = 5.0  # the operator's RECONCILE_INTERVAL_S default (docs/operator.md)


class PhaseWatch:
    """When each TrainingJob was first seen in each phase (time.monotonic), from a watch of the namespace on a
    client of its own; the watch is opened again when the API server ends it."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.first_seen: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phase-watch", daemon=True)
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def record(self, name: str, phase: str | None, when: float) -> None:
        if not phase:
            return
        with self._lock:
            self.first_seen.setdefault(name, {}).setdefault(phase, when)

    def seen(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {name: dict(phases) for name, phases in self.first_seen.items()}

    def _run(self) -> None:
        res = self.api.resource(API_VERSION, KIND)
        assert issubclass(res, GenericNamespacedResource), "TrainingJobs are namespaced"
        while not self._stop.is_set():
            try:
                for _event, obj in self.api.client.watch(res, namespace=NS, server_timeout=30):
                    now = time.monotonic()
                    body = obj.to_dict()
                    self.record(body["metadata"]["name"], (body.get("status") or {}).get("phase"), now)
                    if self._stop.is_set():
                        return
            except Exception:  # the API server ended the stream or is stopping: open it again
                self.errors += 1
                self._stop.wait(0.2)


def histogram(metrics_text: str, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """([(upper bound, cumulative count)], sum, count) of a Prometheus histogram without labels."""
    buckets, total_sum, count = [], math.nan, math.nan
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = re.search(r'le="([^"]+)"', line)
            assert le is not None, line
            buckets.append((float(le.group(1)), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum "):
            total_sum = float(line.split()[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.split()[1])
    return sorted(buckets), total_sum, count


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the rank; the highest finite bound when
    the rank falls in the +Inf bucket."""
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound
            if cumulative == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
        lower_bound, lower_count = bound, cumulative
    return buckets[-1][0]


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a live process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmHWM"], fields["VmRSS"]


def pod_annotations(pod_seconds: float) -> dict[str, str]:
    """kwok: pods created and Ready within ~1-2 s, then Running for pod_seconds (up to +20 %) before completing
    (a jitter below the delay would replace it, so both are set)."""
    ms = int(pod_seconds * 1000)
    return {
        "pod-create.stage.kwok.x-k8s.io/delay": "1s",
        "pod-create.stage.kwok.x-k8s.io/jitter-delay": "1500ms",
        "pod-ready.stage.kwok.x-k8s.io/delay": "1s",
        "pod-ready.stage.kwok.x-k8s.io/jitter-delay": "1500ms",
        "pod-complete.stage.kwok.x-k8s.io/delay": f"{ms}ms",
        "pod-complete.stage.kwok.x-k8s.io/jitter-delay": f"{int(ms * 1.2)}ms",
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cluster = LocalCluster(toolchain_dir(), workdir / "cluster")
    began = time.monotonic()
    cluster.start()
    operator: OperatorProcess | None = None
    watch: PhaseWatch | None = None
    clients: list[Api] = []
    try:
        cluster_start_s = time.monotonic() - began
        cluster.api.apply(crd())
        eventually("the TrainingJob CRD served", lambda: cluster.api.resource(API_VERSION, KIND), 60)
        kubeconfig = prepare_namespace(cluster, NS, workdir)
        operator = OperatorProcess(
            kubeconfig,
            NS,
            workdir / "operator.log",
            MLFLOW_TRACKING_URI="",  # no MLflow: progress is not part of this benchmark
            RECONCILE_INTERVAL_S=str(args.reconcile_interval),
        )
        operator.start()
        health = f"http://127.0.0.1:{operator.health_port}{HEALTH_PATH}"
        eventually("the operator's /healthz", lambda: httpx2.get(health, timeout=5).status_code == 200, 60)
        assert operator.proc is not None
        pid = operator.proc.pid
        idle_hwm, _ = peak_rss_mib(pid)

        def new_client() -> Api:
            pki = cluster.workdir / "pki"
            api = Api(cluster.api.server, pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
            clients.append(api)
            return api

        watch = PhaseWatch(new_client())
        watch.start()
        time.sleep(1.0)  # the watch is open before the first apply

        names = [f"load-{i:03d}" for i in range(args.jobs)]
        manifests = {n: training_job(n, NS, podAnnotations=pod_annotations(args.pod_seconds)) for n in names}
        applied_at: dict[str, float] = {}
        local = threading.local()

        def apply(name: str) -> None:
            if not hasattr(local, "api"):
                local.api = new_client()
            applied_at[name] = time.monotonic()
            local.api.apply(manifests[name])

        first_apply = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.apply_threads) as pool:
            list(pool.map(apply, names))
        apply_burst_s = time.monotonic() - first_apply

        deadline = time.monotonic() + args.timeout
        while True:
            seen = watch.seen()
            done = [n for n in names if "Succeeded" in seen.get(n, {})]
            failed = [n for n in names if "Failed" in seen.get(n, {})]
            if len(done) + len(failed) == len(names):
                break
            if not operator.alive():
                raise RuntimeError(f"the operator exited:\n{operator.tail()}")
            if time.monotonic() > deadline:
                phases = {n: (cluster.api.get(API_VERSION, KIND, n, NS) or {}).get("status", {}).get("phase")
                          for n in names if n not in done}  # fmt: skip
                raise TimeoutError(f"after {args.timeout} s, {len(done)} of {len(names)} Succeeded; others: {phases}")
            time.sleep(0.5)
        seen = watch.seen()
        last_succeeded = max(seen[n]["Succeeded"] for n in done) if done else math.nan

        metrics_text = httpx2.get(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10).text
        buckets, total, count = histogram(metrics_text, HISTOGRAM)
        results = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^trainop_reconciliations_total\{result="([^"]+)"\} (\S+)$', metrics_text, re.M)
        }
        hwm, rss = peak_rss_mib(pid)
        to_running = [seen[n]["Running"] - applied_at[n] for n in names if "Running" in seen.get(n, {})]
        to_succeeded = [seen[n]["Succeeded"] - applied_at[n] for n in done]
        return {
            "trainingjobs": args.jobs,
            "workers_each": 2,
            "pods": 2 * args.jobs,
            "pod_running_s": f"{args.pod_seconds:g}-{args.pod_seconds * 1.2:g} (kwok)",
            "reconcile_interval_s": args.reconcile_interval,
            "succeeded": len(done),
            "failed": len(failed),
            "cluster_start_s": round(cluster_start_s, 1),
            "apply_threads": args.apply_threads,
            "apply_burst_s": round(apply_burst_s, 3),
            "apply_to_running_s": summary(to_running),
            "apply_to_succeeded_s": summary(to_succeeded),
            "convergence_s": round(last_succeeded - first_apply, 2),
            "reconcile_s": {
                "count": int(count),
                "p50": round(histogram_quantile(0.5, buckets), 4),
                "p99": round(histogram_quantile(0.99, buckets), 4),
                "mean": round(total / count, 4) if count else math.nan,
                "buckets": {("+Inf" if math.isinf(b) else f"{b:g}"): int(c) for b, c in buckets},
            },
            "reconciliations_by_result": {k: int(v) for k, v in sorted(results.items())},
            "operator_rss_mib": {"idle_peak": round(idle_hwm, 1), "peak": round(hwm, 1), "at_end": round(rss, 1)},
            "watch_reconnects": watch.errors,
        }
    finally:
        if watch is not None:
            watch.stop()
        if operator is not None:
            operator.stop()
        for api in clients:
            api.close()
        cluster.stop()


def doc_body(result: dict[str, Any], command: str, when: str, machine_line: str, load: tuple[str, str]) -> str:
    run_s, ok_s, rec = result["apply_to_running_s"], result["apply_to_succeeded_s"], result["reconcile_s"]
    rss = result["operator_rss_mib"]
    interval = f"{result['reconcile_interval_s']:g}"
    if result["reconcile_interval_s"] == DEFAULT_INTERVAL_S:
        interval += " (the operator's default)"

    def row(what: str, s: dict[str, Any]) -> str:
        return f"| {what} | {s['p50']} | {s['p99']} | {s['max']} | {s['count']} |"

    return f"""
Measured {when} on the project machine ({machine_line}) by `{command}`; load average (1/5/15 min)
{load[0]} before and {load[1]} after. A fresh engine-tier control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok on 127.0.0.1, started in {result["cluster_start_s"]} s), the CRD
applied, the operator a real `python -m trainop` as a ServiceAccount bound to exactly `operator_role_rules()` (the
harness of tests/operator), RECONCILE_INTERVAL_S={interval}, no
MLflow. **kwok simulates the pods**: the real scheduler places them and the real Job controller counts them, but
no container runs; each pod is Ready 2-3 s after creation and Running {result["pod_running_s"].split(" ")[0]} s.
{result["trainingjobs"]} TrainingJobs of 2 workers ({result["pods"]} pods) applied at once (server-side apply from
{result["apply_threads"]} threads, the burst took {result["apply_burst_s"]} s); times are from each apply to the
first watch event showing the phase. The reconcile histogram's mean: {rec["mean"]} s.

| figure | p50 | p99 | max | n |
| --- | --- | --- | --- | --- |
{row("apply → Running (s)", run_s)}
{row("apply → Succeeded (s)", ok_s)}
{row("one reconciliation, the operator's `trainop_reconcile_duration_seconds` histogram (s)", {**rec, "max": "-"})}

| figure | value |
| --- | --- |
| first apply → last TrainingJob Succeeded (convergence) | {result["convergence_s"]} s |
| Succeeded / Failed | {result["succeeded"]} / {result["failed"]} |
| reconciliations by result | {", ".join(f"{k} {v}" for k, v in result["reconciliations_by_result"].items())} |
| operator peak RSS (VmHWM): idle before the load / after it | {rss["idle_peak"]} / {rss["peak"]} MiB |

The reconcile percentiles are interpolated within the histogram's buckets (0.005 ... 10 s), as Prometheus'
histogram_quantile does, so they are as coarse as the buckets; they cover every reconciliation, those of watch
events and of the timer, by result as in the table. Apply → Running includes the pods' 2-3 s of
simulated start and up to one timer interval: the operator follows Jobs and pods by polling (its Role has no
watch on them).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50, help="TrainingJobs applied at once")
    parser.add_argument("--pod-seconds", type=float, default=10.0, help="how long kwok keeps each pod Running")
    parser.add_argument(
        "--reconcile-interval", type=float, default=DEFAULT_INTERVAL_S, help="the operator's RECONCILE_INTERVAL_S"
    )
    parser.add_argument("--apply-threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every TrainingJob")
    parser.add_argument("--write-doc", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    exit_on_sigterm()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        result = run(args, Path(tmp))
    load_after = load_average()
    when = utc_now()
    result["date"], result["machine"], result["load_average_before_after"] = when, machine(), [load_before, load_after]
    print(json.dumps(result, indent=2))
    if args.write_doc:
        command = f"{TOOLCHAIN_ENV} .venv/bin/python bench/bench_operator.py {shlex.join(sys.argv[1:])}"
        write_section(HEADING, doc_body(result, command.strip(), when, result["machine"], (load_before, load_after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
