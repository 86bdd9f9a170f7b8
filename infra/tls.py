"""TLS: optionally cert-manager itself, and the Issuer that signs the platform's certificates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.common import labels, pod_security_labels

CA_SECRET = "ml-platform-ca"
ACME_ACCOUNT_SECRET = "ml-platform-acme-account"
CERT_MANAGER_IMAGES = ("controller", "webhook", "cainjector", "acmesolver")
"""cert-manager's images: <registry path>/cert-manager-<component>:<version>."""
CERTIFICATE_CRD = "certificates.cert-manager.io"
AWAIT_TIMEOUT_S = 300
"""How long `pulumi up` waits for a Certificate to be issued, or for cert-manager's webhook to get its CA."""
AWAIT_READY = {"pulumi.com/waitFor": "condition=Ready", "pulumi.com/timeoutSeconds": str(AWAIT_TIMEOUT_S)}
"""`pulumi up` waits for a Certificate to be Ready (issued), and fails naming it when it is not within the bound."""
WEBHOOK_CONFIGURATIONS = (
    "kubernetes:admissionregistration.k8s.io/v1:ValidatingWebhookConfiguration",
    "kubernetes:admissionregistration.k8s.io/v1:MutatingWebhookConfiguration",
)


def cert_manager_values(images: str, version: str) -> dict[str, object]:
    """Values for cert-manager's own chart (deploy/charts/cert-manager) installed from a local directory."""
    values: dict[str, object] = {
        # The chart's default `crds.keep` puts Helm's keep policy on its CRDs, which Pulumi's Chart honours: a
        # `pulumi destroy` would leave them, and the next `pulumi up` fail on them ("already exists"). The stack
        # owns the cert-manager it installs: its CRDs go with it.
        "crds": {"enabled": True, "keep": False},
        # A post-install Helm hook: Pulumi's Chart drops hooks, so it would never run; the stack waits itself.
        "startupapicheck": {"enabled": False},
    }
    for component in CERT_MANAGER_IMAGES:
        image = {"repository": f"{images}/cert-manager-{component}", "tag": version}
        if component == "controller":
            values["image"] = image
        else:
            values[component] = {"image": image}
    return values


def wait_for_injected_ca_bundle(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult | None:
    """Make `pulumi up` wait until cainjector has filled the webhook configuration's caBundle."""
    if args.type_ not in WEBHOOK_CONFIGURATIONS:
        return None
    props: dict[str, Any] = dict(args.props)
    metadata = dict(props.get("metadata") or {})
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        "pulumi.com/waitFor": "jsonpath={.webhooks[0].clientConfig.caBundle}",
        "pulumi.com/timeoutSeconds": str(AWAIT_TIMEOUT_S),
    }
    props["metadata"] = metadata
    return pulumi.ResourceTransformResult(props=props, opts=args.opts)


@dataclass(frozen=True)
class TlsArgs:
    namespace: pulumi.Input[str]
    """Namespace of the Issuer (and of the certificates it signs)."""
    install_cert_manager: bool
    """Install cert-manager with its CRDs."""
    cert_manager_namespace: str
    """Namespace cert-manager runs in."""
    issuer: str
    """selfSigned (a self-signed root CA and a CA Issuer) or acme."""
    acme_email: str
    """ACME account e-mail (acme)."""
    acme_server: str
    """ACME directory URL (acme)."""
    ingress_class: str
    """IngressClass that HTTP-01 challenges go through (acme)."""
    instance: str
    """Value of app.kubernetes.io/instance."""
    cert_manager_chart: str = ""
    """A local directory holding cert-manager's Helm chart, installed with Pulumi's Helm support (no download);
    "" installs through pulumi-kubernetes-cert-manager (which fetches the chart)."""
    cert_manager_images: str = "quay.io/jetstack"
    """Registry path of cert-manager's images, for a local chart."""
    cert_manager_version: str = "v1.21.2"
    """Tag of cert-manager's images, for a local chart."""


