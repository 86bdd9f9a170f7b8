"""The rendered stacks' NetworkPolicies, judged by tests/netpol.py (Kubernetes' semantics) over every component:
each flow the design needs is open, and nothing else is. The expected tables are written by hand from the design
(docs/security.md, "Flows"), never derived from the policies; tests/cluster/test_network_flows.py probes the same
kind of table with real pods under a real enforcer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from tests.netpol import Cluster, Endpoint, ip_block_matches, selector_matches, task_objects, template_labels

from .conftest import objects_of, render_stack

NS = "ml-platform"
TEAM_NS = "ml-platform-default"  # Pulumi.yaml's default team: where the users' tasks run (infra/teams.py)
TEAM_LABELS = {"ml-platform.dev/team": "default", "ml-platform.dev/platform": NS}
NODE_IP = "172.18.0.2"  # kind's node: the API server's endpoint (after the kubernetes Service's DNAT)


class World:
    """The stack's pods (two ranks of its run, a rank of another run, two ranks of each of two users' tasks, and a
    stray pod), pods in other namespaces, and addresses outside; each with the ports it listens on."""

    def __init__(self, stack: str, **overrides: Any) -> None:
        objects = objects_of(render_stack(stack, **overrides))
        tasks = [*task_objects("alice001", "alice", TEAM_NS), *task_objects("bob00001", "bob", TEAM_NS)]
        policies = [o for o in [*objects, *tasks] if o["kind"] == "NetworkPolicy"]
        self.cluster = Cluster(policies, {NS: {}, TEAM_NS: TEAM_LABELS, "kube-system": {}, "traefik": {},
                                          "ingress-nginx": {}, "team-b": {}, "dns-elsewhere": {}})  # fmt: skip
        ip = iter(f"10.244.0.{i}" for i in range(10, 250))

        def pod(name: str, labels: dict[str, str], ns: str = NS) -> Endpoint:
            return Endpoint(name, next(ip), ns, labels)

        trainer = template_labels(objects, "trainer")
        self.listening: dict[Endpoint, list[tuple[str, int]]] = {}
        collective = [("TCP", 29500), ("TCP", 41234)]
        for name, labels, ports in [
            ("trainer-0", trainer, collective),
            ("trainer-1", trainer, collective),
            ("other-run-0", {**trainer, "app.kubernetes.io/instance": "other-run"}, collective),
            ("mlflow", template_labels(objects, "mlflow"), [("TCP", 5000)]),
            ("inference", template_labels(objects, "inference"), [("TCP", 8080)]),
            ("trainop", template_labels(objects, "trainop"), []),
            ("skyrun", template_labels(objects, "skyrun"), [("TCP", 8000)]),
            ("debug", {"app.kubernetes.io/name": "debug"}, [("TCP", 8080)]),
        ]:
            self.listening[pod(name, labels)] = ports
        if any(o["kind"] == "StatefulSet" for o in objects):
            self.listening[pod("postgres", template_labels(objects, "postgres"))] = [("TCP", 5432)]
        for task in ("alice001", "bob00001"):
            labels = next(o for o in tasks if o["kind"] == "Job" and task in o["metadata"]["name"])
            for rank in range(2):
                task_labels = labels["spec"]["template"]["metadata"]["labels"]
                self.listening[pod(f"{task}-{rank}", task_labels, TEAM_NS)] = collective
        dns_ports = [("UDP", 53), ("TCP", 53)]
        self.listening[pod("kube-dns", {"k8s-app": "kube-dns"}, "kube-system")] = dns_ports
        self.listening[pod("other-dns", {"k8s-app": "kube-dns"}, "dns-elsewhere")] = dns_ports
        self.listening[Endpoint("node-local-dns", "169.254.20.10")] = dns_ports
        # Two ingress controllers: the dev stack's (Traefik, Pulumi.yaml's default) and the gpu stack's.
        self.listening[pod("traefik", {"app.kubernetes.io/name": "traefik"}, "traefik")] = []
        self.listening[pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")] = []
        self.listening[pod("other-team", {"app": "x"}, "team-b")] = [("TCP", 8080)]
        self.listening[Endpoint("kube-apiserver", NODE_IP)] = [("TCP", 6443)]
        self.listening[Endpoint("internet", "203.0.113.7")] = [("TCP", 80), ("TCP", 443)]
        self.listening[Endpoint("internet6", "2001:db8::7")] = [("TCP", 443)]
        self.by_name = {e.name: e for e in self.listening}

    def open_flows(self) -> set[tuple[str, str, str, int]]:
        """Every (source, destination, protocol, port) that passes, where one end is a pod of the platform's or the
        team's namespace."""
        return {
            (src.name, dst.name, proto, port)
            for src in self.listening
            for dst, ports in self.listening.items()
            if src != dst and {NS, TEAM_NS} & {src.namespace, dst.namespace}
            for proto, port in ports
            if self.cluster.allowed(src, dst, proto, port)
        }


