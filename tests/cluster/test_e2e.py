"""End to end: `pulumi up -s dev` of the project through the real Pulumi engine (tests/engine/pulumi_engine.py)
into the real cluster, then everything a user relies on, each checked from the cluster or from MLflow:

1. the Indexed Job's two DDP ranks train (gloo, rank 0 found by DNS); one rank SIGKILLed mid-run (pod deleted
   with grace 0) and the Job resumes from the last checkpoint to the final step;
2. the in-cluster MLflow holds the run, its metric history and a model version under the alias;
3. the inference Deployment turns Available only after that, and completions come back through its Service
   (ClusterIP and NodePort) with the openai client, and over HTTPS through Traefik with the CA that cert-manager
   (installed by the stack) issued, verified; plain http is redirected; an early renewal under load loses no
   request;
   a real Prometheus in the cluster's network, set up as a plain Prometheus (the `kubernetes-pods` job), watched
   all along: it found every part by its scrape annotations, scraped both training ranks, MLflow, inference, the
   operator and the launcher, and evaluates the rule file the stack deployed;
4. the HPA reads and scales the Deployment; a node drain is held back by the PodDisruptionBudget while the
   service keeps answering;
5. a TrainingJob applied to the operator the stack installed trains for real, with progress from MLflow;
6. a SkyPilot-style task submitted to the task launcher the stack installed runs torchrun on two pods;
7. the documented examples (examples/trainingjob.yaml with kubectl, examples/task.yaml with the skyrun CLI) run as
   written within the dev stack's ResourceQuota;
8. under a steady load of 8 clients (3 streaming): an inference setting, a new image tag and a longer training
   run are rolled out, then the previous configuration and the previous model alias, counting every request
   (docs/operations.md);
9. `pulumi destroy` with a TrainingJob and a task running: with protectData exactly the protected objects stay;
   then, after `pulumi up` brought the platform back, without it nothing is left but the data on the node.

The tests share one deployment and the states it reaches, each a module fixture that fails (never skips) when it
cannot reach its state: `deployed` (pulumi up), `training_run` (the Job finished after a rank was killed), `trained`
(it completed with a registered model), `serving` (inference Available), `completions` (two completions through the
Service). Each test asks for what it needs, so any one of them runs alone; in file order, destroy comes last.
Pulumi.dev.yaml's TLS keys stay as shipped; cert-manager's chart and images come from the cluster toolchain
(tlsCertManagerChart, tlsCertManagerImages, tlsCertManagerVersion), Traefik from kind/traefik.yaml. Overrides of
Pulumi.dev.yaml: a short run with frequent checkpoints, two inference replicas (hpaMinReplicas), 250m cpu requests
for training (the node has 2 cpus), host-path storage in a world-writable directory on the node, images as imported
(IfNotPresent)."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
import yaml
from openai import OpenAI
from pulumi import automation as auto

from infra.monitoring import RULE_FILE
from tests.cluster import images, kueue
from tests.cluster.kube import crash_looping, diagnose, wait_or_diagnose
from tests.cluster.load import Load
from tests.cluster.prometheus_pod import CONFIG_DIR as PROMETHEUS_CONFIG_DIR
from tests.cluster.prometheus_pod import PodPrometheus
from tests.cluster.realcluster import OUTSIDE_IP, RealCluster, toolchain_dir
from tests.cluster.tls import ResolvingTransport, https_client, pem_fingerprint, served_certificate
from tests.engine.pulumi_engine import Engine, EngineMissing, copy_project, find_engine, stack
from tests.harness.api import condition
from tests.harness.node import NODE_NAME
from tests.harness.wait import eventually
from tests.observability.promtools import how_to_build, missing
from tests.observability.promtools import toolchain_dir as obs_toolchain_dir

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]
T = TypeVar("T")

TRAIN_STEPS = 400
CHECKPOINT_EVERY = 50
WORKERS = 2  # Pulumi.dev.yaml
INFERENCE_REPLICAS = 2  # hpaMinReplicas: the HPA scales the Deployment (it has no replicas field) up to it
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
# The dev stack sets neither: the defaults of Pulumi.yaml's schema.
NAMESPACE = SCHEMA["namespace"]["default"]
MODEL_NAME = SCHEMA["modelName"]["default"]
INFERENCE = "app.kubernetes.io/name=inference"
DEV = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
INGRESS_HOST = DEV["ml-platform:ingressHost"]
INGRESS_NAMESPACE = SCHEMA["ingressControllerNamespace"]["default"]  # kind/traefik.yaml installs Traefik there
TRAEFIK_MANIFEST = ROOT / "kind" / "traefik.yaml"
CERT_MANAGER_VERSION = "v1.21.2"  # tests/cluster/toolchain.sh builds it
CERT_MANAGER_IMAGES = "localhost/jetstack"
CA_SECRET = "ml-platform-ca"  # infra/tls.py
NON_ROOT = "65532"  # the images' USER: cert-manager's chart and kind/traefik.yaml run them under runAsNonRoot
TIMINGS = ROOT / "build" / "cluster-timings.json"
KUEUE_IMAGE = "localhost/kueue:v0.17.0"  # tests/toolchain/kueue.sh builds it; Kueue's manifests run /manager
TEAM_NAMESPACE = f"{NAMESPACE}-default"  # the team every other user is in (E2E_TEAMS)
FAIR_USERS = {"team-a": "ann", "team-b": "ben"}
E2E_TEAMS = [
    # alice, bob, carol and dave: the task tests' users. cpu as the node allows beside the platform at rest.
    {"name": "default", "users": ["*"], "cpu": "2", "memory": "4Gi", "storage": "2Gi", "volumes": 2},
    # The fair-sharing scenario: 100m guaranteed each, up to 300m borrowing from the cohort.
    *({"name": team, "users": [f"system:serviceaccount:{NAMESPACE}:{user}"], "cpu": "100m", "maxCpu": "300m",
       "memory": "512Mi", "maxMemory": "1536Mi", "storage": "1Gi", "volumes": 1}
      for team, user in FAIR_USERS.items()),
]  # fmt: skip


def record_timing(name: str, seconds: float) -> None:
    """Seconds of one step, kept in build/cluster-timings.json for docs/benchmarks.md (never asserted on)."""
    record_value(name, round(seconds, 1))
    print(f"\ntiming {name}: {seconds:.1f} s", file=sys.stderr)


def record_value(name: str, value: Any) -> None:
    """A measured value (JSON) in build/cluster-timings.json."""
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = value
    TIMINGS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def job_pods(cluster: RealCluster, namespace: str, job: str) -> list[dict[str, Any]]:
    return list(cluster.api.items("v1", "Pod", namespace, selector=f"job-name={job}"))


def index_of(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])


def phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase"))


@dataclass
class Deployed:
    """The dev stack as `pulumi up` left it, and what the tests learn on the way."""

    stack: auto.Stack
    outputs: dict[str, Any]
    storage: Path
    log: Path
    up_started: float
    """time.monotonic() when `pulumi up` started."""

    @property
    def namespace(self) -> str:
        return str(self.outputs["namespace"])

    @property
    def job(self) -> str:
        return str(self.outputs["jobName"])


RULES_CONFIG_MAP = "ml-platform-prometheus-rules"
SCRAPED = ("inference", "mlflow", "trainop", "skyrun")
"""app.kubernetes.io/name of the long-running parts that serve metrics (training pods come and go)."""


def kubernetes_pods_job(namespace: str) -> dict[str, Any]:
    """The `kubernetes-pods` scrape job of the prometheus-community `prometheus` chart (IPv4 form): pods found
    through the API server (in-cluster, with the pod's ServiceAccount), kept by `prometheus.io/scrape`, scraped at
    `prometheus.io/port` and `path`, pod labels mapped onto the series (`job-name` becomes `job_name`). Every 2 s
    so that a short training run gets samples."""
    return {
        "job_name": "kubernetes-pods",
        "scrape_interval": "2s",
        "scrape_timeout": "2s",
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep",
             "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "action": "replace",
             "target_label": "__metrics_path__", "regex": "(.+)"},
            {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "action": "replace", "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
             "target_label": "__address__"},
            {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
            {"source_labels": ["__meta_kubernetes_namespace"], "action": "replace", "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "action": "replace", "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed|Completed",
             "action": "drop"},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def cluster_prometheus(real_cluster: RealCluster) -> Iterator[PodPrometheus]:
    """A real Prometheus (the observability toolchain's, built from Go modules) as a pod in `monitoring`, as a
    platform team's plain Prometheus runs: it discovers pods through the API server and scrapes pod IPs through
    the platform's NetworkPolicies (tests/cluster/prometheus_pod.py). Started before `pulumi up`, so it sees the
    training pods while they run. Its rule file starts empty; the test loads the one the stack deployed."""
    toolchain = obs_toolchain_dir()
    if lacks := missing(toolchain, "prometheus"):
        pytest.fail(how_to_build(toolchain, lacks), pytrace=False)
    config = {
        "global": {"evaluation_interval": "2s"},
        "rule_files": [f"{PROMETHEUS_CONFIG_DIR}/{RULE_FILE}"],
        "scrape_configs": [kubernetes_pods_job(NAMESPACE)],
    }
    server = PodPrometheus(real_cluster, toolchain / "prometheus", config)
    (server.directory / RULE_FILE).write_text("groups: []\n")
    try:
        server.start()
        server.wait_ready()
        yield server
    finally:
        print(f"\nin-cluster prometheus log (tail):\n{server.log()[-2000:]}", file=sys.stderr)
        server.stop()


def built(cluster: RealCluster, *names: str) -> list[Path]:
    """The cluster toolchain's files `names` (tests/cluster/toolchain.sh builds them); fails naming what is missing."""
    paths = [cluster.node_tools / name for name in names]
    if lacks := [p.name for p in paths if not p.exists()]:
        missing_files = ", ".join(lacks)
        pytest.fail(f"{missing_files} missing from {cluster.node_tools}: run tests/cluster/toolchain.sh", pytrace=False)
    return paths


@pytest.fixture(scope="module")
def cert_manager_config(real_cluster: RealCluster) -> dict[str, str]:
    """cert-manager's controller, webhook and cainjector, built from its Go module, imported under the names its
    chart renders for them; the stack config that installs that chart from its local copy (the stack's own
    cert-manager install: Pulumi.dev.yaml's tlsInstallCertManager)."""
    components = ("controller", "webhook", "cainjector")
    *binaries, chart = built(real_cluster, *(f"cert-manager-{c}" for c in components), "cert-manager-chart")
    for component, binary in zip(components, binaries, strict=True):
        name = f"{CERT_MANAGER_IMAGES}/cert-manager-{component}:{CERT_MANAGER_VERSION}"
        real_cluster.import_binary_image(binary, name, user=NON_ROOT)
    return {
        "tlsCertManagerChart": str(chart),
        "tlsCertManagerImages": CERT_MANAGER_IMAGES,
        "tlsCertManagerVersion": CERT_MANAGER_VERSION,
    }


@pytest.fixture(scope="module")
def kueue_config(real_cluster: RealCluster) -> dict[str, str]:
    """Kueue installed once on the cluster as docs/teams.md installs it (tests/cluster/kueue.py: its own manifests
    with the shipped Configuration, the manager built from its Go module by tests/toolchain/kueue.sh); the stack
    config that declares the teams' and the training's queues on it: every task, TrainingJob and the stack's
    training Job go through Kueue."""
    directory = toolchain_dir("tests/toolchain/kueue.sh", "ML_PLATFORM_KUEUE_TOOLCHAIN")
    binary, config_tree = directory / "kueue", directory / "kueue-config" / "source"
    if not binary.exists() or not (config_tree / "default").is_dir():
        pytest.fail(f"Kueue is not built in {directory}: run `bash tests/toolchain/kueue.sh`", pytrace=False)
    staged = real_cluster.workdir / "kueue-image" / "manager"
    staged.parent.mkdir(exist_ok=True)
    staged.write_bytes(binary.read_bytes())
    real_cluster.import_binary_image(staged, KUEUE_IMAGE, user=NON_ROOT)
    start = time.monotonic()
    kueue.install(real_cluster, config_tree, KUEUE_IMAGE)
    record_timing("Kueue installed (kubectl apply --server-side) to admitting", time.monotonic() - start)
    return {"kueue": "true", "kueueQueue": "training"}


@pytest.fixture(scope="module")
def ingress_controller(real_cluster: RealCluster) -> Iterator[str]:
    """Traefik, built from its Go module, installed from kind/traefik.yaml as a user does (only the image differs),
    Available; its namespace."""
    (binary,) = built(real_cluster, "traefik")
    name = images.binary_image_name(binary, "localhost/traefik")
    image = real_cluster.import_binary_image(binary, name, user=NON_ROOT)
    manifests = list(yaml.safe_load_all(TRAEFIK_MANIFEST.read_text()))
    for obj in manifests:
        if obj["kind"] == "Deployment":
            obj["spec"]["template"]["spec"]["containers"][0]["image"] = image
            namespace = obj["metadata"]["namespace"]
    assert namespace == INGRESS_NAMESPACE, (namespace, INGRESS_NAMESPACE)
    path = real_cluster.workdir / "traefik.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    real_cluster.kubectl("apply", "-f", str(path))

    def available() -> bool:
        no_crash_loops(real_cluster, namespace)
        return condition(real_cluster.api.get("apps/v1", "Deployment", "traefik", namespace), "Available") == "True"

    reached("Traefik Available", lambda: wait_or_diagnose(real_cluster, namespace, "Traefik Available", available, 180))
    try:
        yield namespace
    finally:
        for pod in real_cluster.api.items("v1", "Pod", namespace):
            log = real_cluster.pod_logs(namespace, pod["metadata"]["name"])
            print(f"\n{pod['metadata']['name']} log (tail):\n{log[-3000:]}", file=sys.stderr)


@pytest.fixture(scope="module")
def deployed(
    real_cluster: RealCluster,
    platform_image: str,
    services_image: str,
    pulumi_engine: Engine,
    cluster_prometheus: PodPrometheus,  # watching before anything is deployed
    cert_manager_config: dict[str, str],
    kueue_config: dict[str, str],
    ingress_controller: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("e2e")
    storage = real_cluster.node_dir("ml-platform-storage")
    config = {
        **cert_manager_config,
        **kueue_config,
        "trainMaxSteps": str(TRAIN_STEPS),
        "checkpointEvery": str(CHECKPOINT_EVERY),
        "hpaMinReplicas": str(INFERENCE_REPLICAS),
        # The node has 2 cpus: every pod of the platform must fit by its requests (limits stay as in dev).
        "trainCpuRequest": "250m",
        "storageHostPath": str(storage),
        "imagePullPolicy": "IfNotPresent",
        "image": platform_image,
        "servicesImage": services_image,
        # The fair-sharing test submits 6 tasks per user.
        "launcherMaxActiveTasksPerUser": "6",
    }
    try:
        project = copy_project(work / "project")
        # `teams` is structured config (array<object>): in the stack file, as a user writes it (docs/teams.md).
        stack_file = project / "Pulumi.dev.yaml"
        settings = yaml.safe_load(stack_file.read_text())
        settings["config"]["ml-platform:teams"] = E2E_TEAMS
        stack_file.write_text(yaml.safe_dump(settings, sort_keys=False))
        dev = stack(pulumi_engine, project, "dev", real_cluster.kubeconfig, config, {})
        log = work / "pulumi-up.log"
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
        record_timing("pulumi up -s dev (first, language host venv included)", time.monotonic() - start)
        outputs = {key: value.value for key, value in result.outputs.items()}
        yield Deployed(dev, outputs, storage, log, start)
    finally:
        # Whatever happened: the platform's pods stop, so that later tests of the session get the node's CPU.
        real_cluster.kubectl("uncordon", NODE_NAME, check=False)
        real_cluster.api.delete("v1", "Namespace", NAMESPACE)


def reached(state: str, wait: Callable[[], T]) -> T:
    """What `wait` returns once the state is reached; a wait that times out (or an assertion on the way) fails the
    test that needs the state, saying which state it was."""
    try:
        return wait()
    except AssertionError as err:
        pytest.fail(f"{state} was not reached:\n{err}", pytrace=False)


@dataclass
class TrainingRun:
    """The dev stack's training Job as it finished, after one rank was SIGKILLed mid-run."""

    checkpoint_step: int
    """rank 0's last checkpoint when the other rank was killed."""
    victim: dict[str, Any]
    """The killed pod (rank 1) as it was before the kill."""
    state: str
    """How the Job finished: Complete or Failed."""
    job: dict[str, Any]
    pods: list[dict[str, Any]]
    succeeded: dict[str, dict[str, Any]]
    """The Succeeded pods by completion index."""
    logs: dict[str, str]
    """Their logs by completion index."""


@pytest.fixture(scope="module")
def training_run(real_cluster: RealCluster, deployed: Deployed) -> TrainingRun:
    ns, job = deployed.namespace, deployed.job

    # Wait until rank 0 has written a checkpoint with plenty of the run still ahead, then kill rank 1 at once
    # (grace 0: SIGKILL, no chance to save). Its peer fails in the next collective; the Job restarts both ranks.
    def mid_run_checkpoint() -> tuple[int, dict[str, Any]] | None:
        if job_finished(real_cluster, ns, job):
            raise AssertionError(f"the Job finished before a rank could be killed:\n{diagnose(real_cluster, ns)}")
        running = {index_of(p): p for p in job_pods(real_cluster, ns, job) if phase(p) == "Running"}
        if set(running) != {"0", "1"}:
            return None
        log = real_cluster.pod_logs(ns, running["0"]["metadata"]["name"])
        steps = re.findall(r"^checkpoint \S+/step-(\d{8})$", log, re.M)
        if steps and CHECKPOINT_EVERY <= int(steps[-1]) <= TRAIN_STEPS - 4 * CHECKPOINT_EVERY:
            return int(steps[-1]), running["1"]
        return None

    checkpoint_step, victim = reached(
        "a rank killed mid-run",
        lambda: wait_or_diagnose(real_cluster, ns, "a checkpoint mid-run", mid_run_checkpoint, 900),
    )
    real_cluster.kubectl("delete", "pod", "-n", ns, victim["metadata"]["name"], "--grace-period=0", "--force")
    print(f"\nkilled {victim['metadata']['name']} after rank 0's checkpoint at step {checkpoint_step}", file=sys.stderr)

    finished = lambda: job_finished(real_cluster, ns, job)  # noqa: E731
    state = reached(
        f"the training Job {job} finished",
        lambda: wait_or_diagnose(real_cluster, ns, f"Job {job} to finish", finished, 1800),
    )
    record_timing(
        "pulumi up start to Job Complete (400 steps, one rank killed)", time.monotonic() - deployed.up_started
    )
    finished_job = real_cluster.api.get("batch/v1", "Job", job, ns)
    assert finished_job is not None, f"Job {job} gone"
    pods = job_pods(real_cluster, ns, job)
    succeeded = {index_of(p): p for p in pods if phase(p) == "Succeeded"}
    logs = {index: real_cluster.pod_logs(ns, pod["metadata"]["name"]) for index, pod in succeeded.items()}
    return TrainingRun(checkpoint_step, victim, state, finished_job, pods, succeeded, logs)


@pytest.fixture(scope="module")
def trained(real_cluster: RealCluster, deployed: Deployed, training_run: TrainingRun) -> dict[str, Any]:
    """The dev stack's training completed and registered its model: rank 0's summary (its last log line)."""
    rank0 = training_run.logs.get("0", "").splitlines()
    summary: Any = None
    with contextlib.suppress(IndexError, ValueError):
        summary = json.loads(rank0[-1])
    if not isinstance(summary, dict):
        summary = {}
    registered = summary.get("model_uri") and summary.get("alias_moved")
    if training_run.state != "Complete" or summary.get("step") != TRAIN_STEPS or not registered:
        pytest.fail(
            f"the dev stack's training did not complete: Job {training_run.state}, rank 0's summary {summary or None}"
            f"\n{diagnose(real_cluster, deployed.namespace)}",
            pytrace=False,
        )
    return summary


def test_training_survives_a_sigkilled_rank_and_resumes(
    real_cluster: RealCluster, deployed: Deployed, training_run: TrainingRun
) -> None:
    ns, job = deployed.namespace, deployed.job
    checkpoint_step, victim, state = training_run.checkpoint_step, training_run.victim, training_run.state
    pods, succeeded, logs = training_run.pods, training_run.succeeded, training_run.logs
    assert state == "Complete", f"{logs}\n{diagnose(real_cluster, ns)}"
    assert sorted(succeeded) == [str(i) for i in range(WORKERS)], [(index_of(p), phase(p)) for p in pods]
    assert succeeded["1"]["metadata"]["uid"] != victim["metadata"]["uid"]
    assert training_run.job["status"].get("failed", 0) >= 1, training_run.job["status"]

    # Rank 1 found rank 0 by its stable DNS name through the headless Service (no API access is granted): the
    # name resolved to the pod IP of the rank 0 it trained with.
    env = {e["name"]: e.get("value") for e in succeeded["1"]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"].startswith(f"{job}-0."), env
    assert succeeded["1"]["spec"]["automountServiceAccountToken"] is False
    rank0_ip = succeeded["0"]["status"]["podIP"]
    assert f"rank 1: rank 0 is {env['MASTER_ADDR']} = {rank0_ip}:" in logs["1"], logs["1"][-2000:]

    # The restarted rank 0 resumed from a checkpoint at or after the one seen before the kill, and finished.
    rank0 = logs["0"].splitlines()
    summary: dict[str, Any] = json.loads(rank0[-1])
    assert summary["step"] == TRAIN_STEPS, summary
    assert summary["world_size"] == WORKERS, summary
    assert checkpoint_step <= summary["resumed_from_step"] < TRAIN_STEPS, (checkpoint_step, summary)
    assert f"at step {summary['resumed_from_step']}" in logs["0"], logs["0"][:2000]
    assert f"step {TRAIN_STEPS}/{TRAIN_STEPS}" in logs["0"], logs["0"][-3000:]
    assert summary["model_uri"] and summary["alias_moved"], summary
    print(f"training: {rank0[-1]}", file=sys.stderr)


def test_mlflow_in_the_cluster_has_the_run_and_the_champion(
    real_cluster: RealCluster, deployed: Deployed, trained: dict[str, Any]
) -> None:
    summary = trained
    ns = deployed.namespace
    port = real_cluster.api.get("v1", "Service", "mlflow", ns)["spec"]["ports"][0]["port"]
    forward = real_cluster.forward_service(ns, "mlflow", port)
    try:
        with httpx.Client(base_url=f"{forward.url}/api/2.0/mlflow", timeout=30) as mlflow:
            version = mlflow.get("/registered-models/alias", params={"name": MODEL_NAME, "alias": "champion"})
            assert version.status_code == 200, version.text
            model_version = version.json()["model_version"]
            run = mlflow.get("/runs/get", params={"run_id": model_version["run_id"]}).json()["run"]
            history = mlflow.get(
                "/metrics/get-history", params={"run_id": model_version["run_id"], "metric_key": "train_loss"}
            ).json()["metrics"]
    finally:
        forward.close()
    assert f"models:/{MODEL_NAME}/{model_version['version']}" == summary["model_uri"], (model_version, summary)
    assert model_version["run_id"] == summary["run_id"]
    assert run["info"]["status"] == "FINISHED", run["info"]
    metrics = {m["key"]: m for m in run["data"]["metrics"]}
    assert metrics["val_loss"]["step"] == TRAIN_STEPS and metrics["val_loss"]["value"] > 0, metrics
    steps = sorted({m["step"] for m in history})
    assert steps[-1] == TRAIN_STEPS and len(steps) >= TRAIN_STEPS // 10 - 1, steps


@pytest.fixture(scope="module")
def serving(real_cluster: RealCluster, deployed: Deployed, trained: dict[str, Any]) -> int:
    """The inference Deployment Available with every replica Ready (it turns so only after training registered a
    model): the inference Service's port."""
    ns = deployed.namespace

    def available() -> bool:
        no_crash_loops(real_cluster, ns)
        deployment = real_cluster.api.get("apps/v1", "Deployment", "inference", ns)
        ready = (deployment.get("status") or {}).get("readyReplicas", 0)
        return condition(deployment, "Available") == "True" and ready == INFERENCE_REPLICAS

    reached(
        "inference serving",
        lambda: wait_or_diagnose(real_cluster, ns, "Deployment inference Available", available, 600),
    )
    return int(real_cluster.api.get("v1", "Service", "inference", ns)["spec"]["ports"][0]["port"])


@pytest.fixture(scope="module")
def completions(real_cluster: RealCluster, deployed: Deployed, serving: int) -> dict[str, str]:
    """Two completions through the inference Service, by way of the ClusterIP and of the NodePort: their texts."""
    texts = {}
    for way, node_port in (("ClusterIP", False), ("NodePort", True)):
        ask = functools.partial(complete, real_cluster, deployed.namespace, serving, node_port=node_port)
        texts[way] = reached(f"a completion via the {way}", ask)
        if not node_port:
            record_timing("pulumi up start to the first completion", time.monotonic() - deployed.up_started)
    return texts


def test_inference_turns_available_after_training_and_serves(
    real_cluster: RealCluster, deployed: Deployed, trained: dict[str, Any], completions: dict[str, str]
) -> None:
    ns = deployed.namespace
    # Ready only once a model is loaded: no inference pod turned Ready before training registered the version it
    # serves. (Not the Job's completionTime: rank 0 registers the model before its pod exits, and a replica may
    # load it before the Job controller records the Job Complete.)
    name, version = trained["model_uri"].removeprefix("models:/").split("/")
    port = real_cluster.api.get("v1", "Service", "mlflow", ns)["spec"]["ports"][0]["port"]
    forward = real_cluster.forward_service(ns, "mlflow", port)
    try:
        got = httpx.get(f"{forward.url}/api/2.0/mlflow/model-versions/get", params={"name": name, "version": version},
                        timeout=30)  # fmt: skip
    finally:
        forward.close()
    registered_ms = int(got.json()["model_version"]["creation_timestamp"])
    registered = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(registered_ms // 1000))
    for pod in real_cluster.api.items("v1", "Pod", ns, selector=INFERENCE):
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["lastTransitionTime"] >= registered, (pod["metadata"]["name"], ready, registered)

    # Both ways answered (complete() asserts a text and its tokens).
    assert sorted(completions) == ["ClusterIP", "NodePort"], completions
    for way, text in completions.items():
        print(f"completion via {way}: {text!r}", file=sys.stderr)


@pytest.mark.usefixtures("completions")  # what inference exports is scraped after it served
def test_a_prometheus_in_the_cluster_scraped_every_part_by_annotation_and_evaluates_the_rules(
    real_cluster: RealCluster, deployed: Deployed, cluster_prometheus: PodPrometheus
) -> None:
    ns, prometheus = deployed.namespace, cluster_prometheus

    def series(expr: str) -> dict[str, float]:
        """`expr`'s instant vector as {the labels that vary: value}."""
        return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
                for r in prometheus.query(expr)}  # fmt: skip

    # The long-running parts: every pod's target up now, scraped at the annotated port (MLflow answers a scrape of
    # its pod IP: the Host allow list has $(POD_IP)).
    parts = f'namespace="{ns}",app_kubernetes_io_name=~"{"|".join(SCRAPED)}"'

    def all_up() -> dict[str, float] | None:
        """Targets per part, once every part has targets and none of them is down."""
        lowest = series(f"min by (app_kubernetes_io_name) (up{{{parts}}})")
        if lowest == {f"app_kubernetes_io_name={name}": 1.0 for name in SCRAPED}:
            return series(f"count by (app_kubernetes_io_name) (up{{{parts}}})")
        return None

    targets = wait_or_diagnose(real_cluster, ns, f"targets of {', '.join(SCRAPED)} up", all_up, 120)
    print(f"\nscrape targets up, by part: {targets}", file=sys.stderr)
    assert targets["app_kubernetes_io_name=inference"] == INFERENCE_REPLICAS, targets

    # Training: both ranks were scraped while they ran, labelled with their Job (what the stall alert joins on).
    job = deployed.job
    steps = series(f'max by (job_name, rank) (max_over_time(trainer_step{{namespace="{ns}"}}[1h]))')
    assert set(steps) == {f"job_name={job},rank={rank}" for rank in range(WORKERS)}, steps
    assert all(0 < step <= TRAIN_STEPS for step in steps.values()), steps
    world = series(f'max(max_over_time(trainer_world_size{{namespace="{ns}",job_name="{job}"}}[1h]))')
    assert world == {"": WORKERS}, world
    assert series(f'max(max_over_time(up{{namespace="{ns}",app_kubernetes_io_name="trainer"}}[1h]))') == {"": 1.0}

    # What each part exports arrived: MLflow's requests (the training runs logged to it), the two `completions`
    # (on either replica), the operator's gauge and the launcher's request counter.
    assert series(f'sum(mlflow_http_request_total{{namespace="{ns}"}}) > 0'), "no MLflow requests scraped"
    completions = f'sum(inference_requests_total{{namespace="{ns}",route="/v1/completions",status="200"}}) >= 2'
    wait_or_diagnose(real_cluster, ns, "the 2 completions scraped", lambda: series(completions), 30)
    for prefix in ("trainop", "skyrun"):
        assert series(f'count({{namespace="{ns}",__name__=~"{prefix}_.+"}})'), f"no {prefix}_* series scraped"

    # The rule file the stack deployed (its ConfigMap, as a plain Prometheus would mount it) loads, and every
    # rule evaluates against the real series without an error.
    config_map = real_cluster.api.get("v1", "ConfigMap", RULES_CONFIG_MAP, ns)
    assert config_map is not None, f"no ConfigMap {RULES_CONFIG_MAP}"
    (prometheus.directory / RULE_FILE).write_text(config_map["data"][RULE_FILE])
    reload = httpx.post(f"{prometheus.url}/-/reload", timeout=30)
    assert reload.status_code == 200, (reload.status_code, reload.text, prometheus.log())
    expected = {g["name"]: len(g["rules"]) for g in yaml.safe_load(config_map["data"][RULE_FILE])["groups"]}

    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        loaded = {g["name"]: len(g["rules"]) for g in groups}
        if loaded == expected and all(r.get("lastEvaluation", "").startswith("20") for r in rules):
            return rules
        return None

    rules = wait_or_diagnose(real_cluster, ns, "the deployed rules evaluated", evaluated, 60)
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert "TrainingLossNaN" not in firing and "PodCrashLooping" not in firing, firing


def complete(cluster: RealCluster, ns: str, port: int, *, node_port: bool = False) -> str:
    """A completion through the inference Service with the official openai client; its text."""
    forward = cluster.forward_service(ns, "inference", port, node_port=node_port)
    try:
        client = OpenAI(base_url=f"{forward.url}/v1", api_key="unused", max_retries=0, timeout=60)
        model = client.models.list().data[0].id
        response = client.completions.create(model=model, prompt="The ", max_tokens=8, temperature=0)
    finally:
        forward.close()
    assert response.choices[0].text, response
    assert response.usage is not None and response.usage.completion_tokens > 0, response
    return response.choices[0].text


@dataclass
class Https:
    """The dev stack's Ingress as clients reach it: through Traefik's Service, with the platform CA's certificate."""

    https_port: int
    """127.0.0.1 port forwarded to Traefik's https (the Service's 443)."""
    http_port: int
    """127.0.0.1 port forwarded to Traefik's plain http (80)."""
    ca_pem: str
    """The CA, taken from the cluster as docs/tls.md says (Secret ml-platform-ca, key ca.crt)."""

    def client(self, **kwargs: Any) -> httpx2.Client:
        return https_client(INGRESS_HOST, self.https_port, self.ca_pem, **kwargs)


@pytest.fixture(scope="module")
def https(real_cluster: RealCluster, deployed: Deployed, serving: int, ingress_controller: str) -> Iterator[Https]:
    ns = deployed.namespace
    # `pulumi up` returned, so it saw the serving Certificate Ready (infra/tls.py AWAIT_READY): issued by
    # cert-manager from the CA Issuer, the CA from the self-signed bootstrap Issuer.
    certificate = real_cluster.api.get("cert-manager.io/v1", "Certificate", "inference", ns)
    assert certificate is not None and condition(certificate, "Ready") == "True", certificate
    ready = next(c for c in certificate["status"]["conditions"] if c["type"] == "Ready")
    issued = time.mktime(time.strptime(ready["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ"))
    created = time.mktime(time.strptime(certificate["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    record_timing("Certificate inference created to Ready (cert-manager, CA Issuer)", issued - created)
    secret = real_cluster.api.get("v1", "Secret", CA_SECRET, ns)
    assert secret is not None, f"no Secret {CA_SECRET} in {ns}"
    ca_pem = base64.b64decode(secret["data"]["ca.crt"]).decode()
    https_forward = real_cluster.forward_service(ingress_controller, "traefik", 443)
    http_forward = real_cluster.forward_service(ingress_controller, "traefik", 80)
    try:
        yield Https(https_forward.port, http_forward.port, ca_pem)
    finally:
        https_forward.close()
        http_forward.close()


def test_openai_completions_over_https_through_the_ingress_controller_verify_the_platform_ca(https: Https) -> None:
    with https.client(timeout=60) as http:
        client = OpenAI(base_url=f"https://{INGRESS_HOST}/v1", api_key="unused", http_client=http, max_retries=0)
        model = client.models.list().data[0].id
        response = client.completions.create(model=model, prompt="The ", max_tokens=8, temperature=0)
    assert response.choices[0].text, response
    assert response.usage is not None and response.usage.completion_tokens > 0, response

    # Verification is on: the same request trusting the system's CAs (not the platform's) is refused.
    untrusted = httpx2.Client(transport=ResolvingTransport(INGRESS_HOST, https.https_port))
    with untrusted, pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.get(f"https://{INGRESS_HOST}/v1/models")

    # Plain HTTP is answered with a permanent redirect to https on 443 (kind/traefik.yaml), never with the API:
    # 301 for GET, 308 (the client repeats the method and body) for POST.
    plain = f"http://127.0.0.1:{https.http_port}"
    get = httpx.get(f"{plain}/v1/models?x=1", headers={"Host": INGRESS_HOST}, timeout=30)
    assert (get.status_code, get.headers.get("location")) == (301, f"https://{INGRESS_HOST}/v1/models?x=1"), get.text
    post = httpx.post(f"{plain}/v1/completions", headers={"Host": INGRESS_HOST}, json={"prompt": "a"}, timeout=30)
    assert (post.status_code, post.headers.get("location")) == (308, f"https://{INGRESS_HOST}/v1/completions")


def test_a_certificate_renewed_early_keeps_serving_https_without_a_failed_request(
    real_cluster: RealCluster, deployed: Deployed, https: Https
) -> None:
    ns = deployed.namespace
    first = served_certificate(INGRESS_HOST, https.https_port, https.ca_pem)
    with https.client(timeout=60) as http:
        model = http.get(f"https://{INGRESS_HOST}/v1/models").json()["data"][0]["id"]
    # The shortest life cert-manager allows (1 h), renewed 20 s after each issuance: renewals every ~20 s. The
    # certificate in place (90 days) is renewed at once, as `cmctl renew` does it (the Issuing condition); from then
    # on cert-manager renews by itself.
    short = {"spec": {"duration": "1h", "renewBefore": "59m40s"}}
    restore = {"spec": {"duration": None, "renewBefore": None}}
    load = Load(f"https://{INGRESS_HOST}", model, clients=4, client=https.client).start()
    seen = [first]
    try:
        real_cluster.kubectl("patch", "certificate", "inference", "-n", ns, "--type=merge", "-p", json.dumps(short))
        certificate = real_cluster.api.get("cert-manager.io/v1", "Certificate", "inference", ns) or {}
        issuing = {"type": "Issuing", "status": "True", "reason": "ManuallyTriggered", "message": "renewal for a test",
                   "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        conditions = [*certificate["status"]["conditions"], issuing]
        real_cluster.kubectl("patch", "certificate", "inference", "-n", ns, "--subresource=status", "--type=merge",
                             "-p", json.dumps({"status": {"conditions": conditions}}))  # fmt: skip

        def renewed_twice() -> bool:
            # What Traefik serves (a new TLS handshake) is the Secret's current certificate, and changed twice.
            served = served_certificate(INGRESS_HOST, https.https_port, https.ca_pem)
            if served != seen[-1]:
                seen.append(served)
            secret = real_cluster.api.get("v1", "Secret", "inference-tls", ns) or {"data": {}}
            current = pem_fingerprint(base64.b64decode(secret["data"].get("tls.crt", "")).decode())
            return len(seen) >= 3 and served == current

        eventually("two renewals served by Traefik", renewed_twice, 180, interval_s=1)
    finally:
        phase = load.stop()
        real_cluster.kubectl("patch", "certificate", "inference", "-n", ns, "--type=merge", "-p", json.dumps(restore))
    print(f"\nrenewals: {len(seen) - 1} certificates after the first; {phase.summary()}", file=sys.stderr)
    record_value("HTTPS load during two certificate renewals", phase.summary())
    assert phase.served > 0, phase.summary()
    assert phase.failed == 0, phase.summary()


def test_hpa_scales_the_deployment_and_a_drain_respects_the_pdb(
    real_cluster: RealCluster, deployed: Deployed, serving: int
) -> None:
    port = serving
    ns = deployed.namespace

    # The HPA owns the replica count: the Deployment declares none (1 by default), the HPA read its scale
    # subresource and set it to minReplicas.
    hpa = real_cluster.api.get("autoscaling/v2", "HorizontalPodAutoscaler", "inference", ns)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert hpa["status"]["currentReplicas"] == INFERENCE_REPLICAS, hpa["status"]
    assert condition(hpa, "AbleToScale") == "True", hpa["status"]
    deployment = real_cluster.api.get("apps/v1", "Deployment", "inference", ns)
    assert deployment["spec"]["replicas"] == INFERENCE_REPLICAS
    assert any(f.get("subresource") == "scale" for f in deployment["metadata"]["managedFields"]), [
        (f["manager"], f.get("subresource")) for f in deployment["metadata"]["managedFields"]
    ]

    # Drain the node of its inference pods: the PDB (maxUnavailable 1) lets one go; its replacement cannot be
    # scheduled on the cordoned node, so the second eviction is refused until the drain gives up.
    pdb = real_cluster.api.get("policy/v1", "PodDisruptionBudget", "inference", ns)
    assert pdb["status"]["disruptionsAllowed"] == 1, pdb["status"]
    before = {p["metadata"]["uid"] for p in real_cluster.api.items("v1", "Pod", ns, selector=INFERENCE)}
    try:
        drain = real_cluster.kubectl(
            "drain", NODE_NAME, f"--pod-selector={INFERENCE}", "--ignore-daemonsets", "--delete-emptydir-data",
            "--timeout=40s", timeout=120, check=False,
        )  # fmt: skip
        after = real_cluster.api.items("v1", "Pod", ns, selector=INFERENCE)
        kept = [p for p in after if p["metadata"]["uid"] in before and not p["metadata"].get("deletionTimestamp")]
        assert drain.returncode != 0, drain.stdout + drain.stderr
        assert "disruption budget" in drain.stdout + drain.stderr, drain.stdout + drain.stderr
        assert len(kept) == INFERENCE_REPLICAS - 1, [(p["metadata"]["name"], phase(p)) for p in after]
        assert condition(kept[0], "Ready") == "True", kept[0]["status"]
        # One pod still serves while the node is drained.
        complete(real_cluster, ns, port)
    finally:
        real_cluster.kubectl("uncordon", NODE_NAME)

    def all_ready() -> bool:
        deployment = real_cluster.api.get("apps/v1", "Deployment", "inference", ns)
        return (deployment.get("status") or {}).get("readyReplicas", 0) == INFERENCE_REPLICAS

    wait_or_diagnose(real_cluster, ns, "both inference replicas Ready after uncordon", all_ready, 600)


@pytest.mark.usefixtures("trained")  # after the stack's own training: the node has 2 cpus
def test_a_trainingjob_trains_for_real_and_reports_progress_from_mlflow(
    real_cluster: RealCluster, deployed: Deployed
) -> None:
    """The operator the stack installed turns a TrainingJob into a real run: owned children, two DDP pods, a model
    version, and a status whose progress comes from the in-cluster MLflow (docs/operator.md)."""
    ns, name, steps = deployed.namespace, "e2e-trainingjob", 60
    resource = {
        "apiVersion": "ml-platform.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "workers": WORKERS,
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            "train": {
                "model": {"block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64},
                "train": {"batch_size": 12, "max_steps": steps, "eval_every": 30, "eval_iters": 5, "log_every": 10},
                "checkpoint": {"every": 30},
            },
            "tracking": {"experiment": "e2e-trainingjobs", "modelName": "tiny-gpt-trainingjob", "alias": "champion"},
            "maxRestarts": 1,
        },
    }
    start = time.monotonic()
    created = real_cluster.api.create(resource)

    def finished() -> dict[str, Any] | None:
        no_crash_loops(real_cluster, ns)
        obj = real_cluster.api.get("ml-platform.dev/v1alpha1", "TrainingJob", name, ns)
        status = (obj or {}).get("status") or {}
        if status.get("phase") == "Failed":
            raise AssertionError(f"TrainingJob failed: {status}\n{diagnose(real_cluster, ns)}")
        done = status.get("phase") == "Succeeded" and (status.get("progress") or {}).get("step") == steps
        return obj if done and status.get("modelVersion") else None

    obj = wait_or_diagnose(real_cluster, ns, f"TrainingJob {name} Succeeded with progress", finished, 900)
    record_timing("TrainingJob apply to Succeeded (60 steps, 2 workers)", time.monotonic() - start)
    status = obj["status"]
    assert status["restarts"] == 0 and status["preemptions"] == 0, status
    assert status["progress"]["maxSteps"] == steps and status["progress"]["percent"] == 100, status
    assert status["progress"]["valLoss"] > 0 and status["progress"]["trainLoss"] > 0, status
    assert status["latestCheckpoint"]["step"] == steps, status
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in status["conditions"]}.get("Succeeded") == "True", status["conditions"]

    # Its children are owned by it, and its pods really ran both ranks.
    job = real_cluster.api.get("batch/v1", "Job", status["jobName"], ns)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner.get("controller")) == ("TrainingJob", created["metadata"]["uid"], True)
    assert condition(job, "Complete") == "True"
    pods = job_pods(real_cluster, ns, status["jobName"])
    assert sorted(index_of(p) for p in pods if phase(p) == "Succeeded") == ["0", "1"]

    # The in-cluster MLflow has the run the status names, tagged with the resource's uid, and the version.
    port = real_cluster.api.get("v1", "Service", "mlflow", ns)["spec"]["ports"][0]["port"]
    forward = real_cluster.forward_service(ns, "mlflow", port)
    try:
        with httpx.Client(base_url=f"{forward.url}/api/2.0/mlflow", timeout=30) as mlflow:
            run = mlflow.get("/runs/get", params={"run_id": status["mlflowRunId"]}).json()["run"]
            alias = mlflow.get(
                "/registered-models/alias", params={"name": "tiny-gpt-trainingjob", "alias": "champion"}
            ).json()["model_version"]
    finally:
        forward.close()
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["ml-platform.dev/trainingjob-uid"] == created["metadata"]["uid"], tags
    assert str(alias["version"]) == str(status["modelVersion"]) and alias["run_id"] == status["mlflowRunId"]

    # kubectl's view: the printer columns.
    table = real_cluster.kubectl("get", "trainingjobs", "-n", ns, name).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "REASON", "QUEUE", "POSITION", "WORKERS", "PROGRESS", "VAL", "LOSS",
                              "RESTARTS", "AGE"], table  # fmt: skip
    # It named no queue: the stack's training queue (kueueQueue) is the CRD's default with Kueue; admitted, so no
    # position.
    assert row.split()[:6] == [name, "Succeeded", "Completed", "training", str(WORKERS), "100"], table

    # Kueue admitted its Job: a Workload owned by it.
    owners = [ref["name"] for w in real_cluster.api.items("kueue.x-k8s.io/v1beta2", "Workload", ns)
              for ref in w["metadata"].get("ownerReferences") or []]  # fmt: skip
    assert status["jobName"] in owners, owners

    # Deleting it deletes its children (garbage collection through the owner references).
    real_cluster.api.delete("ml-platform.dev/v1alpha1", "TrainingJob", name, ns)
    wait_or_diagnose(
        real_cluster, ns, "the TrainingJob's Job garbage-collected",
        lambda: real_cluster.api.get("batch/v1", "Job", status["jobName"], ns) is None, 120,
    )  # fmt: skip


PREEMPT_QUEUE = "e2e-preempt"
PREEMPT_STEPS = 800  # ~10 steps/s on the node: the run is still training when the preemptor arrives


def preemption_queue(ns: str) -> list[dict[str, Any]]:
    """A test-sized queue for a preemption on a 2-core node: a ClusterQueue (no cohort, nothing to borrow) with room
    for 600m, its LocalQueue in the platform namespace, and a low and a high PriorityClass. The stack's training queue
    has the namespace's quota, more than the node could ever run at once; Kueue preempts on quota, not on nodes."""
    return [
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "e2e-low"}, "value": 100},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "e2e-high"},
         "value": 1000},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": f"{ns}-{PREEMPT_QUEUE}"},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                      {"name": f"{ns}-cpu", "resources": [{"name": "cpu", "nominalQuota": "600m"},
                                                          {"name": "memory", "nominalQuota": "4Gi"}]}]}],
                  "preemption": {"withinClusterQueue": "LowerPriority"}}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
         "metadata": {"name": PREEMPT_QUEUE, "namespace": ns}, "spec": {"clusterQueue": f"{ns}-{PREEMPT_QUEUE}"}},
    ]  # fmt: skip


