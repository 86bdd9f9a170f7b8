"""TLS: optionally cert-manager itself, and the Issuer that signs the platform's certificates."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.common import labels, pod_security_labels

CA_SECRET = "ml-platform-ca"
ACME_ACCOUNT_SECRET = "ml-platform-acme-account"


@dataclass(frozen=True)
class TlsArgs:
    namespace: pulumi.Input[str]
    """Namespace of the Issuer (and of the certificates it signs)."""
    install_cert_manager: bool
    """Install cert-manager with its CRDs (pulumi-kubernetes-cert-manager)."""
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
            from pulumi_kubernetes_cert_manager import CertManager, ReleaseArgs

            cm_namespace = k8s.core.v1.Namespace(
                f"{name}-cert-manager-namespace",
                # cert-manager's pods run under `restricted` (its chart sets the contexts): enforce it here too.
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=args.cert_manager_namespace, labels={**meta_labels, **pod_security_labels()}
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.cert_manager = CertManager(
                f"{name}-cert-manager",
                install_crds=True,
                helm_options=ReleaseArgs(namespace=cm_namespace.metadata.name),
                opts=pulumi.ResourceOptions(parent=self),
            )
            depends.append(self.cert_manager)
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
                    name="ml-platform-ca", namespace=args.namespace, labels=meta_labels
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
