"""NetworkPolicies: deny everything in the namespace, then allow exactly the paths the platform uses.

Which flows are allowed and which denied is the hand-written table of docs/security.md; tests/cluster/
test_network_flows.py probes it with real pods under a real enforcer. Pods and namespaces are matched by labels,
never by address; ipBlocks serve only for what is not a pod: the API server's endpoints, DNS servers outside the
pod network, and destinations outside the cluster (NetworkSettings; per CNI in docs/security.md).

The ranks of one training run (or of one launched task) reach each other on every port; those policies come with
the run's own objects (workloads/training.py, skyrun/manifests.py): only a per-run selector keeps two runs apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import allow_dns_spec, labels
from infra.config.settings import NetworkSettings
from infra.launcher import NAME as LAUNCHER_NAME
from infra.teams import PLATFORM_LABEL
from infra.trainingjobs import NAME as OPERATOR_NAME
from workloads.task import LAUNCHER_HTTP_PORT, TASK_LABEL

NAME_LABEL = "app.kubernetes.io/name"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
ACME_SOLVER_LABEL = "acme.cert-manager.io/http01-solver"
ACME_SOLVER_PORT = 8089
ANYWHERE = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class NetworkPoliciesArgs:
    namespace: pulumi.Input[str]
    """Namespace the policies isolate."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    network: NetworkSettings
    """DNS, API server, task egress and launcher clients: what differs between clusters."""
    mlflow_port: int
    """MLflow's container port."""
    inference_port: int
    """The inference container port."""
    postgres_port: int | None
    """PostgreSQL's port when MLflow uses it; None without a database."""
    api_discovery: bool
    """Trainer pods list pods through the Kubernetes API (egress to the API server)."""
    node_ports: bool
    """Services are NodePorts: inference and MLflow accept traffic from outside the cluster on their ports."""
    ingress_controller_namespace: str
    """Namespace of the ingress controller that forwards to inference (and to ACME HTTP-01 solvers)."""
    acme: bool
    """ACME HTTP-01 solver pods run in the namespace during certificate issuance."""
    operator: bool = False
    """The TrainingJob operator runs here: egress to the Kubernetes API and to MLflow (progress)."""
    team_tasks: str = ""
    """The platform whose team namespaces run tasks (infra/teams.py's PLATFORM_LABEL value; "" = none): their task
    pods reach MLflow here."""
    launcher: bool = False
    """The task launcher runs here: its API (from the namespace's pods that are not tasks, the ingress controller
    and `network.launcher_client_cidrs`), its egress to the Kubernetes API, and its tasks' egress (MLflow and
    `network.task_egress_cidrs`)."""
    launcher_port: int = LAUNCHER_HTTP_PORT
    """The launcher API's container port."""


def _pods(name: str) -> k8s.meta.v1.LabelSelectorArgs:
    return k8s.meta.v1.LabelSelectorArgs(match_labels={NAME_LABEL: name})


def _peer_pods(name: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(pod_selector=_pods(name))


def _peer_namespace(namespace: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={NAMESPACE_LABEL: namespace})
    )


def _cidrs(cidrs: Sequence[str]) -> list[k8s.networking.v1.NetworkPolicyPeerArgs]:
    return [k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=c)) for c in cidrs]


def _tcp(*ports: int) -> list[k8s.networking.v1.NetworkPolicyPortArgs]:
    return [k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=p) for p in ports]


TASK_PODS = k8s.meta.v1.LabelSelectorArgs(match_labels={TASK_LABEL: "true"})
NOT_TASK_PODS = k8s.meta.v1.LabelSelectorArgs(
    match_expressions=[k8s.meta.v1.LabelSelectorRequirementArgs(key=TASK_LABEL, operator="DoesNotExist")]
)