def preemptor_job(ns: str, image: str) -> dict[str, Any]:
    """A higher-priority Job that needs 250m of the 600m queue for 15 s, under the namespace's restricted policy."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "e2e-preemptor", "namespace": ns, "labels": {"kueue.x-k8s.io/queue-name": PREEMPT_QUEUE}},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "priorityClassName": "e2e-high", "restartPolicy": "Never", "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "hold", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", "import time; time.sleep(15)"],
                "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                              "limits": {"cpu": "250m", "memory": "256Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
        }}},
    }  # fmt: skip


@pytest.mark.usefixtures("trained")  # after the stack's own training: the node has 2 cpus
def test_a_trainingjob_preempted_by_kueue_resumes_from_its_checkpoint(
    real_cluster: RealCluster, deployed: Deployed, platform_image: str
) -> None:
    """docs/teams.md's preemption on the real cluster: a low-priority TrainingJob runs in a queue with room for
    600m; a high-priority Job that needs 250m more arrives, and Kueue evicts the run (withinClusterQueue:
    LowerPriority). The operator counts one preemption and no restart; when the preemptor is done, Kueue admits the
    same Job again and the trainer resumes at or after the newest checkpoint it had written before the eviction."""
    ns, name = deployed.namespace, "e2e-preempted"
    queue_objects = preemption_queue(ns)
    for obj in queue_objects:
        real_cluster.api.apply(obj)
    run = {
        "apiVersion": "ml-platform.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "workers": WORKERS, "queueName": PREEMPT_QUEUE, "priorityClassName": "e2e-low",
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            "train": {"model": {"block_size": 128, "n_layer": 2, "n_head": 2, "n_embd": 128},
                      "train": {"batch_size": 16, "max_steps": PREEMPT_STEPS, "eval_every": 0, "log_every": 10},
                      "checkpoint": {"every": 25}},
            "tracking": {"experiment": "e2e-preempt", "modelName": "tiny-gpt-preempt"},
        },
    }  # fmt: skip

    def status() -> dict[str, Any]:
        no_crash_loops(real_cluster, ns)
        obj = real_cluster.api.get("ml-platform.dev/v1alpha1", "TrainingJob", name, ns) or {}
        found = dict(obj.get("status") or {})
        if found.get("phase") == "Failed":
            raise AssertionError(f"TrainingJob failed: {found}\n{diagnose(real_cluster, ns)}")
        return found

    try:
        real_cluster.api.create(run)
        running = wait_or_diagnose(real_cluster, ns, f"{name} running with a checkpoint",
                                   lambda: (s := status()).get("phase") == "Running"
                                   and (s.get("latestCheckpoint") or {}).get("step", 0) >= 25 and s, 600)  # fmt: skip
        assert (running.get("progress") or {}).get("step", 0) < PREEMPT_STEPS, f"done before the preemption: {running}"
        real_cluster.api.create(preemptor_job(ns, platform_image))
        start = time.monotonic()
        evicted = wait_or_diagnose(real_cluster, ns, f"{name} preempted", lambda: status().get("preemptions") == 1
                                   and status(), 180)  # fmt: skip
        record_timing("Kueue preemption: high-priority Job created to the TrainingJob counted preempted",
                      time.monotonic() - start)  # fmt: skip
        assert (evicted["restarts"], evicted["attempt"]) == (0, 0), evicted
        job = real_cluster.api.get("batch/v1", "Job", evicted["jobName"], ns)
        assert job["spec"]["suspend"] is True, "Kueue suspended the run's own Job"
        # Every checkpoint the run wrote before it was evicted (its SIGTERM grace included) is in its MLflow run.
        before = (status().get("latestCheckpoint") or {}).get("step", 0)
        assert before >= 25, evicted

        done = wait_or_diagnose(real_cluster, ns, f"{name} Succeeded after the preemptor finished",
                                lambda: (s := status()).get("phase") == "Succeeded" and s, 600)  # fmt: skip
        record_timing("Kueue preemption: eviction to the resumed TrainingJob Succeeded", time.monotonic() - start)
        assert (done["preemptions"], done["restarts"], done["attempt"]) == (1, 0, 0), done
        assert done["jobName"] == evicted["jobName"], "the same Job resumed, no new attempt"
        summary = rank0_summary(real_cluster, ns, done["jobName"])
        assert summary["step"] == PREEMPT_STEPS and summary["resumed_from_step"] >= before, (summary, before)
        preemptor = real_cluster.api.get("batch/v1", "Job", "e2e-preemptor", ns)
        assert condition(preemptor, "Complete") == "True", preemptor.get("status")
        record_value("Kueue preemption: checkpoint before the eviction, step resumed from",
                     [before, summary["resumed_from_step"]])  # fmt: skip
    finally:
        real_cluster.api.delete("ml-platform.dev/v1alpha1", "TrainingJob", name, ns)
        real_cluster.api.delete("batch/v1", "Job", "e2e-preemptor", ns)
        eventually("the preemption test's Jobs gone", lambda: not [
            j for j in real_cluster.api.items("batch/v1", "Job", ns)
            if j["metadata"]["name"] == "e2e-preemptor" or j["metadata"]["name"].startswith(name)], 120)  # fmt: skip
        for obj in reversed(queue_objects):
            meta = obj["metadata"]
            real_cluster.api.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))


MIRROR_TOKEN = "mirror-index-7f3a"
TORCHRUN_TASK = f"""
name: torchrun-e2e
num_nodes: 2
resources: {{cpus: "250m", memory: "1Gi"}}
setup: |
  echo "mirror says $(python3 -c "import urllib.request as u
  print(u.urlopen('http://{OUTSIDE_IP}/simple/index.txt', timeout=30).read().decode())")"
