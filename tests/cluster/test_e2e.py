"""End to end: `pulumi up -s dev` of the project through the real Pulumi engine (tests/engine/pulumi_engine.py)
into the real cluster. The platform's image trains with two DDP ranks (Indexed Job, gloo, rank 0 found by DNS),
registers the model in MLflow, and the inference Deployment loads it and serves completions through its Service.

Overrides of Pulumi.dev.yaml: no TLS (cert-manager's chart cannot be fetched here), 200 training steps, the
host-path storage in a world-writable directory on the node, images as imported (IfNotPresent)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pulumi import automation as auto

from tests.cluster.kube import crash_looping, diagnose, wait_or_diagnose
from tests.cluster.realcluster import RealCluster, toolchain_dir
from tests.engine.cluster import condition
from tests.engine.pulumi_engine import Engine, EngineMissing, copy_project, find_engine, stack

pytestmark = pytest.mark.cluster

TRAIN_STEPS = 200
WORKERS = 2  # Pulumi.dev.yaml
ROOT = Path(__file__).resolve().parents[2]
# The dev stack does not set it: the default of Pulumi.yaml's schema.
NAMESPACE = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]["namespace"]["default"]


@pytest.fixture(scope="module")
def pulumi_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    try:
        engine = find_engine(
            toolchain_dir("tests/engine/toolchain.sh", "ML_PLATFORM_TOOLCHAIN"), tmp_path_factory.mktemp("pulumi-home")
        )
    except EngineMissing as err:
        pytest.fail(str(err), pytrace=False)
    print(f"\ncluster tier: {engine.describe()}", file=sys.stderr)
    return engine


def interrupt_pulumi() -> None:
    """Ctrl-C to the pulumi CLI this process started (the Automation API runs it as a child): it cancels."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                comm, ppid = stat[stat.index("(") + 1 : stat.rindex(")")], int(stat.rsplit(")", 1)[1].split()[1])
                if comm == "pulumi" and ppid == os.getpid():
                    os.kill(int(entry.name), signal.SIGINT)


def diagnose_all(cluster: RealCluster) -> str:
    namespaces = [n["metadata"]["name"] for n in cluster.api.items("v1", "Namespace")]
    return "\n".join(diagnose(cluster, ns) for ns in namespaces if cluster.api.items("v1", "Pod", ns))


def no_crash_loops(cluster: RealCluster, namespace: str) -> None:
    """Fail at once, not at the timeout, when a platform container keeps dying (an OOMKill, a crash)."""
    crashing = crash_looping(cluster, namespace)
    if crashing:
        raise AssertionError(f"containers keep dying: {crashing}\n{diagnose(cluster, namespace)}")


def job_finished(cluster: RealCluster, namespace: str, name: str) -> str | None:
    no_crash_loops(cluster, namespace)
    job = cluster.api.get("batch/v1", "Job", name, namespace)
    if condition(job, "Complete") == "True":
        return "Complete"
    return "Failed" if condition(job, "Failed") == "True" else None


