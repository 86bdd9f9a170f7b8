"""NetworkPolicies, evaluated with Kubernetes' semantics over the rendered stacks: every path the platform needs
is open, and nothing else is."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import objects_of, render_stack

NAMESPACE = "ml-platform"


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None = None  # None: outside the cluster (an IP address)
    labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.244.0.10"

    def __hash__(self) -> int:
        return hash(self.name)


def pod(name: str, namespace: str = NAMESPACE, **labels: str) -> Endpoint:
    return Endpoint(name, namespace, {"app.kubernetes.io/name": name, **labels})


TRAINER, INFERENCE, MLFLOW, POSTGRES = pod("trainer"), pod("inference"), pod("mlflow"), pod("postgres")
DEBUG = pod("debug")  # any other pod someone runs in the namespace
PLATFORM = [TRAINER, INFERENCE, MLFLOW, POSTGRES, DEBUG]
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
INGRESS_CONTROLLER = Endpoint("ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
OTHER_TEAM = Endpoint("other-team", "team-b", {"app": "x"})
INTERNET = Endpoint("internet", None, ip="203.0.113.7")
API_SERVER = Endpoint("kube-apiserver", None, ip="10.96.0.1")
PORTS = [("TCP", 53), ("UDP", 53), ("TCP", 443), ("TCP", 5000), ("TCP", 5432), ("TCP", 8080), ("TCP", 29500),
         ("TCP", 41234), ("TCP", 6443)]  # fmt: skip


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def peer_matches(peer: dict[str, Any], other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return ipaddress.ip_address(other.ip) in ipaddress.ip_network(peer["ipBlock"]["cidr"])
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not selector_matches(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != NAMESPACE:
        return False
    return selector_matches(peer.get("podSelector"), other.labels)


def port_matches(ports: list[dict[str, Any]] | None, proto: str, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != proto:
            continue
        if "port" not in p or p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def allowed(policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, proto: str, port: int) -> bool:
    def side(pod_: Endpoint, direction: str, peer: Endpoint) -> bool:
        if pod_.namespace != NAMESPACE:
            return True  # other namespaces carry no policies of ours
        selecting = [p for p in policies if selector_matches(p["spec"]["podSelector"], pod_.labels)
                     and direction in p["spec"]["policyTypes"]]  # fmt: skip
        if not selecting:
            return True
        key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        return any(
            port_matches(rule.get("ports"), proto, port)
            and (not rule.get(peers_key) or any(peer_matches(pe, peer) for pe in rule[peers_key]))
            for p in selecting
            for rule in p["spec"].get(key, [])
        )

    return side(src, "Egress", dst) and side(dst, "Ingress", src)


def open_paths(policies: list[dict[str, Any]], sources: list[Endpoint], destinations: list[Endpoint]) -> set:
    """Every (source, destination, protocol, port) allowed where at least one end is a platform pod."""
    return {
        (s.name, d.name, proto, port)
        for s in sources
        for d in destinations
        if (s != d or s is TRAINER) and NAMESPACE in (s.namespace, d.namespace)
        for proto, port in PORTS
        if allowed(policies, s, d, proto, port)
    }


def policies_of(stack: str, **overrides: Any) -> list[dict[str, Any]]:
    return [o for o in objects_of(render_stack(stack, **overrides)) if o["kind"] == "NetworkPolicy"]


def dns(*pods: Endpoint) -> set:
    return {(p.name, "kube-dns", proto, 53) for p in pods for proto in ("TCP", "UDP")}


def trainer_mesh() -> set:
    return {("trainer", "trainer", "TCP", port) for _, port in PORTS if port != 53} | {
        ("trainer", "trainer", "TCP", 53)
    }


def test_default_deny_covers_every_pod_both_ways() -> None:
    deny = next(p for p in policies_of("dev") if p["metadata"]["name"] == "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_dev_paths_exactly() -> None:
    policies = policies_of("dev")
    sources = [*PLATFORM, INTERNET, OTHER_TEAM, INGRESS_CONTROLLER]
    destinations = [*PLATFORM, KUBE_DNS, INTERNET, API_SERVER]
    expected = (
        dns(*PLATFORM)
        | trainer_mesh()
        | {("trainer", "mlflow", "TCP", 5000), ("inference", "mlflow", "TCP", 5000)}
        # NodePorts: traffic from outside (and hence from anywhere) reaches only the two published ports.
        | {(s.name, "inference", "TCP", 8080) for s in (INTERNET, OTHER_TEAM, INGRESS_CONTROLLER)}
        | {(s.name, "mlflow", "TCP", 5000) for s in (INTERNET, OTHER_TEAM, INGRESS_CONTROLLER)}
    )
    assert open_paths(policies, sources, destinations) == expected


def test_gpu_paths_exactly() -> None:
    policies = policies_of("gpu")
    sources = [*PLATFORM, INTERNET, OTHER_TEAM, INGRESS_CONTROLLER]
    destinations = [*PLATFORM, KUBE_DNS, INTERNET, API_SERVER]
    expected = (
        dns(*PLATFORM)
        | trainer_mesh()
        | {("trainer", "mlflow", "TCP", 5000), ("inference", "mlflow", "TCP", 5000)}
        | {("mlflow", "postgres", "TCP", 5432)}
        | {("ingress-nginx", "inference", "TCP", 8080)}
    )
    got = open_paths(policies, sources, destinations)
    assert got == expected
    assert ("internet", "inference", "TCP", 8080) not in got
    assert ("other-team", "mlflow", "TCP", 5000) not in got
    assert ("trainer", "postgres", "TCP", 5432) not in got


def test_acme_solvers_reachable_from_the_ingress_controller_only() -> None:
    policies = policies_of("gpu")
    solver = pod("cm-acme-http-solver", **{"acme.cert-manager.io/http01-solver": "true"})
    assert allowed(policies, INGRESS_CONTROLLER, solver, "TCP", 8089)
    assert not allowed(policies, INTERNET, solver, "TCP", 8089)
    assert not allowed(policies, OTHER_TEAM, solver, "TCP", 8089)


@pytest.mark.parametrize("discovery", ["dns", "kubernetes-api"])
def test_trainer_reaches_the_api_server_only_with_api_discovery(discovery: str) -> None:
    policies = policies_of("dev", rankDiscovery=discovery)
    for port in (443, 6443):
        assert allowed(policies, TRAINER, API_SERVER, "TCP", port) == (discovery == "kubernetes-api")
        assert not allowed(policies, INFERENCE, API_SERVER, "TCP", port)
        assert not allowed(policies, MLFLOW, API_SERVER, "TCP", port)


def test_evaluator_is_not_vacuous() -> None:
    """Without policies everything is open; with only the default deny, nothing is."""
    assert allowed([], INTERNET, TRAINER, "TCP", 29500)
    deny = [p for p in policies_of("dev") if p["metadata"]["name"] == "default-deny"]
    assert open_paths(deny, [*PLATFORM, INTERNET], [*PLATFORM, KUBE_DNS, INTERNET]) == set()
