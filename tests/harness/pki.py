"""The harness's certificates: one CA per cluster, certificates it issues (serving, client), the front proxy's CA
and client certificate (the API server's aggregation layer), the service-account signing key pair, and
kubeconfigs that use them."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool = False,
    server_names: Iterable[str] = (),
    server_ips: Iterable[str] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = []
        if server_names or server_ips:
            usages.append(x509.ExtendedKeyUsageOID.SERVER_AUTH)
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if client:
            usages.append(x509.ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


FRONT_PROXY_CLIENT = "front-proxy-client"
"""The common name of the aggregation layer's client certificate (kube-apiserver's --requestheader-allowed-names)."""


@dataclass
class Pki:
    dir: Path
    ca_cert: Path = field(init=False)
    front_proxy_ca_cert: Path = field(init=False)
    """The CA of the front proxy's client certificate only (kube-apiserver's --requestheader-client-ca-file):
    a server that trusts it trusts the X-Remote-User headers of whoever presents a certificate it signed, so it
    signs nothing else."""

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca_name, self._ca_key, self.ca_cert = self._new_ca("ca", "ml-platform-engine-test-ca")
        self._front_proxy_ca_name, self._front_proxy_ca_key, self.front_proxy_ca_cert = self._new_ca(
            "front-proxy-ca", "ml-platform-engine-test-front-proxy-ca"
        )
        # The service-account token signing key pair (RSA: what every component accepts).
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(_pem_key(sa))
        (self.dir / "sa.pub").write_bytes(
            sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def _new_ca(self, name: str, cn: str) -> tuple[x509.Name, Any, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(cn)
        crt_path = self.dir / f"{name}.crt"
        crt_path.write_bytes(_cert(subject, key, subject, key, ca=True).public_bytes(serialization.Encoding.PEM))
        (self.dir / f"{name}.key").write_bytes(_pem_key(key))
        return subject, key, crt_path

    def issue(self, name: str, cn: str, org: str | None = None, **kw: Any) -> tuple[Path, Path]:
        """A certificate of the cluster's CA; `kw` as `_cert`'s (server_names, server_ips, client)."""
        return self._issue(name, cn, org, self._ca_name, self._ca_key, **kw)

    def issue_front_proxy_client(self) -> tuple[Path, Path]:
        """The aggregation layer's client certificate (kube-apiserver's --proxy-client-cert-file), of the front
        proxy's CA."""
        return self._issue(
            FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT, None, self._front_proxy_ca_name, self._front_proxy_ca_key,
            client=True,
        )  # fmt: skip

    def _issue(
        self, name: str, cn: str, org: str | None, issuer: x509.Name, issuer_key: Any, **kw: Any
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(_name(cn, org), key, issuer, issuer_key, **kw)
        crt_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return crt_path, key_path


def write_kubeconfig(path: Path, server: str, ca: Path, crt: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
