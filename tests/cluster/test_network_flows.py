"""The platform's flow matrix, probed by real pods under a real NetworkPolicy enforcer (kube-network-policies, as
kind ships it; tests/harness/node.py).

The NetworkPolicies are the dev stack's as `pulumi up` renders them (and the gpu stack's for PostgreSQL), plus the
per-task policies the launcher creates with each task. Small probe pods (Pod Security restricted) carry each
component's labels and listen on its ports: in the platform namespace, in the Prometheus and ingress-controller
namespaces, in an unrelated namespace, and as the nodes of two users' tasks. `FLOWS` is written by hand from the
design (docs/security.md, "Flows"), never generated from the policies: each allowed flow must connect and each
denied one must fail within `DENY_BOUND_S`. Then tests/netpol.py, the evaluator the unit tests use, must give the
same verdict for every flow (the differential test).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.cluster.realcluster import OUTSIDE_IP, RealCluster
from tests.harness.controlplane import SERVICE_IP
from tests.harness.hostns import NODE_IP
from tests.harness.node import DNS_SERVICE_IP
from tests.harness.wait import eventually
from tests.infra.conftest import objects_of, render_stack
from tests.netpol import Cluster, Endpoint, task_objects, template_labels
from workloads.pod import container_security_context, pod_security_context

pytestmark = pytest.mark.cluster

NS, GPU_NS = "flows", "flows-gpu"
MONITORING, INGRESS, OTHER = "flows-monitoring", "flows-ingress", "flows-team-b"
TEAM_NS, GPU_TEAM_NS = f"{NS}-default", f"{GPU_NS}-default"  # the default team's namespaces (Pulumi.yaml `teams`)
DENY_BOUND_S = 3.0
# On the host outside the cluster (RealCluster.outside_host): a package mirror on a port of taskEgressPorts, and
# something on a port that is not.
MIRROR_PORT, CLOSED_PORT = 80, 8082
# The API server listens on the node's own address: kube-network-policies judges forwarded packets only
# (postrouting), so on a single node (kind's default) it never sees a pod's connection to the node itself and
# cannot deny it. Those flows are designed denied, reported, and judged by the evaluator with the same blind spot.
NODE_LOCAL = {"api"}
API_SERVICE = (SERVICE_IP, 443)  # the kubernetes Service; packets reach the endpoint NODE_IP:6443 after DNAT

# The probe: listen on $LISTEN (tcp:PORT,...) and accept forever; `CLIENT` connects to a list of targets at once.
SERVER = """
import os, socket, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()
ports = [int(p.split(":")[1]) for p in os.environ.get("LISTEN", "").split(",") if p]
for p in ports:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
"""
CLIENT = """
import json, socket, struct, sys, concurrent.futures as cf
timeout = float(sys.argv[2])
def dns(server):
    q = struct.pack(">HHHHHH", 0x4d4c, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in "kubernetes.default.svc.cluster.local".split(".")) + b"\\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
    try:
        s.sendto(q, (server, 53)); data, _ = s.recvfrom(512); return data[:2] == q[:2]
    except OSError:
        return False
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=timeout).close(); return True
    except OSError:
        return False
def probe(t):
    return dns(t[1]) if t[0] == "dns" else tcp(t[1], t[2])
targets = json.loads(sys.argv[1])
with cf.ThreadPoolExecutor(len(targets) or 1) as ex:
    print(json.dumps(list(ex.map(probe, targets))))