class NetworkPolicies(pulumi.ComponentResource):
    """Default deny of ingress and egress for every pod of the namespace, then one policy per allowed path.

    Allowed: DNS to the cluster DNS pods (by label, in any namespace) and `dns_cidrs`; trainer, inference, the
    operator and tasks to MLflow; MLflow to PostgreSQL; clients to inference (from anywhere with NodePorts, else
    from the ingress controller's namespace and this namespace); the MLflow UI from outside with NodePorts; the
    operator, the launcher and (with API discovery) the trainer to the API server's endpoints; users to the
    launcher API; tasks to `task_egress_cidrs`; the ingress controller to ACME solver pods. Prometheus's paths are
    infra/monitoring.py's; rank to rank comes with each run (module docstring)."""

    policy_names: list[pulumi.Output[str]]
    """Names of every NetworkPolicy created."""

    def __init__(self, name: str, args: NetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:network:NetworkPolicies", name, None, opts)
        meta_labels = labels("network-policy", args.instance, "security")
        np = k8s.networking.v1
        net = args.network
        self.policies: list[k8s.networking.v1.NetworkPolicy] = []

        def policy(role: str, spec: k8s.networking.v1.NetworkPolicySpecArgs) -> None:
            self.policies.append(
                np.NetworkPolicy(
                    f"{name}-{role}",
                    metadata=k8s.meta.v1.ObjectMetaArgs(name=role, namespace=args.namespace, labels=meta_labels),
                    spec=spec,
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )

        everything = k8s.meta.v1.LabelSelectorArgs()
        policy("default-deny", np.NetworkPolicySpecArgs(pod_selector=everything, policy_types=["Ingress", "Egress"]))
        policy("allow-dns", allow_dns_spec(net.dns_pod_labels, net.dns_cidrs))
        clients = ("trainer", "inference", OPERATOR_NAME) if args.operator else ("trainer", "inference")
        mlflow_clients = [_peer_pods(client) for client in clients]
        if args.team_tasks:
            team_namespaces = k8s.meta.v1.LabelSelectorArgs(match_labels={PLATFORM_LABEL: args.team_tasks})
            mlflow_clients.append(np.NetworkPolicyPeerArgs(namespace_selector=team_namespaces, pod_selector=TASK_PODS))
        for client in clients:
            policy(
                f"{client}-to-mlflow",
                np.NetworkPolicySpecArgs(
                    pod_selector=_pods(client),
                    policy_types=["Egress"],
                    egress=[np.NetworkPolicyEgressRuleArgs(to=[_peer_pods("mlflow")], ports=_tcp(args.mlflow_port))],
                ),
            )
        mlflow_ingress = [np.NetworkPolicyIngressRuleArgs(from_=mlflow_clients, ports=_tcp(args.mlflow_port))]
        if args.node_ports:
            # The MLflow UI through the NodePort: traffic arrives from node addresses, so no pod selector fits.
            mlflow_ingress.append(np.NetworkPolicyIngressRuleArgs(from_=_cidrs(ANYWHERE), ports=_tcp(args.mlflow_port)))
        policy(
            "mlflow-ingress",
            np.NetworkPolicySpecArgs(pod_selector=_pods("mlflow"), policy_types=["Ingress"], ingress=mlflow_ingress),
        )
        if args.postgres_port is not None:
            policy(
                "mlflow-to-postgres",
                np.NetworkPolicySpecArgs(
                    pod_selector=_pods("mlflow"),
                    policy_types=["Egress"],
                    egress=[
                        np.NetworkPolicyEgressRuleArgs(to=[_peer_pods("postgres")], ports=_tcp(args.postgres_port))
                    ],
                ),
            )
            policy(
                "postgres-ingress",
                np.NetworkPolicySpecArgs(
                    pod_selector=_pods("postgres"),
                    policy_types=["Ingress"],
                    ingress=[
                        np.NetworkPolicyIngressRuleArgs(from_=[_peer_pods("mlflow")], ports=_tcp(args.postgres_port))
                    ],
                ),
            )
        if args.node_ports:
            inference_sources = _cidrs(ANYWHERE)
        else:
            same_namespace = np.NetworkPolicyPeerArgs(pod_selector=everything)
            inference_sources = [_peer_namespace(args.ingress_controller_namespace), same_namespace]
        policy(
            "inference-ingress",
            np.NetworkPolicySpecArgs(
                pod_selector=_pods("inference"),
                policy_types=["Ingress"],
                ingress=[np.NetworkPolicyIngressRuleArgs(from_=inference_sources, ports=_tcp(args.inference_port))],
            ),
        )
        api_clients = [n for n, on in (("trainer", args.api_discovery), (OPERATOR_NAME, args.operator),
                                       (LAUNCHER_NAME, args.launcher)) if on]  # fmt: skip
        if api_clients:
            # After the kubernetes Service's DNAT, packets go to the API server's endpoints: addresses of nodes that
            # no pod or namespace selector matches, hence the one ipBlock rule toward the cluster itself.
            api_pods = k8s.meta.v1.LabelSelectorArgs(
                match_expressions=[
                    k8s.meta.v1.LabelSelectorRequirementArgs(key=NAME_LABEL, operator="In", values=api_clients)
                ]
            )
            policy(
                "kubernetes-api-clients",
                np.NetworkPolicySpecArgs(
                    pod_selector=api_pods,
                    policy_types=["Egress"],
                    egress=[
                        np.NetworkPolicyEgressRuleArgs(
                            to=_cidrs(net.api_server_cidrs), ports=_tcp(*net.api_server_ports)
                        )
                    ],
                ),
            )
        if args.launcher:
            # Users reach the API with a bearer token: from pods of this namespace that are not tasks (user code gets
            # no API of its own), from the ingress controller, and from `launcher_client_cidrs`. kubectl
            # port-forward enters the pod's own network namespace, where no policy applies.
            launcher_sources = [
                np.NetworkPolicyPeerArgs(pod_selector=NOT_TASK_PODS),
                _peer_namespace(args.ingress_controller_namespace),
                *_cidrs(net.launcher_client_cidrs),
            ]
            policy(
                "launcher-api-ingress",
                np.NetworkPolicySpecArgs(
                    pod_selector=_pods(LAUNCHER_NAME),
                    policy_types=["Ingress"],
                    ingress=[np.NetworkPolicyIngressRuleArgs(from_=launcher_sources, ports=_tcp(args.launcher_port))],
                ),
            )
            # Tasks run in the team namespaces, with those namespaces' policies (infra/teams.py).
        if args.acme:
            policy(
                "acme-solver-ingress",
                np.NetworkPolicySpecArgs(
                    pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={ACME_SOLVER_LABEL: "true"}),
                    policy_types=["Ingress"],
                    ingress=[
                        np.NetworkPolicyIngressRuleArgs(
                            from_=[_peer_namespace(args.ingress_controller_namespace)], ports=_tcp(ACME_SOLVER_PORT)
                        )
                    ],
                ),
            )
        self.policy_names = [p.metadata.name for p in self.policies]
        self.register_outputs({"policy_names": self.policy_names})