MLFLOW_CLIENTS = ["trainer-0", "trainer-1", "other-run-0", "inference", "trainop"]
PLATFORM = ["trainer-0", "trainer-1", "other-run-0", "mlflow", "inference", "trainop", "skyrun", "debug"]
TASKS = ["alice001-0", "alice001-1", "bob00001-0", "bob00001-1"]


def to_dns(sources: Iterable[str], server: str = "kube-dns") -> set[tuple[str, str, str, int]]:
    return {(s, server, proto, 53) for s in sources for proto in ("UDP", "TCP")}


def mesh(*pods: str) -> set[tuple[str, str, str, int]]:
    return {(a, b, "TCP", port) for a in pods for b in pods if a != b for port in (29500, 41234)}


def common(platform: list[str], controller: str) -> set[tuple[str, str, str, int]]:
    """What both stacks open, written from the design (docs/security.md, "Flows"); `controller` is the stack's
    ingress controller (ingressControllerNamespace)."""
    return (
        to_dns([*platform, *TASKS])
        | to_dns([*platform, *TASKS], "other-dns")  # the DNS pods' label, in whatever namespace they run
        | mesh("trainer-0", "trainer-1")  # one run's ranks, every port; never another run's
        | mesh("alice001-0", "alice001-1")  # one task's nodes; never another task's
        | mesh("bob00001-0", "bob00001-1")
        | {(s, "mlflow", "TCP", 5000) for s in [*MLFLOW_CLIENTS, *TASKS]}
        | {(s, "kube-apiserver", "TCP", 6443) for s in ("trainop", "skyrun")}
        # apiServerCidrs defaults to anywhere: the operator and the launcher also reach https elsewhere.
        | {(s, d, "TCP", 443) for s in ("trainop", "skyrun") for d in ("internet", "internet6")}
        # Tasks: package mirrors and datasets on http(s), IPv4 and IPv6 (taskEgressCidrs, taskEgressPorts).
        | {(t, "internet", "TCP", port) for t in TASKS for port in (80, 443)}
        | {(t, "internet6", "TCP", 443) for t in TASKS}
        | {(controller, "skyrun", "TCP", 8000)}
    )