"""


@dataclass(frozen=True)
class Probe:
    name: str
    namespace: str
    labels: dict[str, str]
    listen: tuple[int, ...] = ()


def world() -> tuple[list[dict[str, Any]], list[Probe]]:
    """The policies to apply and the probe pods, from the rendered stacks and the task builder."""
    keys = {"ingressControllerNamespace": INGRESS, "prometheusNamespace": MONITORING}
    dev = objects_of(render_stack("dev", namespace=NS, **keys))
    gpu = objects_of(render_stack("gpu", namespace=GPU_NS, **keys))
    # Tasks run in the team namespace (Pulumi.yaml's default team), under its policies (infra/teams.py).
    tasks = [*task_objects("alice001", "alice", TEAM_NS), *task_objects("bob00001", "bob", TEAM_NS)]
    policies = [o for o in [*dev, *gpu, *tasks] if o["kind"] == "NetworkPolicy"]
    trainer = template_labels(dev, "trainer")
    collective = (29500, 41234)
    task_labels = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"] for o in tasks
                   if o["kind"] == "Job"}  # fmt: skip
    alice, bob = (task_labels[n] for n in sorted(task_labels))
    probes = [
        Probe("trainer-0", NS, trainer, (*collective, 9400)),
        Probe("trainer-1", NS, trainer, (*collective, 9400)),
        Probe("other-run-0", NS, {**trainer, "app.kubernetes.io/instance": "other-run"}, collective),
        Probe("mlflow", NS, template_labels(dev, "mlflow"), (5000,)),
        Probe("inference", NS, template_labels(dev, "inference"), (8080,)),
        Probe("trainop", NS, template_labels(dev, "trainop"), (9090,)),
        Probe("skyrun", NS, template_labels(dev, "skyrun"), (8000, 9090)),
        Probe("alice-0", TEAM_NS, alice, collective),
        Probe("alice-1", TEAM_NS, alice, collective),
        Probe("bob-0", TEAM_NS, bob, collective),
        Probe("prometheus", MONITORING, {"app.kubernetes.io/name": "prometheus"}),
        Probe("ingress", INGRESS, {"app.kubernetes.io/name": "ingress-controller"}),
        Probe("team-b", OTHER, {"app": "x"}, (8080,)),
        Probe("g-mlflow", GPU_NS, template_labels(gpu, "mlflow"), (5000,)),
        Probe("g-postgres", GPU_NS, template_labels(gpu, "postgres"), (5432,)),
        Probe("g-trainer", GPU_NS, template_labels(gpu, "trainer"), collective),
        Probe("g-inference", GPU_NS, template_labels(gpu, "inference"), (8080,)),
    ]
    return policies, probes


# (source, destination, port, allowed). Destinations: a probe; "dns" (a query to the kube-dns Service, served by
# the CoreDNS pod); "api" (the kubernetes Service); "mirror" and "closed" (addresses outside the pod network).
DNS_CLIENTS = ("trainer-0", "mlflow", "inference", "trainop", "skyrun", "alice-0", "g-postgres", "team-b")
FLOWS: list[tuple[str, str, int, bool]] = [
    # DNS, from every kind of pod.
    *[(p, "dns", 53, True) for p in DNS_CLIENTS],
    # One run's ranks: rendezvous and collectives; never across runs.
    ("trainer-0", "trainer-1", 29500, True),
    ("trainer-1", "trainer-0", 41234, True),
    ("trainer-0", "other-run-0", 29500, False),
    ("other-run-0", "trainer-1", 29500, False),
    # MLflow's clients, and one that is not.
    ("trainer-0", "mlflow", 5000, True),
    ("inference", "mlflow", 5000, True),
    ("trainop", "mlflow", 5000, True),
    ("alice-0", "mlflow", 5000, True),
    ("skyrun", "mlflow", 5000, False),
    # The API server: the operator and the launcher; the trainer only with API discovery (dev: DNS); no task.
    ("trainop", "api", 443, True),
    ("skyrun", "api", 443, True),
    ("trainer-0", "api", 443, False),
    ("inference", "api", 443, False),
    ("alice-0", "api", 443, False),
    # Prometheus to every metrics port, and to nothing else.
    ("prometheus", "trainer-0", 9400, True),
    ("prometheus", "trainop", 9090, True),
    ("prometheus", "skyrun", 9090, True),
    ("prometheus", "inference", 8080, True),
    ("prometheus", "trainer-0", 29500, False),
    ("prometheus", "skyrun", 8000, False),
    ("team-b", "trainer-0", 9400, False),
    # The ingress controller to inference and the launcher API; the launcher API from nowhere else.
    ("ingress", "inference", 8080, True),
    ("ingress", "skyrun", 8000, True),
    ("team-b", "skyrun", 8000, False),
    ("alice-0", "skyrun", 8000, False),
    ("trainer-0", "skyrun", 8000, False),
    # dev publishes inference and MLflow through NodePorts: reachable from anywhere, on those ports only.
    ("team-b", "inference", 8080, True),
    ("team-b", "mlflow", 5000, True),
    ("team-b", "trainer-0", 29500, False),
    # Tasks: their own nodes, MLflow (above) and the allowed egress; never another user's task or the platform.
    ("alice-0", "alice-1", 29500, True),
    ("alice-1", "alice-0", 41234, True),
    ("alice-0", "bob-0", 29500, False),
    ("bob-0", "alice-1", 29500, False),
    ("alice-0", "trainer-0", 29500, False),
    ("trainer-0", "alice-0", 29500, False),
    ("alice-0", "mirror", MIRROR_PORT, True),
    ("alice-0", "closed", CLOSED_PORT, False),
    ("trainer-0", "mirror", MIRROR_PORT, False),
    # PostgreSQL (gpu stack): MLflow only.
    ("g-mlflow", "g-postgres", 5432, True),
    ("g-trainer", "g-postgres", 5432, False),
    ("g-inference", "g-postgres", 5432, False),
    ("team-b", "g-postgres", 5432, False),
    # gpu: ClusterIP inference, through the ingress controller only.
    ("ingress", "g-inference", 8080, True),
    ("team-b", "g-inference", 8080, False),
]


def probe_pod(probe: Probe, image: str) -> dict[str, Any]:
    container = {
        "name": "probe",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python3", "-c", SERVER],
        "env": [{"name": "LISTEN", "value": ",".join(f"tcp:{p}" for p in probe.listen)}],
        "ports": [{"containerPort": p} for p in probe.listen],
        "resources": {"requests": {"cpu": "10m", "memory": "24Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}},
        "securityContext": container_security_context(),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": probe.name, "namespace": probe.namespace, "labels": probe.labels},
        "spec": {
            "securityContext": pod_security_context(),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 0,
            "containers": [container],
        },
    }


@dataclass
class Matrix:
    cluster: RealCluster
    policies: list[dict[str, Any]]
    probes: dict[str, Probe]
    ips: dict[str, str]

    def target(self, dst: str, port: int) -> list[Any]:
        if dst == "dns":
            return ["dns", DNS_SERVICE_IP, 53]
        if dst == "api":
            return ["tcp", *API_SERVICE]
        if dst in ("mirror", "closed"):
            return ["tcp", OUTSIDE_IP, port]
        return ["tcp", self.ips[dst], port]

    def probe(self, flows: list[tuple[str, str, int, bool]]) -> dict[tuple[str, str, int], bool]:
        """Each flow's outcome: every source connects to its targets at once, from inside its pod."""
        results: dict[tuple[str, str, int], bool] = {}
        for src in sorted({f[0] for f in flows}):
            mine = [f for f in flows if f[0] == src]
            targets = json.dumps([self.target(dst, port) for _, dst, port, _ in mine])
            out = self.cluster.kubectl("exec", "-n", self.probes[src].namespace, src, "--", "python3", "-c",
                                       CLIENT, targets, str(DENY_BOUND_S), timeout=60)  # fmt: skip
            for (_, dst, port, _), ok in zip(mine, json.loads(out.stdout), strict=True):
                results[(src, dst, port)] = ok
        return results

    def endpoint(self, name: str) -> Endpoint:
        if name == "api":
            return Endpoint(name, NODE_IP)  # after the Service's DNAT, the API server is the node's 6443
        if name in ("mirror", "closed"):
            return Endpoint(name, OUTSIDE_IP)
        probe = self.probes[name]
        named = {f"p{p}": ("TCP", p) for p in probe.listen}
        return Endpoint(name, self.ips[name], probe.namespace, probe.labels, named)