class Tls(pulumi.ComponentResource):
    """cert-manager and one namespaced Issuer named `issuer_name`.

    cert-manager's CRDs have no typed Python SDK here, so Issuers and Certificates are CustomResources whose
    specs are plain dicts in cert-manager.io/v1's shape."""

    issuer_name: pulumi.Output[str]
    """Issuer that Certificates in the namespace reference."""

    def __init__(self, name: str, args: TlsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlplatform:tls:Tls", name, None, opts)
        meta_labels = labels("tls", args.instance, "tls")
        depends: list[pulumi.Resource] = []
        if args.install_cert_manager:
            cm_namespace = k8s.core.v1.Namespace(
                f"{name}-cert-manager-namespace",
                # cert-manager's pods run under `restricted` (its chart sets the contexts): enforce it here too.
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=args.cert_manager_namespace, labels={**meta_labels, **pod_security_labels()}
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.cert_manager: pulumi.Resource
            if args.cert_manager_chart:
                self.cert_manager = k8s.helm.v4.Chart(
                    f"{name}-cert-manager",
                    chart=args.cert_manager_chart,
                    namespace=cm_namespace.metadata.name,
                    values=cert_manager_values(args.cert_manager_images, args.cert_manager_version),
                    # cert-manager's webhook answers for Issuers and Certificates only once cainjector has put its CA
                    # into the webhook configurations; until then the API server refuses them. The chart's
                    # startupapicheck hook waits for that, but Pulumi runs no Helm hooks: wait here instead.
                    opts=pulumi.ResourceOptions(parent=self, transforms=[wait_for_injected_ca_bundle]),
                )
            else:
                from pulumi_kubernetes_cert_manager import CertManager, ReleaseArgs

                self.cert_manager = CertManager(
                    f"{name}-cert-manager",
                    install_crds=True,
                    helm_options=ReleaseArgs(namespace=cm_namespace.metadata.name),
                    opts=pulumi.ResourceOptions(parent=self),
                )
            depends.append(self.cert_manager)
        else:
            # cert-manager must already run: read its Certificate CRD, so that `pulumi preview` (and with it
            # `pulumi up`, which previews before creating anything) fails naming the key when it does not.
            depends.append(
                k8s.apiextensions.v1.CustomResourceDefinition.get(
                    f"{name}-tlsInstallCertManager=false:cert-manager-crd",
                    CERTIFICATE_CRD,
                    opts=pulumi.ResourceOptions(parent=self),
                )
            )
        after_crds = pulumi.ResourceOptions(parent=self, depends_on=depends)

        def issuer(resource_name: str, issuer_name: str, spec: dict[str, object]) -> k8s.apiextensions.CustomResource:
            return k8s.apiextensions.CustomResource(
                resource_name,
                api_version="cert-manager.io/v1",
                kind="Issuer",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=issuer_name, namespace=args.namespace, labels=meta_labels),
                spec=spec,
                opts=after_crds,
            )

        if args.issuer == "selfSigned":
            bootstrap = issuer(f"{name}-selfsigned", "selfsigned-bootstrap", {"selfSigned": {}})
            self.ca_certificate = k8s.apiextensions.CustomResource(
                f"{name}-ca",
                api_version="cert-manager.io/v1",
                kind="Certificate",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name="ml-platform-ca", namespace=args.namespace, labels=meta_labels, annotations=AWAIT_READY
                ),
                spec={
                    "isCA": True,
                    "commonName": "ml-platform CA",
                    "secretName": CA_SECRET,
                    "duration": "8760h",
                    "privateKey": {"algorithm": "ECDSA", "size": 256},
                    "issuerRef": {"name": "selfsigned-bootstrap", "kind": "Issuer", "group": "cert-manager.io"},
                },
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*depends, bootstrap]),
            )
            issuer_name = "ml-platform-ca"
            self.issuer = issuer(f"{name}-issuer", issuer_name, {"ca": {"secretName": CA_SECRET}})
        else:
            issuer_name = "ml-platform-acme"
            self.issuer = issuer(
                f"{name}-issuer",
                issuer_name,
                {
                    "acme": {
                        "email": args.acme_email,
                        "server": args.acme_server,
                        "privateKeySecretRef": {"name": ACME_ACCOUNT_SECRET},
                        "solvers": [{"http01": {"ingress": {"ingressClassName": args.ingress_class}}}],
                    }
                },
            )
        # The name is fixed; deriving it from the Issuer's id makes every user of it wait for the Issuer.
        self.issuer_name = self.issuer.id.apply(lambda _: issuer_name)
        self.register_outputs({"issuer_name": self.issuer_name})
