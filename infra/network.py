"""NetworkPolicies: deny everything in the namespace, then allow exactly the paths the platform uses."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import labels

NAME_LABEL = "app.kubernetes.io/name"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
ACME_SOLVER_LABEL = "acme.cert-manager.io/http01-solver"
ACME_SOLVER_PORT = 8089


@dataclass(frozen=True)
class NetworkPoliciesArgs:
    namespace: pulumi.Input[str]
    """Namespace the policies isolate."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    mlflow_port: int
    """MLflow's container port."""
    inference_port: int
    """The inference container port."""
    postgres_port: int | None
    """PostgreSQL's port when MLflow uses it; None without a database."""
    api_discovery: bool
    """Trainer pods list pods through the Kubernetes API (egress to the API server on 443 and 6443)."""
    node_ports: bool
    """Services are NodePorts: inference and MLflow accept traffic from outside the cluster on their ports."""
    ingress_controller_namespace: str
    """Namespace of the ingress controller that forwards to inference (and to ACME HTTP-01 solvers)."""
    acme: bool
    """ACME HTTP-01 solver pods run in the namespace during certificate issuance."""
    operator: bool = False
    """The TrainingJob operator runs here: egress to the Kubernetes API and to MLflow (progress)."""


def _pods(name: str) -> k8s.meta.v1.LabelSelectorArgs:
    return k8s.meta.v1.LabelSelectorArgs(match_labels={NAME_LABEL: name})


def _peer_pods(name: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(pod_selector=_pods(name))


def _peer_namespace(namespace: str) -> k8s.networking.v1.NetworkPolicyPeerArgs:
    return k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={NAMESPACE_LABEL: namespace})
    )


def _anywhere() -> list[k8s.networking.v1.NetworkPolicyPeerArgs]:
    return [k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr="0.0.0.0/0"))]


def _tcp(*ports: int) -> list[k8s.networking.v1.NetworkPolicyPortArgs]:
    return [k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=p) for p in ports]


class NetworkPolicies(pulumi.ComponentResource):
    """Default deny of ingress and egress for every pod of the namespace, then one policy per allowed path.

    Allowed: DNS to kube-system; trainer pods to each other on every TCP port (gloo and NCCL open pairwise
    connections on ephemeral ports after the rendezvous on the master port); trainer and inference to MLflow;
    MLflow to PostgreSQL; clients to inference (from anywhere with NodePorts, else from the ingress controller's
    namespace and this namespace); the MLflow UI from outside with NodePorts; the trainer to the Kubernetes API
    only with API discovery; the TrainingJob operator to the Kubernetes API and MLflow; the ingress controller to
    ACME solver pods."""

    policy_names: list[pulumi.Output[str]]
    """Names of every NetworkPolicy created."""

    def __init__(self, name: str, args: NetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:network:NetworkPolicies", name, None, opts)
        meta_labels = labels("network-policy", args.instance, "security")
        np = k8s.networking.v1
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
        policy(
            "allow-dns",
            np.NetworkPolicySpecArgs(
                pod_selector=everything,
                policy_types=["Egress"],
                egress=[
                    np.NetworkPolicyEgressRuleArgs(
                        to=[_peer_namespace("kube-system")],
                        ports=[
                            np.NetworkPolicyPortArgs(protocol="UDP", port=53),
                            np.NetworkPolicyPortArgs(protocol="TCP", port=53),
                        ],
                    )
                ],
            ),
        )
        all_tcp = [np.NetworkPolicyPortArgs(protocol="TCP", port=1, end_port=65535)]
        policy(
            "trainer-collectives",
            np.NetworkPolicySpecArgs(
                pod_selector=_pods("trainer"),
                policy_types=["Ingress", "Egress"],
                ingress=[np.NetworkPolicyIngressRuleArgs(from_=[_peer_pods("trainer")], ports=all_tcp)],
                egress=[np.NetworkPolicyEgressRuleArgs(to=[_peer_pods("trainer")], ports=all_tcp)],
            ),
        )
        clients = ("trainer", "inference", "trainop") if args.operator else ("trainer", "inference")
        mlflow_clients = [_peer_pods(client) for client in clients]
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
            mlflow_ingress.append(np.NetworkPolicyIngressRuleArgs(from_=_anywhere(), ports=_tcp(args.mlflow_port)))
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
            inference_sources = _anywhere()
        else:
            same_namespace = np.NetworkPolicyPeerArgs(pod_selector=k8s.meta.v1.LabelSelectorArgs())
            inference_sources = [_peer_namespace(args.ingress_controller_namespace), same_namespace]
        policy(
            "inference-ingress",
            np.NetworkPolicySpecArgs(
                pod_selector=_pods("inference"),
                policy_types=["Ingress"],
                ingress=[np.NetworkPolicyIngressRuleArgs(from_=inference_sources, ports=_tcp(args.inference_port))],
            ),
        )
        if args.api_discovery:
            # The API server's address is not known here (and differs per cluster); only its ports are.
            policy(
                "trainer-to-kubernetes-api",
                np.NetworkPolicySpecArgs(
                    pod_selector=_pods("trainer"),
                    policy_types=["Egress"],
                    egress=[np.NetworkPolicyEgressRuleArgs(to=_anywhere(), ports=_tcp(443, 6443))],
                ),
            )
        if args.operator:
            # The operator watches TrainingJobs and creates their Jobs: egress to the API server's ports.
            policy(
                "trainop-to-kubernetes-api",
                np.NetworkPolicySpecArgs(
                    pod_selector=_pods("trainop"),
                    policy_types=["Egress"],
                    egress=[np.NetworkPolicyEgressRuleArgs(to=_anywhere(), ports=_tcp(443, 6443))],
                ),
            )
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
