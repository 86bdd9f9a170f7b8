"""A NetworkPolicy evaluator with the semantics of the Kubernetes API (networking.k8s.io/v1), as
kube-network-policies (what kind ships, and the cluster tier's enforcer) applies them. Used by the unit tests to
read the rendered stacks, and checked against the real enforcer by tests/cluster/test_network_flows.py.

Semantics implemented (each one a documented rule of the API, not a reading of our own policies):
- a policy applies to the pods of its namespace that its `podSelector` selects (matchLabels and matchExpressions:
  In, NotIn, Exists, DoesNotExist; an empty selector selects all);
- `policyTypes` defaults to Ingress, plus Egress when the policy has egress rules;
- a pod selected by no policy of a direction is open in that direction; else a connection passes when any rule of
  any selecting policy admits it; both the source's egress and the destination's ingress must admit it;
- a rule without `ports` admits every port; a port entry defaults to TCP; `port` may be a number (with `endPort`
  a range) or a name, resolved against the destination pod's container ports; an entry without `port` admits
  every port of its protocol;
- a rule without peers admits every peer; a peer with only `podSelector` means pods of the policy's namespace,
  with only `namespaceSelector` all pods of the selected namespaces, with both the selected pods of the selected
  namespaces; `ipBlock` matches any address in `cidr` and in none of `except` (pod addresses included, as
  kube-network-policies and Calico do; Cilium does not match node addresses, see docs/security.md);
- an address that is no pod (a node, the internet) is matched only by ipBlocks; traffic is judged after the
  Service's DNAT, so the API server is its endpoint (a node address and port 6443), not the Service address.

`unfiltered_destinations` models an enforcer's blind spot: kube-network-policies judges forwarded packets only, so
a pod's connection to its own node's address (a host-network API server on a single-node kind cluster) passes
whatever the policies say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from skyrun.manifests import Launch, task_manifests
from skyrun.task_spec import parse_task


@dataclass(frozen=True)
class Endpoint:
    """A pod (with a namespace, its labels and named ports) or an address outside any pod (namespace None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    named_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    """Container port name -> (protocol, number)."""

    def __hash__(self) -> int:
        return hash((self.name, self.ip))


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpressions requirement must hold."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def ip_block_matches(block: Mapping[str, Any], ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"])
    if addr.version != net.version or addr not in net:
        return False
    return not any(
        addr.version == ipaddress.ip_network(e).version and addr in ipaddress.ip_network(e)
        for e in block.get("except") or []
    )


class Cluster:
    """Namespaces with their labels, and the policies; `allowed` judges one connection."""

    def __init__(
        self,
        policies: Iterable[Mapping[str, Any]],
        namespaces: Mapping[str, Mapping[str, str]],
        *,
        unfiltered_destinations: Iterable[str] = (),
    ) -> None:
        self.policies = list(policies)
        self.unfiltered = set(unfiltered_destinations)
        # The API server labels every namespace with its own name.
        self.namespaces = {ns: {"kubernetes.io/metadata.name": ns, **labels} for ns, labels in namespaces.items()}

    def peer_matches(self, peer: Mapping[str, Any], policy_ns: str, other: Endpoint) -> bool:
        if "ipBlock" in peer:
            return ip_block_matches(peer["ipBlock"], other.ip)
        if other.namespace is None:
            return False
        if "namespaceSelector" in peer:
            if not selector_matches(peer["namespaceSelector"], self.namespaces.get(other.namespace, {})):
                return False
        elif other.namespace != policy_ns:
            return False
        return selector_matches(peer.get("podSelector"), other.labels)

    @staticmethod
    def port_matches(ports: Sequence[Mapping[str, Any]] | None, dst: Endpoint, proto: str, port: int) -> bool:
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != proto:
                continue
            if "port" not in p:
                return True
            want = p["port"]
            if isinstance(want, str) and not want.isdigit():
                if dst.named_ports.get(want) == (proto, port):
                    return True
                continue
            low = int(want)
            if low <= port <= int(p.get("endPort", low)):
                return True
        return False

    def _side(self, pod: Endpoint, direction: str, peer: Endpoint, dst: Endpoint, proto: str, port: int) -> bool:
        if pod.namespace is None:
            return True  # not a pod: no policy applies to it
        selecting = [
            p for p in self.policies
            if p["metadata"]["namespace"] == pod.namespace
            and selector_matches(p["spec"].get("podSelector") or {}, pod.labels)
            and direction in policy_types(p)
        ]  # fmt: skip
        if not selecting:
            return True
        key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        return any(
            self.port_matches(rule.get("ports"), dst, proto, port)
            and (
                not rule.get(peers_key)
                or any(self.peer_matches(pe, p["metadata"]["namespace"], peer) for pe in rule[peers_key])
            )
            for p in selecting
            for rule in p["spec"].get(key) or []
        )

    def allowed(self, src: Endpoint, dst: Endpoint, proto: str, port: int) -> bool:
        """Whether a connection from `src` to `dst`:`port` passes both ends' policies."""
        if dst.ip in self.unfiltered:
            return True
        return self._side(src, "Egress", dst, dst, proto, port) and self._side(dst, "Ingress", src, dst, proto, port)


# --- what the policies are judged over: the rendered stacks' pods and the launcher's tasks -----------------------
def template_labels(objects: Iterable[Mapping[str, Any]], name: str) -> dict[str, str]:
    """The pod labels of the rendered workload whose pods are app.kubernetes.io/name=`name` (who a pod is; the
    verdicts never come from here)."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            if labels.get("app.kubernetes.io/name") == name:
                return dict(labels)
    raise AssertionError(f"the rendered stack has no pods named {name}")


def task_objects(task_id: str, user: str, namespace: str) -> list[dict[str, Any]]:
    """The objects the launcher creates for a 2-node task of `user` (its NetworkPolicy among them)."""
    task = parse_task({"num_nodes": 2, "run": "torchrun train.py"}).task
    launch = Launch(task_id=task_id, user=user, namespace=namespace, default_image="img:1",
                    image_pull_policy="IfNotPresent", default_cpus="1", default_memory="2Gi")  # fmt: skip
    return task_manifests(task, launch).objects()