@pytest.mark.timeout(3600)  # the session's first use of the platform image may build it (minutes)
def test_pulumi_up_dev_trains_registers_and_serves(
    real_cluster: RealCluster, platform_image: str, pulumi_engine: Engine, tmp_path: Path
) -> None:
    storage = real_cluster.node_dir("ml-platform-storage")
    config = {
        "tlsEnabled": "false",
        "tlsInstallCertManager": "false",
        "trainMaxSteps": str(TRAIN_STEPS),
        "storageHostPath": str(storage),
        "imagePullPolicy": "IfNotPresent",
        "image": platform_image,
    }
    try:
        project = copy_project(tmp_path / "project")
        dev = stack(pulumi_engine, project, "dev", real_cluster.kubeconfig, config, {})
        log = tmp_path / "pulumi-up.log"
        start = time.monotonic()
        with log.open("w") as out, ThreadPoolExecutor(1) as pool:
            up = pool.submit(dev.up, color="never", on_output=lambda line: print(line, file=out, flush=True))
            # pulumi-kubernetes waits for Deployments and Services to become ready (up to 10 minutes each): a
            # container that keeps dying is reported now, and the up interrupted.
            crashing: list[str] = []
            while not up.done() and not crashing:
                time.sleep(2)
                crashing = crash_looping(real_cluster, None)
            if crashing:
                interrupt_pulumi()
                with contextlib.suppress(auto.CommandError):
                    up.result(timeout=120)
                raise AssertionError(
                    f"during pulumi up, containers keep dying: {crashing}\n{diagnose_all(real_cluster)}"
                )
            try:
                result = up.result()
            except auto.CommandError as err:
                raise AssertionError(f"pulumi up -s dev failed:\n{err}\n{log.read_text()[-4000:]}") from None
        print(f"\npulumi up -s dev: {result.summary.result} in {time.monotonic() - start:.0f} s", file=sys.stderr)
        outputs = {key: value.value for key, value in result.outputs.items()}
        ns, job = outputs["namespace"], outputs["jobName"]

        # Training: both ranks run to completion; rank 0 reports every logging step and its summary.
        result_state = wait_or_diagnose(
            real_cluster, ns, f"Job {job} to finish", lambda: job_finished(real_cluster, ns, job), 1800
        )
        pods = {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p
            for p in real_cluster.api.items("v1", "Pod", ns, selector=f"job-name={job}")
        }
        logs = {index: real_cluster.pod_logs(ns, pod["metadata"]["name"]) for index, pod in pods.items()}
        assert result_state == "Complete", f"{logs}\n{diagnose(real_cluster, ns)}"
        assert sorted(pods) == [str(i) for i in range(WORKERS)], sorted(pods)
        assert all(p["status"]["phase"] == "Succeeded" for p in pods.values()), {
            i: p["status"] for i, p in pods.items()
        }
        rank0 = logs["0"].splitlines()
        assert f"step {TRAIN_STEPS}/{TRAIN_STEPS}" in logs["0"], logs["0"][-3000:]
        assert sum(line.startswith("step ") for line in rank0) >= 2, logs["0"][-3000:]
        summary: dict[str, Any] = json.loads(rank0[-1])
        assert summary["step"] == TRAIN_STEPS, summary
        assert summary["world_size"] == WORKERS, summary
        assert summary["model_uri"] and summary["alias_moved"], summary
        print(f"training: {rank0[-1]}", file=sys.stderr)

        # Serving: the inference Deployment turns Available once it has loaded the model the alias points at.
        def available() -> bool:
            no_crash_loops(real_cluster, ns)
            deployment = real_cluster.api.get("apps/v1", "Deployment", "inference", ns)
            return condition(deployment, "Available") == "True"

        wait_or_diagnose(real_cluster, ns, "Deployment inference Available", available, 600)
        service = real_cluster.api.get("v1", "Service", "inference", ns)
        assert service is not None
        port = service["spec"]["ports"][0]["port"]
        for node_port in (False, True):
            forward = real_cluster.forward_service(ns, "inference", port, node_port=node_port)
            try:
                models = httpx.get(f"{forward.url}/v1/models", timeout=30).json()
                response = httpx.post(
                    f"{forward.url}/v1/completions",
                    json={"model": models["data"][0]["id"], "prompt": "The ", "max_tokens": 8, "temperature": 0},
                    timeout=60,
                )
            finally:
                forward.close()
            assert response.status_code == 200, (node_port, response.text)
            body = response.json()
            assert body["choices"][0]["text"], body
            assert body["usage"]["completion_tokens"] > 0, body
            print(f"completion via {forward.target}: {body['choices'][0]['text']!r}", file=sys.stderr)
    finally:
        # Whatever happened: the platform's pods stop, so that later tests of the session get the node's CPU.
        real_cluster.api.delete("v1", "Namespace", NAMESPACE)