@pytest.fixture(scope="module")
def matrix(real_cluster: RealCluster, base_image: str) -> Iterator[Matrix]:
    api = real_cluster.api
    policies, probes = world()
    namespaces = (NS, GPU_NS, MONITORING, INGRESS, OTHER, TEAM_NS, GPU_TEAM_NS)
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    # What the stack's Namespace objects carry that the policies select on: a team namespace's platform label.
    team_labels = {TEAM_NS: {"ml-platform.dev/platform": NS}, GPU_TEAM_NS: {"ml-platform.dev/platform": GPU_NS}}
    mirror = None
    try:
        outside = real_cluster.outside_host()
        mirror = subprocess.Popen(
            [*outside, sys.executable, "-c", SERVER],
            env={"LISTEN": f"tcp:{MIRROR_PORT},tcp:{CLOSED_PORT}"}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for ns in namespaces:
            labels = {**restricted, **team_labels.get(ns, {})}
            api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
        for ns in namespaces:
            eventually(f"{ns}'s default ServiceAccount", lambda ns=ns: api.get("v1", "ServiceAccount", "default", ns),
                       60)  # fmt: skip
        for policy in policies:
            api.apply(policy)
        for probe in probes:
            api.apply(probe_pod(probe, base_image))

        def ips() -> dict[str, str] | None:
            found = {}
            for probe in probes:
                pod = api.get("v1", "Pod", probe.name, probe.namespace) or {}
                status = pod.get("status", {})
                if status.get("phase") != "Running" or not status.get("podIP"):
                    return None
                found[probe.name] = status["podIP"]
            return found

        addresses = eventually("every probe pod Running with an IP", ips, 180)
        for port in (MIRROR_PORT, CLOSED_PORT):
            eventually(
                f"the outside host listening on {port}", lambda port=port: real_cluster.outside_listening(port), 60
            )
        yield Matrix(real_cluster, policies, {p.name: p for p in probes}, addresses)
    finally:
        if mirror is not None:
            mirror.kill()
            mirror.wait(10)
        for ns in namespaces:
            api.delete("v1", "Namespace", ns)


def test_every_flow_of_the_matrix_has_its_verdict(matrix: Matrix) -> None:
    # Designed verdicts, except what this enforcer cannot see on one node (NODE_LOCAL): there it connects.
    expected = {(s, d, p): ok or d in NODE_LOCAL for s, d, p, ok in FLOWS}
    blind = sorted(f"{s} -> {d}:{p}" for s, d, p, ok in FLOWS if d in NODE_LOCAL and not ok)
    print(f"\ndesigned denied, not enforceable by kube-network-policies on a single node: {', '.join(blind)}")
    # The enforcer learns pod addresses from the API (no NRI here): converge before judging.
    wrong: dict[tuple[str, str, int], bool] = {}

    def verdicts_match() -> bool:
        got = matrix.probe(FLOWS)
        wrong.clear()
        wrong.update({k: v for k, v in got.items() if v != expected[k]})
        return not wrong

    try:
        eventually("every flow as designed", verdicts_match, 60, interval_s=1)
    except TimeoutError:
        lines = [
            f"  {s} -> {d}:{p}: {'connected' if v else 'blocked'}, designed "
            + ("allowed" if expected[(s, d, p)] else "denied")
            for (s, d, p), v in sorted(wrong.items())
        ]
        pytest.fail("flows that differ from the design (docs/security.md, Flows):\n" + "\n".join(lines), False)


def test_the_evaluator_agrees_with_the_enforcer(matrix: Matrix) -> None:
    """tests/netpol.py, given the same policies and pods, gives the real enforcer's verdict on every flow."""
    got = matrix.probe(FLOWS)
    namespaces = {ns: {} for ns in (NS, GPU_NS, MONITORING, INGRESS, OTHER)}
    namespaces |= {TEAM_NS: {"ml-platform.dev/platform": NS}, GPU_TEAM_NS: {"ml-platform.dev/platform": GPU_NS}}
    evaluator = Cluster(matrix.policies, namespaces, unfiltered_destinations={NODE_IP})
    differ = []
    for (src, dst, port), real in got.items():
        if dst == "dns":
            dns = Endpoint("coredns", "10.244.0.250", "kube-system", {"k8s-app": "kube-dns"})
            judged = evaluator.allowed(matrix.endpoint(src), dns, "UDP", 53)
        else:
            dst_port = 6443 if dst == "api" else port
            judged = evaluator.allowed(matrix.endpoint(src), matrix.endpoint(dst), "TCP", dst_port)
        if judged != real:
            differ.append(f"{src} -> {dst}:{port}: enforcer {real}, evaluator {judged}")
    assert not differ, "\n".join(differ)


def test_a_policy_that_breaks_a_needed_flow_fails_the_matrix_naming_it(matrix: Matrix) -> None:
    """The negative control: without the DNS rule, the matrix sees every DNS flow blocked, and says which."""
    api = matrix.cluster.api
    (dns_policy,) = [
        p for p in matrix.policies if p["metadata"]["name"] == "allow-dns" and p["metadata"]["namespace"] == NS
    ]
    dns_flows = [f for f in FLOWS if f[1] == "dns" and matrix.probes[f[0]].namespace == NS]
    api.delete("networking.k8s.io/v1", "NetworkPolicy", "allow-dns", NS)
    try:
        blocked = eventually(
            "DNS blocked without its rule",
            lambda: (got := matrix.probe(dns_flows)) and not any(got.values()) and got,
            30,
            interval_s=1,
        )
        assert sorted(f"{s} -> {d}:{p}" for s, d, p in blocked) == sorted(f"{s} -> dns:53" for s, _, _, _ in dns_flows)
    finally:
        api.apply(dns_policy)
    eventually("DNS back with its rule", lambda: all(matrix.probe(dns_flows).values()), 30, interval_s=1)