def test_default_deny_covers_every_pod_both_ways() -> None:
    policies = World("dev").cluster.policies
    deny = next(p for p in policies if p["metadata"]["name"] == "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_dev_flows_exactly() -> None:
    world = World("dev")
    outside = [e.name for e in world.listening if e.namespace not in (NS, TEAM_NS)]  # tasks: egress policies
    expected = (
        common(PLATFORM, "traefik")
        # NodePorts: from anything outside the namespace (hence from anywhere), only the two published ports.
        | {(s, "inference", "TCP", 8080) for s in outside}
        | {(s, "mlflow", "TCP", 5000) for s in outside}
    )
    assert world.open_flows() == expected


def test_gpu_flows_exactly() -> None:
    world = World("gpu")
    got = world.open_flows()
    expected = (
        common([*PLATFORM, "postgres"], "ingress-nginx")
        | {("mlflow", "postgres", "TCP", 5432)}
        | {("ingress-nginx", "inference", "TCP", 8080)}  # ClusterIP: through the ingress controller only
    )
    assert got == expected


def test_tasks_never_reach_the_launcher_api_even_on_an_allowed_port() -> None:
    world = World("dev", taskEgressPorts=[443, 8000])
    skyrun = world.by_name["skyrun"]
    assert not world.cluster.allowed(world.by_name["alice001-0"], skyrun, "TCP", 8000)
    assert world.cluster.allowed(world.by_name["traefik"], skyrun, "TCP", 8000)
    assert not world.cluster.allowed(world.by_name["ingress-nginx"], skyrun, "TCP", 8000)  # not dev's controller


def test_cluster_specific_settings_move_the_edges() -> None:
    world = World(
        "dev",
        apiServerCidrs=[f"{NODE_IP}/32"],
        apiServerPorts=[8443, 6443],
        dnsCidrs=["169.254.20.10/32"],
        taskEgressCidrs=["203.0.113.0/24"],
        taskEgressPorts=[443],
        launcherClientCidrs=["198.51.100.0/24"],
    )
    c, e = world.cluster, world.by_name
    api_8443 = Endpoint("kube-apiserver", NODE_IP)
    assert c.allowed(e["trainop"], api_8443, "TCP", 8443) and c.allowed(e["skyrun"], api_8443, "TCP", 6443)
    assert not c.allowed(e["trainop"], e["internet"], "TCP", 443), "apiServerCidrs narrowed to the node"
    assert c.allowed(e["mlflow"], e["node-local-dns"], "UDP", 53), "dnsCidrs"
    assert c.allowed(e["alice001-0"], e["internet"], "TCP", 443)
    assert not c.allowed(e["alice001-0"], e["internet"], "TCP", 80), "taskEgressPorts"
    assert not c.allowed(e["alice001-0"], e["internet6"], "TCP", 443), "taskEgressCidrs has no IPv6 network"
    assert c.allowed(Endpoint("vpn-client", "198.51.100.9"), e["skyrun"], "TCP", 8000), "launcherClientCidrs"
    assert not c.allowed(Endpoint("stranger", "192.0.2.1"), e["skyrun"], "TCP", 8000)


def test_without_defaults_dns_to_node_local_dns_is_closed() -> None:
    world = World("dev")
    assert not world.cluster.allowed(world.by_name["mlflow"], world.by_name["node-local-dns"], "UDP", 53)


@pytest.mark.parametrize("discovery", ["dns", "kubernetes-api"])
def test_trainer_reaches_the_api_server_only_with_api_discovery(discovery: str) -> None:
    world = World("dev", rankDiscovery=discovery)
    api, c = world.by_name["kube-apiserver"], world.cluster
    assert c.allowed(world.by_name["trainer-0"], api, "TCP", 6443) == (discovery == "kubernetes-api")
    for name in ("inference", "mlflow", "debug", "alice001-0"):
        assert not c.allowed(world.by_name[name], api, "TCP", 6443), name


# --- the evaluator's own semantics, from the API's documentation ---------------------------------------------
def test_selector_semantics() -> None:
    labels = {"a": "1", "b": "2"}
    assert selector_matches({}, labels) and selector_matches({"matchLabels": {"a": "1"}}, labels)
    assert not selector_matches({"matchLabels": {"a": "2"}}, labels)
    expr = [{"key": "a", "operator": "In", "values": ["1", "3"]}, {"key": "c", "operator": "DoesNotExist"}]
    assert selector_matches({"matchExpressions": expr}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["2"]}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, labels)


def test_ip_block_except_and_families() -> None:
    block = {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}
    assert ip_block_matches(block, "10.2.3.4") and not ip_block_matches(block, "10.1.3.4")
    assert not ip_block_matches({"cidr": "0.0.0.0/0"}, "2001:db8::1")
    assert ip_block_matches({"cidr": "::/0"}, "2001:db8::1")


def test_policy_types_default_and_named_ports() -> None:
    server = Endpoint("srv", "10.0.0.2", "ns", {"app": "srv"}, {"http": ("TCP", 8080)})
    client = Endpoint("cli", "10.0.0.3", "ns", {"app": "cli"})
    ingress_only = {"metadata": {"namespace": "ns"}, "spec": {"podSelector": {"matchLabels": {"app": "srv"}},
                    "ingress": [{"ports": [{"port": "http"}]}]}}  # fmt: skip
    cluster = Cluster([ingress_only], {"ns": {}})
    assert cluster.allowed(client, server, "TCP", 8080)
    assert not cluster.allowed(client, server, "TCP", 9090)
    # No policyTypes and no egress rules: Ingress only, so the server's own egress stays open.
    assert cluster.allowed(server, client, "TCP", 1234)


def test_evaluator_is_not_vacuous() -> None:
    """Without policies everything is open; with only the default deny, nothing is."""
    world = World("dev")
    deny = [p for p in world.cluster.policies if p["metadata"]["name"] == "default-deny"]
    assert Cluster([], {NS: {}}).allowed(world.by_name["internet"], world.by_name["trainer-0"], "TCP", 29500)
    world.cluster = Cluster(deny, world.cluster.namespaces)
    assert world.open_flows() == set()
