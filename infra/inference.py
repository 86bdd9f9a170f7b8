"""The inference service: Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget and an optional
Ingress with a cert-manager Certificate."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.common import (
    AWAIT_CREATED_ONLY,
    checkov_skips,
    container_security_context,
    http_service_spec,
    labels,
    pod_security_context,
    resource_requirements,
    selector_labels,
    tmp_volume,
)
from infra.config import Resources
from infra.tls import AWAIT_READY

HTTP_PORT = 8080
# After SIGTERM the server keeps answering (readiness 503) for the drain delay, then waits for in-flight requests,
# each bounded by the request timeout; the grace period must cover both or the kubelet kills requests mid-flight.
DRAIN_DELAY_S = 5
REQUEST_TIMEOUT_S = 60
TERMINATION_GRACE_S = DRAIN_DELAY_S + REQUEST_TIMEOUT_S + 10
TLS_SECRET = "inference-tls"


@dataclass(frozen=True)
class IngressArgs:
    host: str
    """Host name served."""
    class_name: str
    """IngressClass."""
    tls_issuer: pulumi.Input[str] | None = None
    """cert-manager Issuer (same namespace) that signs the certificate; None serves plain HTTP."""


@dataclass(frozen=True)
class InferenceArgs:
    namespace: pulumi.Input[str]
    """Namespace of every object."""
    image: str
    """Platform image (runs `python -m inference serve`)."""
    image_pull_policy: str
    """Pull policy of `image`."""
    model_uri: str
    """Model to serve, e.g. models:/tiny-gpt@champion (the alias is polled and followed)."""
    tracking_uri: pulumi.Input[str]
    """MLflow tracking URI the model is loaded from."""
    resources: Resources
    """Per-pod requests and limits (the HPA's utilization is relative to the cpu request)."""
    service_type: str
    """NodePort or ClusterIP."""
    node_port: int
    """NodePort when service_type is NodePort."""
    min_replicas: int
    """HPA minimum."""
    max_replicas: int
    """HPA maximum."""
    cpu_utilization: int
    """HPA target average cpu utilization, percent."""
    scale_up_window_s: int
    """Scale-up stabilization window."""
    scale_down_window_s: int
    """Scale-down stabilization window."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    await_ready: bool = False
    """Make `pulumi up` wait for the Deployment to become Available. Off by default: pods are ready only once a
    model version carries the alias, which happens when training ends."""
    ingress: IngressArgs | None = None
    """Ingress in front of the Service; None for none."""
    pod_annotations: dict[str, str] = field(default_factory=dict)
    """Annotations of the pod template (the prometheus.io/* scrape annotations without the Prometheus Operator)."""


class InferenceService(pulumi.ComponentResource):
    """OpenAI-compatible completions behind an autoscaler. The Deployment has no `replicas`: the HPA owns the
    count, and a replicas field would make every `pulumi up` reset it."""

    deployment_name: pulumi.Output[str]
    """Name of the Deployment (the HPA's target)."""
    service_name: pulumi.Output[str]
    """Name of the Service."""
    url: pulumi.Output[str]
    """Where clients reach the service: the Ingress URL when there is one, else the in-cluster URL."""

    def __init__(self, name: str, args: InferenceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:inference:InferenceService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels("inference", args.instance, "serving")
        selector = selector_labels("inference", args.instance)

        def http_probe(path: str, period: int, failures: int) -> k8s.core.v1.ProbeArgs:
            return k8s.core.v1.ProbeArgs(
                http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port="http"),
                period_seconds=period,
                failure_threshold=failures,
                timeout_seconds=2,
            )

        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="inference",
                namespace=args.namespace,
                labels=meta_labels,
                annotations={
                    **checkov_skips(images=[args.image], pull_policy=args.image_pull_policy),
                    **({} if args.await_ready else AWAIT_CREATED_ONLY),
                },
            ),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_unavailable=0, max_surge=1),
                ),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=meta_labels, annotations=args.pod_annotations or None),
                    spec=k8s.core.v1.PodSpecArgs(
                        automount_service_account_token=False,
                        security_context=pod_security_context(),
                        termination_grace_period_seconds=TERMINATION_GRACE_S,
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="inference",
                                image=args.image,
                                image_pull_policy=args.image_pull_policy,
                                command=["python", "-m", "inference", "serve"],
                                env=[
                                    k8s.core.v1.EnvVarArgs(name="INFERENCE_MODEL_URI", value=args.model_uri),
                                    k8s.core.v1.EnvVarArgs(name="MLFLOW_TRACKING_URI", value=args.tracking_uri),
                                    k8s.core.v1.EnvVarArgs(name="INFERENCE_HOST", value="0.0.0.0"),
                                    k8s.core.v1.EnvVarArgs(name="INFERENCE_PORT", value=str(HTTP_PORT)),
                                    k8s.core.v1.EnvVarArgs(name="INFERENCE_DRAIN_DELAY_S", value=str(DRAIN_DELAY_S)),
                                    k8s.core.v1.EnvVarArgs(
                                        name="INFERENCE_REQUEST_TIMEOUT_S", value=str(REQUEST_TIMEOUT_S)
                                    ),
                                    k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
                                ],
                                ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=HTTP_PORT)],
                                resources=resource_requirements(args.resources),
                                security_context=container_security_context(),
                                # /livez answers as soon as the process serves; /readyz only with a model loaded,
                                # so a pod waiting for the first trained model is alive but receives no traffic.
                                startup_probe=http_probe("/livez", 2, 30),
                                readiness_probe=http_probe("/readyz", 5, 2),
                                liveness_probe=http_probe("/livez", 10, 3),
                                volume_mounts=[k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp")],
                            )
                        ],
                        volumes=[tmp_volume(size="1Gi")],
                    ),
                ),
            ),
            opts=child,
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="inference",
                namespace=args.namespace,
                labels=meta_labels,
                # The provider waits for a Service to have ready endpoints; there are none until a model exists.
                annotations=None if args.await_ready else {"pulumi.com/skipAwait": "true"},
            ),
            spec=http_service_spec(args.service_type, selector, HTTP_PORT, args.node_port),
            opts=child,
        )
        self.hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="inference", namespace=args.namespace, labels=meta_labels),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=self.deployment.metadata.name
                ),
                min_replicas=args.min_replicas,
                max_replicas=args.max_replicas,
                metrics=[
                    k8s.autoscaling.v2.MetricSpecArgs(
                        type="Resource",
                        resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                            name="cpu",
                            target=k8s.autoscaling.v2.MetricTargetArgs(
                                type="Utilization", average_utilization=args.cpu_utilization
                            ),
                        ),
                    )
                ],
                behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                    scale_up=k8s.autoscaling.v2.HPAScalingRulesArgs(
                        stabilization_window_seconds=args.scale_up_window_s,
                        select_policy="Max",
                        policies=[
                            k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Pods", value=2, period_seconds=30),
                            k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Percent", value=100, period_seconds=30),
                        ],
                    ),
                    scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(
                        stabilization_window_seconds=args.scale_down_window_s,
                        select_policy="Min",
                        policies=[k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Pods", value=1, period_seconds=60)],
                    ),
                ),
            ),
            opts=child,
        )
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="inference", namespace=args.namespace, labels=meta_labels),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                # One pod at a time may go. minAvailable 1 would block every drain while the HPA runs 1 replica.
                max_unavailable=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                # A crash-looping pod must not block node drains.
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=child,
        )
        self.deployment_name = self.deployment.metadata.name
        self.service_name = self.service.metadata.name
        self.url = pulumi.Output.concat(
            "http://", self.service.metadata.name, ".", args.namespace, f".svc.cluster.local:{HTTP_PORT}"
        )
        if args.ingress is not None:
            self.url = pulumi.Output.from_input(
                f"{'https' if args.ingress.tls_issuer is not None else 'http'}://{args.ingress.host}"
            )
            self._ingress(name, args, args.ingress, meta_labels)
        self.register_outputs(
            {"deployment_name": self.deployment_name, "service_name": self.service_name, "url": self.url}
        )

    def _ingress(self, name: str, args: InferenceArgs, ingress: IngressArgs, meta_labels: dict[str, str]) -> None:
        # The IngressClass must exist: read it, so that `pulumi preview` (and with it `pulumi up`, which previews
        # before creating anything) fails naming the key when no controller of that class is installed. The logical
        # name is what the error shows: `IngressClass inference-ingressClassName=<class> error: Preview failed:
        # resource '<class>' does not exist` (docs/tls.md).
        ingress_class = k8s.networking.v1.IngressClass.get(
            f"{name}-ingressClassName={ingress.class_name}",
            ingress.class_name,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, depends_on=[ingress_class])
        tls = None
        if ingress.tls_issuer is not None:
            # cert-manager has no typed SDK here; the CustomResource spec mirrors cert-manager.io/v1 Certificate.
            self.certificate = k8s.apiextensions.CustomResource(
                f"{name}-certificate",
                api_version="cert-manager.io/v1",
                kind="Certificate",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name="inference", namespace=args.namespace, labels=meta_labels, annotations=AWAIT_READY
                ),
                spec={
                    "secretName": TLS_SECRET,
                    "dnsNames": [ingress.host],
                    "issuerRef": {"name": ingress.tls_issuer, "kind": "Issuer", "group": "cert-manager.io"},
                    "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                },
                opts=child,
            )
            tls = [k8s.networking.v1.IngressTLSArgs(hosts=[ingress.host], secret_name=TLS_SECRET)]
        self.ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="inference",
                namespace=args.namespace,
                labels=meta_labels,
                # The controller may take long to publish an address (or never, on kind without a load balancer).
                annotations={"pulumi.com/skipAwait": "true"},
            ),
            spec=k8s.networking.v1.IngressSpecArgs(
                ingress_class_name=ingress.class_name,
                tls=tls,
                rules=[
                    k8s.networking.v1.IngressRuleArgs(
                        host=ingress.host,
                        http=k8s.networking.v1.HTTPIngressRuleValueArgs(
                            paths=[
                                k8s.networking.v1.HTTPIngressPathArgs(
                                    path="/",
                                    path_type="Prefix",
                                    backend=k8s.networking.v1.IngressBackendArgs(
                                        service=k8s.networking.v1.IngressServiceBackendArgs(
                                            name=self.service.metadata.name,
                                            port=k8s.networking.v1.ServiceBackendPortArgs(name="http"),
                                        )
                                    ),
                                )
                            ]
                        ),
                    )
                ],
            ),
            opts=child,
        )