run: |
  cat > /tmp/train.yaml <<'EOF'
  model: {{block_size: 32, n_layer: 1, n_head: 2, n_embd: 32}}
  train: {{batch_size: 8, max_steps: 20, eval_every: 0, eval_iters: 2, log_every: 10, device: cpu}}
  checkpoint: {{dir: /tmp/checkpoints, every: 0}}
  distributed: {{backend: gloo}}
  EOF
  echo "node $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, rank 0 at $MASTER_ADDR, nodes: $(echo $SKYPILOT_NODE_IPS)"
  torchrun --nnodes "$NUM_NODES" --node_rank "$NODE_RANK" --nproc_per_node 1 \\
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m trainer train --config /tmp/train.yaml
"""


def test_a_skypilot_task_runs_torchrun_on_two_nodes(
    real_cluster: RealCluster, deployed: Deployed, tmp_path: Path
) -> None:
    """The task launcher the stack installed (docs/launcher.md): a user with a real audience-bound token submits a
    2-node task YAML; both pods fetch from a package mirror outside the cluster in `setup` (taskEgressCidrs and
    taskEgressPorts' defaults, through the NetworkPolicies) and run torchrun with the SKYPILOT_* variables and the
    trainer, for real."""
    ns = deployed.namespace
    (tmp_path / "simple").mkdir()
    (tmp_path / "simple" / "index.txt").write_text(MIRROR_TOKEN)
    mirror = subprocess.Popen(
        [*real_cluster.outside_host(), sys.executable, "-m", "http.server", "80", "--bind", OUTSIDE_IP,
         "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        eventually("the mirror outside the cluster listening", lambda: real_cluster.outside_listening(80), 60)
        run_the_task(real_cluster, ns)
    finally:
        mirror.kill()
        mirror.wait(10)


def run_the_task(real_cluster: RealCluster, ns: str) -> None:
    real_cluster.api.create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "alice", "namespace": ns}}
    )
    bearer = real_cluster.kubectl("create", "token", "alice", "-n", ns, "--audience", "skyrun").stdout.strip()
    port = real_cluster.api.get("v1", "Service", "skyrun", ns)["spec"]["ports"][0]["port"]
    forward = real_cluster.forward_service(ns, "skyrun", port)
    try:
        with httpx.Client(base_url=forward.url, headers={"Authorization": f"Bearer {bearer}"}, timeout=30) as api:
            assert api.get("/tasks").status_code == 200
            start = time.monotonic()
            submitted = api.post("/tasks/submit", json={"task_yaml": TORCHRUN_TASK})
            assert submitted.status_code == 200, submitted.text
            task_id = submitted.json()["task_id"]

            def finished() -> dict[str, Any] | None:
                info = api.get(f"/tasks/{task_id}").json()
                return info if info["status"] in ("completed", "failed", "failed_setup", "cancelled") else None

            info = wait_or_diagnose(real_cluster, TEAM_NAMESPACE, f"task {task_id} to finish", finished, 600)
            record_timing("skyrun 2-node torchrun task, submit to completed", time.monotonic() - start)
            with api.stream("GET", f"/tasks/{task_id}/logs") as stream:
                logs = "".join(stream.iter_text())
            assert info["status"] == "completed", f"{info}\n{logs[-3000:]}\n{diagnose(real_cluster, ns)}"
            # Nobody else sees it: a second user's token gets 404 for it.
            real_cluster.api.create(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bob", "namespace": ns}}
            )
            bob = real_cluster.kubectl("create", "token", "bob", "-n", ns, "--audience", "skyrun").stdout.strip()
            other = api.get(f"/tasks/{task_id}", headers={"Authorization": f"Bearer {bob}"})
            assert other.status_code == 404, other.text
    finally:
        forward.close()
    for node in (0, 1):
        assert f"node-{node} | mirror says {MIRROR_TOKEN}" in logs, logs[-3000:]
        assert f"node-{node} | node {node} of 2, rank 0 at " in logs, logs[-3000:]
    summary = next(json.loads(line.split(" | ", 1)[1]) for line in logs.splitlines() if line.startswith("node-0 | {"))
    assert summary["step"] == 20 and summary["world_size"] == 2, summary


FAIR_TASK = """\
name: fair-{i}
num_nodes: 1
resources: {{cpus: 100m, memory: 128Mi}}
run: sleep 15
"""
TASKS_PER_USER = 6


def user_token(cluster: RealCluster, user: str) -> str:
    if cluster.api.get("v1", "ServiceAccount", user, NAMESPACE) is None:
        cluster.kubectl("create", "serviceaccount", user, "-n", NAMESPACE)
    return cluster.kubectl("create", "token", user, "-n", NAMESPACE, "--audience", "skyrun").stdout.strip()


def evictions(workload: dict[str, Any]) -> int:
    stats = (workload.get("status") or {}).get("schedulingStats") or {}
    return sum(int(e.get("count", 0)) for e in stats.get("evictions") or [])


@pytest.mark.usefixtures("trained")  # after the stack's own training: the node has 2 cpus
def test_two_teams_share_the_cluster_through_kueue_fairly_and_see_why_they_wait(
    real_cluster: RealCluster, deployed: Deployed
) -> None:
    """docs/teams.md on the real cluster with the real Kueue as documented: ann (team-a) submits 6 short tasks,
    then ben (team-b) 6. Each team is guaranteed 100m and may borrow up to 300m from the cohort, so ann's queue cannot
    take the cluster: ben has tasks running while ann still has tasks waiting, and a waiting task shows its queue and
    Kueue's reason. Every task completes, each in its team's namespace, and no Workload is evicted more than once."""
    ns = deployed.namespace
    tokens = {team: user_token(real_cluster, user) for team, user in FAIR_USERS.items()}
    port = real_cluster.api.get("v1", "Service", "skyrun", ns)["spec"]["ports"][0]["port"]
    forward = real_cluster.forward_service(ns, "skyrun", port)
    ids: dict[str, list[str]] = {}
    try:
        clients = {team: httpx.Client(base_url=forward.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                   for team, token in tokens.items()}  # fmt: skip
        start = time.monotonic()
        for team in FAIR_USERS:  # team-a's user first, all six, then team-b's
            ids[team] = []
            for i in range(TASKS_PER_USER):
                submitted = clients[team].post("/tasks/submit", json={"task_yaml": FAIR_TASK.format(i=i)})
                assert submitted.status_code == 200, submitted.text
                ids[team].append(submitted.json()["task_id"])

        def statuses(team: str) -> dict[str, dict[str, Any]]:
            infos = clients[team].get("/tasks").json()["tasks"]
            return {t["task_id"]: t for t in infos if t["task_id"] in ids[team]}

        def both_running_while_a_waits() -> tuple[dict[str, Any], dict[str, Any]] | None:
            a, b = statuses("team-a"), statuses("team-b")
            waiting = [t for t in a.values() if t["status"] == "pending"]
            if waiting and any(t["status"] == "running" for t in b.values()):
                return waiting[0], b
            return None

        waiting, _ = wait_or_diagnose(real_cluster, f"{NAMESPACE}-team-b", "team-b running while team-a waits",
                                      both_running_while_a_waits, 240)  # fmt: skip
        record_timing("fair share: team-b running while team-a still queued", time.monotonic() - start)
        assert waiting["queue"] == "team-a", waiting
        assert "quota" in (waiting.get("message") or "").lower(), waiting

        def all_done() -> dict[str, dict[str, Any]] | None:
            merged = {**statuses("team-a"), **statuses("team-b")}
            finished = all(t["status"] in ("completed", "failed", "failed_setup", "cancelled") for t in merged.values())
            return merged if len(merged) == 2 * TASKS_PER_USER and finished else None

        done = wait_or_diagnose(real_cluster, f"{NAMESPACE}-team-a", "all 12 tasks finished", all_done, 600)
        record_timing("fair share: 12 tasks of two teams, first submit to all completed", time.monotonic() - start)
    finally:
        forward.close()
    assert {t["status"] for t in done.values()} == {"completed"}, done
    for team in FAIR_USERS:
        team_ns = f"{NAMESPACE}-{team}"
        jobs = {j["metadata"]["labels"].get("task-id") for j in real_cluster.api.items("batch/v1", "Job", team_ns)}
        assert set(ids[team]) <= jobs, (team, ids[team], jobs)
        workloads = real_cluster.api.items("kueue.x-k8s.io/v1beta2", "Workload", team_ns)
        assert len(workloads) == TASKS_PER_USER, [w["metadata"]["name"] for w in workloads]
        assert max(evictions(w) for w in workloads) <= 1, [(w["metadata"]["name"], evictions(w)) for w in workloads]
    # The platform's own namespace holds no task.
    assert not [j for j in real_cluster.api.items("batch/v1", "Job", ns) if "task-id" in j["metadata"]["labels"]]


EXAMPLES = ROOT / "examples"


def run_cli(real_cluster: RealCluster, api_url: str, home: Path, *args: str, timeout: float) -> str:
    """`python -m skyrun ...` as a user runs it (README), its config in `home`; its output (exit 0 asserted)."""
    env = {**os.environ, "SKYRUN_API_URL": api_url, "SKYRUN_CONFIG": str(home / "skyrun.yaml"), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "skyrun", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    what = f"skyrun {' '.join(args[:2])}: exit {done.returncode}"
    assert done.returncode == 0, f"{what}\n{done.stdout[-3000:]}{done.stderr}"
    return done.stdout


@pytest.mark.usefixtures("trained")  # after the stack's own training: the node has 2 cpus
def test_the_documented_examples_run_as_written_within_the_dev_quota(
    real_cluster: RealCluster, deployed: Deployed, tmp_path: Path
) -> None:
    """README's commands with examples/trainingjob.yaml and examples/task.yaml, unchanged, on the dev stack with its
    own ResourceQuota (quotaMemory 10Gi, the platform at rest beside them): both succeed."""
    ns = deployed.namespace
    assert real_cluster.api.get("v1", "ResourceQuota", "platform-quota", ns), "the dev stack's quota"
    example = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())
    name = example["metadata"]["name"]
    start = time.monotonic()
    real_cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "trainingjob.yaml"))

    def succeeded() -> dict[str, Any] | None:
        no_crash_loops(real_cluster, ns)
        status = (real_cluster.api.get("ml-platform.dev/v1alpha1", "TrainingJob", name, ns) or {}).get("status") or {}
        if status.get("phase") == "Failed" or status.get("reason") == "QuotaExceeded":
            raise AssertionError(f"the example TrainingJob: {status}\n{diagnose(real_cluster, ns)}")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_or_diagnose(real_cluster, ns, f"examples/trainingjob.yaml ({name}) Succeeded", succeeded, 900)
    record_timing("examples/trainingjob.yaml apply to Succeeded", time.monotonic() - start)
    steps = example["spec"]["train"]["train"]["max_steps"]
    assert status["restarts"] == 0, status

    # Progress comes from MLflow in the background (at most every 10 s) and a finished run is still followed for
    # FINISHED_FOLLOW_S (60 s, docs/operator.md) for its last metrics: the final checkpoint shows within that.
    def final_checkpoint() -> dict[str, Any] | None:
        status = (real_cluster.api.get("ml-platform.dev/v1alpha1", "TrainingJob", name, ns) or {}).get("status") or {}
        return status if (status.get("latestCheckpoint") or {}).get("step") == steps else None

    status = wait_or_diagnose(real_cluster, ns, f"{name}'s latestCheckpoint at step {steps}", final_checkpoint, 60)
    assert status["phase"] == "Succeeded", status
    row = real_cluster.kubectl("get", "tj", "-n", ns, name, "--no-headers").stdout.split()
    assert row[:3] == [name, "Succeeded", "Completed"], row
    real_cluster.kubectl("delete", "tj", "-n", ns, name)

    # The launcher, through its CLI, as README shows: a ServiceAccount per user, a token for the launcher.
    real_cluster.kubectl("create", "serviceaccount", "carol", "-n", ns)
    token = real_cluster.kubectl("create", "token", "carol", "-n", ns, "--audience", "skyrun").stdout.strip()
    port = real_cluster.api.get("v1", "Service", "skyrun", ns)["spec"]["ports"][0]["port"]
    forward = real_cluster.forward_service(ns, "skyrun", port)
    try:
        run_cli(real_cluster, forward.url, tmp_path, "auth", "login", "--token", token, timeout=60)
        start = time.monotonic()
        logs = run_cli(real_cluster, forward.url, tmp_path, "jobs", "submit", str(EXAMPLES / "task.yaml"), timeout=600)
        record_timing("examples/task.yaml submit to completed (skyrun CLI)", time.monotonic() - start)
    finally:
        forward.close()
    assert "node-0 | node 0 of 2, rank 0 at " in logs and "node-1 | node 1 of 2, rank 0 at " in logs, logs[-3000:]
    assert re.search(r"task \S+: completed", logs), logs[-1000:]


# --- upgrades and rollbacks under load (docs/operations.md) --------------------------------------------------
UPGRADE_TAG = "ml-platform:e2e-upgrade"
SERVICES_UPGRADE_TAG = "ml-platform-services:e2e-upgrade"


def rolled_out(cluster: RealCluster, ns: str, name: str) -> bool:
    """The Deployment runs only its current template, every replica ready, and no old pod is still draining."""
    deployment = cluster.api.get("apps/v1", "Deployment", name, ns) or {}
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    want = spec.get("replicas", 1)
    current = status.get("observedGeneration") == deployment["metadata"]["generation"]
    counts = [status.get(k, 0) for k in ("updatedReplicas", "readyReplicas", "availableReplicas", "replicas")]
    selector = ",".join(f"{k}={v}" for k, v in spec["selector"]["matchLabels"].items())
    pods = cluster.api.items("v1", "Pod", ns, selector=selector)
    return current and counts == [want] * 4 and len(pods) == want


def wait_rolled_out(cluster: RealCluster, ns: str, names: tuple[str, ...]) -> None:
    for name in names:
        wait_or_diagnose(cluster, ns, f"Deployment {name} rolled out", lambda n=name: rolled_out(cluster, ns, n), 600)


def up_with(deployed: Deployed, changes: dict[str, str]) -> dict[str, int]:
    """`pulumi up` after setting config keys; the resource changes it made."""
    for key, value in changes.items():
        deployed.stack.set_config(key, auto.ConfigValue(value))
    result = deployed.stack.up(color="never")
    return dict(result.summary.resource_changes or {})


def served_versions(cluster: RealCluster, ns: str) -> dict[str, str]:
    """Each inference pod's served model version, from its own /readyz."""
    versions = {}
    for pod in cluster.api.items("v1", "Pod", ns, selector=INFERENCE):
        if condition(pod, "Ready") != "True" or pod["metadata"].get("deletionTimestamp"):
            continue
        forward = cluster.forward(pod["status"]["podIP"], 8080)
        try:
            versions[pod["metadata"]["name"]] = str(httpx.get(f"{forward.url}/readyz", timeout=10).json()["version"])
        finally:
            forward.close()
    return versions


def rank0_summary(cluster: RealCluster, ns: str, job: str) -> dict[str, Any]:
    pods = [p for p in job_pods(cluster, ns, job) if index_of(p) == "0" and phase(p) == "Succeeded"]
    assert pods, f"no succeeded rank 0 of {job}\n{diagnose(cluster, ns)}"
    return dict(json.loads(cluster.pod_logs(ns, pods[-1]["metadata"]["name"]).splitlines()[-1]))


def test_upgrades_and_rollbacks_under_load_lose_no_request(
    real_cluster: RealCluster,
    deployed: Deployed,
    serving: int,
    trained: dict[str, Any],
    platform_image: str,
    services_image: str,
) -> None:
    """docs/operations.md's procedures while 8 clients (3 streaming) send completions through the Service, one
    connection per request: (a) an inference setting, (b) a new image tag, (c) a longer training run (the Job is
    replaced and resumes from its checkpoint); then the previous configuration again, and the model alias moved
    back. Every phase is counted; (a), (b) and the configuration rollback lose no request and cut no stream."""
    ns = deployed.namespace
    platform, services = platform_image, services_image
    refs = real_cluster.ctr("images", "ls", "-q").stdout.split()
    for image, tag in ((platform, UPGRADE_TAG), (services, SERVICES_UPGRADE_TAG)):
        source = next(ref for ref in refs if ref.endswith("/" + image) or ref == image)
        real_cluster.ctr("images", "tag", "--force", source, f"docker.io/library/{tag}")
    inference = real_cluster.forward_service(ns, "inference", serving)
    model = httpx.get(f"{inference.url}/v1/models", timeout=30).json()["data"][0]["id"]
    load = Load(inference.url, model).start()
    phases: dict[str, Any] = {}
    timings: dict[str, float] = {}
    memory = deployed.stack.get_config("inferenceMemoryLimit").value  # Pulumi.dev.yaml's
    try:
        eventually("the load served", lambda: load.phase("warm-up").served > 0 or None, 120)
        load.phase(f"a: inferenceMemoryLimit {memory} -> 1Gi")
        start = time.monotonic()
        changes = up_with(deployed, {"inferenceMemoryLimit": "1Gi"})
        # Only updates in place; the IngressClass is read again at every up (it must exist), which changes nothing.
        assert set(changes) <= {"same", "read", "update"} and changes.get("update"), changes
        wait_rolled_out(real_cluster, ns, ("inference",))
        timings["a"] = time.monotonic() - start
        phases["a"] = load.phase(f"b: images {platform}, {services} -> {UPGRADE_TAG}, {SERVICES_UPGRADE_TAG}")

        start = time.monotonic()
        up_with(deployed, {"image": UPGRADE_TAG, "servicesImage": SERVICES_UPGRADE_TAG})
        wait_rolled_out(real_cluster, ns, ("inference", "mlflow", "trainop", "skyrun"))
        timings["b"] = time.monotonic() - start
        phases["b"] = load.phase(f"c: trainMaxSteps {TRAIN_STEPS} -> {TRAIN_STEPS + 40}")

        start = time.monotonic()
        up_with(deployed, {"trainMaxSteps": str(TRAIN_STEPS + 40)})
        finished = lambda: job_finished(real_cluster, ns, deployed.job)  # noqa: E731
        assert wait_or_diagnose(real_cluster, ns, "the longer run finished", finished, 900) == "Complete"
        timings["c"] = time.monotonic() - start
        longer = rank0_summary(real_cluster, ns, deployed.job)
        phases["c"] = load.phase("rollback: the previous configuration")

        start = time.monotonic()
        previous = {"image": platform, "servicesImage": services, "trainMaxSteps": str(TRAIN_STEPS)}
        up_with(deployed, {"inferenceMemoryLimit": memory, **previous})
        wait_rolled_out(real_cluster, ns, ("inference", "mlflow", "trainop", "skyrun"))
        timings["rollback"] = time.monotonic() - start
        phases["rollback"] = load.phase("alias: champion back to the first version")

        # The rolled-back Job found a checkpoint past its max_steps and registered it: only then move the alias.
        assert wait_or_diagnose(real_cluster, ns, "the rolled-back run finished", finished, 600) == "Complete"
        # The model alias moved back: every replica serves the earlier version within the poll interval.
        previous = trained["model_uri"].rsplit("/", 1)[1]
        port = real_cluster.api.get("v1", "Service", "mlflow", ns)["spec"]["ports"][0]["port"]
        forward = real_cluster.forward_service(ns, "mlflow", port)
        try:
            moved = httpx.post(f"{forward.url}/api/2.0/mlflow/registered-models/alias", timeout=30,
                               json={"name": MODEL_NAME, "alias": "champion", "version": previous})  # fmt: skip
            assert moved.status_code == 200, moved.text
        finally:
            forward.close()
        start = time.monotonic()

        def all_previous() -> dict[str, str] | None:
            versions = served_versions(real_cluster, ns)
            return versions if len(versions) == INFERENCE_REPLICAS and set(versions.values()) == {previous} else None

        versions = wait_or_diagnose(real_cluster, ns, f"every replica serving version {previous}", all_previous, 180)
        timings["alias"] = time.monotonic() - start
        phases["alias"] = load.phase("after")
    finally:
        stopped = load.stop()
        inference.close()
        for done in load.phases:
            print(done.summary(), file=sys.stderr)
    print(f"{stopped.summary()}\ntimings: {timings}", file=sys.stderr)
    for key, seconds in timings.items():
        what = "the alias moved back to every replica serving it" if key == "alias" else "pulumi up to rolled out"
        record_timing(f"under load ({key}): {what}", seconds)
    record_value("upgrade under load: requests served/failed/streams cut by phase",
                 {k: [p.served, p.failed, p.streams_cut] for k, p in phases.items()})  # fmt: skip

    # (c) resumed from the finished 400-step checkpoint, trained 40 more steps and registered a new version.
    assert (longer["resumed_from_step"], longer["step"]) == (TRAIN_STEPS, TRAIN_STEPS + 40), longer
    assert longer["alias_moved"] and longer["model_uri"] != trained["model_uri"], longer
    for key in ("a", "b", "rollback", "alias"):
        assert phases[key].served > 0 and phases[key].failed == 0, phases[key].summary()
    assert phases["c"].failed == 0, phases["c"].summary()

    # The previous configuration restored the previous objects.
    deployment = real_cluster.api.get("apps/v1", "Deployment", "inference", ns)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == platform and container["resources"]["limits"]["memory"] == memory, container
    config = real_cluster.api.get("v1", "ConfigMap", f"{deployed.job.removesuffix('-train')}-train-config", ns)
    assert f"max_steps: {TRAIN_STEPS}\n" in config["data"]["train.yaml"], config["data"]["train.yaml"]
    print(f"served after the alias moved back: {versions}", file=sys.stderr)


# --- destroy with live work ---------------------------------------------------------------------------------
LIVE_TASK = """
name: live-task
num_nodes: 2
resources: {cpus: 100m, memory: 256Mi}
run: |
  echo "node $SKYPILOT_NODE_RANK up"; sleep 3600
"""


def start_live_work(real_cluster: RealCluster, ns: str) -> None:
    """A TrainingJob and a skyrun task, both running, as a user would leave them."""
    real_cluster.api.create({
        "apiVersion": "ml-platform.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "live-run", "namespace": ns},
        "spec": {
            "workers": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
            "train": {"model": {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32},
                      "train": {"batch_size": 4, "max_steps": 1000000, "eval_every": 0, "log_every": 100},
                      "checkpoint": {"every": 100}},
            "tracking": {"experiment": "e2e-live", "modelName": "tiny-gpt-live"},
        },
    })  # fmt: skip
    if real_cluster.api.get("v1", "ServiceAccount", "dave", ns) is None:
        real_cluster.kubectl("create", "serviceaccount", "dave", "-n", ns)
    token = real_cluster.kubectl("create", "token", "dave", "-n", ns, "--audience", "skyrun").stdout.strip()
    port = real_cluster.api.get("v1", "Service", "skyrun", ns)["spec"]["ports"][0]["port"]
    forward = real_cluster.forward_service(ns, "skyrun", port)
    try:
        with httpx.Client(base_url=forward.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
            submitted = api.post("/tasks/submit", json={"task_yaml": LIVE_TASK})
            assert submitted.status_code == 200, submitted.text
            task_id = submitted.json()["task_id"]
            wait_or_diagnose(real_cluster, TEAM_NAMESPACE, "the live task running",
                             lambda: api.get(f"/tasks/{task_id}").json()["status"] == "running", 300)  # fmt: skip
    finally:
        forward.close()

    def tj_running() -> bool:
        obj = real_cluster.api.get("ml-platform.dev/v1alpha1", "TrainingJob", "live-run", ns) or {}
        return (obj.get("status") or {}).get("phase") == "Running"

    wait_or_diagnose(real_cluster, ns, "the live TrainingJob running", tj_running, 300)


def cert_manager_crds(cluster: RealCluster) -> list[str]:
    names = [c["metadata"]["name"] for c in cluster.api.items("apiextensions.k8s.io/v1", "CustomResourceDefinition")]
    return sorted(n for n in names if n.endswith("cert-manager.io"))


def kueue_crds(cluster: RealCluster) -> list[str]:
    names = [c["metadata"]["name"] for c in cluster.api.items("apiextensions.k8s.io/v1", "CustomResourceDefinition")]
    return sorted(n for n in names if n.endswith("kueue.x-k8s.io"))


def stack_queues(cluster: RealCluster) -> list[str]:
    """The stack's cluster-scoped queue objects left (its ClusterQueues and ResourceFlavors)."""
    kinds = ("ClusterQueue", "ResourceFlavor")
    return sorted(f"{kind} {o['metadata']['name']}" for kind in kinds
                  for o in cluster.api.items("kueue.x-k8s.io/v1beta2", kind)
                  if o["metadata"]["name"].startswith(f"{NAMESPACE}-"))  # fmt: skip


USER_OBJECTS = {"ServiceAccount": {"default", "alice", "bob", "carol", "dave", *FAIR_USERS.values()},
                "ConfigMap": {"kube-root-ca.crt"}}  # fmt: skip


def left_in(cluster: RealCluster, ns: str) -> dict[str, list[str]]:
    """Every object left in the namespace that is not a user's own (their ServiceAccounts) or Kubernetes'."""
    kinds = (("v1", "Pod"), ("batch/v1", "Job"), ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"),
             ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"),
             ("v1", "PersistentVolumeClaim"), ("v1", "ResourceQuota"), ("v1", "LimitRange"),
             ("networking.k8s.io/v1", "NetworkPolicy"), ("rbac.authorization.k8s.io/v1", "Role"),
             ("rbac.authorization.k8s.io/v1", "RoleBinding"), ("autoscaling/v2", "HorizontalPodAutoscaler"),
             ("policy/v1", "PodDisruptionBudget"), ("networking.k8s.io/v1", "Ingress"))  # fmt: skip
    left = {}
    for api_version, kind in kinds:
        names = [o["metadata"]["name"] for o in cluster.api.items(api_version, kind, ns)]
        names = [n for n in names if n not in USER_OBJECTS.get(kind, set())]
        if names:
            left[kind] = sorted(names)
    return left


def test_destroy_with_live_work_keeps_exactly_the_protected_data_then_removes_everything(
    real_cluster: RealCluster, deployed: Deployed
) -> None:
    """A running TrainingJob and a running task, then `pulumi destroy`: with protectData (the default) exactly the
    protected objects stay (the namespace, its quota and limits, the two claims and their volumes), and with them
    the TLS Secrets cert-manager wrote (it leaves a deleted Certificate's Secret); cert-manager, which the stack
    installed, goes with its CRDs. The next `pulumi up` installs it again and adopts the Secrets, so the CA clients
    trust is the same. With protectData off, after `pulumi up` brought the platform back over the same data and
    new live work, nothing is left. Neither waits on a finalizer; the data stays on the node."""
    ns = deployed.namespace
    ca_before = real_cluster.api.get("v1", "Secret", CA_SECRET, ns)["data"]["ca.crt"]
    claims = sorted(c["metadata"]["name"] for c in real_cluster.api.items("v1", "PersistentVolumeClaim", ns))
    pvs = [pv["metadata"]["name"] for pv in real_cluster.api.items("v1", "PersistentVolume")
           if (pv["spec"].get("claimRef") or {}).get("namespace") == ns]  # fmt: skip
    assert len(claims) == 2 and len(pvs) == 2, (claims, pvs)
    crd = "trainingjobs.ml-platform.dev"

    start_live_work(real_cluster, ns)
    start = time.monotonic()
    kept = deployed.stack.destroy(color="never", exclude_protected=True)
    assert kept.summary.result == "succeeded", kept.summary
    record_timing("pulumi destroy --exclude-protected with live work", time.monotonic() - start)
    assert real_cluster.api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd) is None
    want = {"PersistentVolumeClaim": claims, "ResourceQuota": ["platform-quota"], "LimitRange": ["platform-defaults"],
            "Secret": sorted([CA_SECRET, "inference-tls"])}  # fmt: skip
    assert cert_manager_crds(real_cluster) == []
    assert real_cluster.api.get("v1", "Namespace", "cert-manager") is None
    # The stack's queues are gone (their Workloads released first: the anchor's foreground deletion); Kueue stays,
    # it is the cluster's (docs/teams.md).
    assert stack_queues(real_cluster) == [] and kueue_crds(real_cluster)
    # The team namespaces are protected (their users' volumes); the tasks in them are gone with their anchor.
    teams = [f"{NAMESPACE}-{t['name']}" for t in E2E_TEAMS]
    assert all(real_cluster.api.get("v1", "Namespace", team) for team in teams)
    assert {team: left_in(real_cluster, team) for team in teams} == {team: {} for team in teams}

    # The garbage collector ends the live work's pods (their grace period lets the trainer checkpoint).
    def only_protected() -> dict[str, list[str]] | None:
        now = left_in(real_cluster, ns)
        return now if now == want else None

    left = wait_or_diagnose(real_cluster, ns, "only the protected objects left", only_protected, 300)
    record_timing("pulumi destroy --exclude-protected: start to only the protected objects left",
                  time.monotonic() - start)  # fmt: skip
    assert left == want
    assert all(real_cluster.api.get("v1", "PersistentVolume", name) for name in pvs)

    # README "Data volumes and pulumi destroy": unprotect the data, up (the platform comes back over it), destroy.
    deployed.stack.set_config("protectData", auto.ConfigValue("false"))
    start = time.monotonic()
    deployed.stack.up(color="never")
    record_timing("pulumi up after a protected destroy (the platform back over its data)", time.monotonic() - start)
    assert real_cluster.api.get("v1", "Secret", CA_SECRET, ns)["data"]["ca.crt"] == ca_before, "a new CA"
    start_live_work(real_cluster, ns)
    start = time.monotonic()
    destroyed = deployed.stack.destroy(color="never")
    assert destroyed.summary.result == "succeeded", destroyed.summary
    record_timing("pulumi destroy with live work (protectData false)", time.monotonic() - start)

    assert real_cluster.api.get("v1", "Namespace", ns) is None
    assert real_cluster.api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd) is None
    assert real_cluster.api.get("v1", "Namespace", "cert-manager") is None
    assert cert_manager_crds(real_cluster) == []
    assert [real_cluster.api.get("v1", "PersistentVolume", name) for name in pvs] == [None] * len(pvs)
    assert not real_cluster.api.items("v1", "Pod", ns)
    assert [real_cluster.api.get("v1", "Namespace", team) for team in teams] == [None] * len(teams)
    assert stack_queues(real_cluster) == [] and kueue_crds(real_cluster)
    assert real_cluster.api.items("kueue.x-k8s.io/v1beta2", "Workload") == []
    # The data stays on the node (reclaim policy Retain): the final checkpoint and MLflow's database/artifacts.
    data = deployed.storage / "dev"
    assert list(data.glob(f"checkpoints/**/step-{TRAIN_STEPS:08d}")), sorted(p.name for p in data.rglob("*"))[:50]
    mlflow_files = [p for p in (data / "mlflow").rglob("*") if p.is_file()]
    assert mlflow_files, sorted(str(p) for p in data.rglob("*"))[:50]
