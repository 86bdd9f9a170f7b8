"""HTTPS to an ingress host name from this machine, as `curl --resolve HOST:443:127.0.0.1 --cacert ca.crt` does: the
request names the host (URL, Host header, SNI, and the certificate is checked against it) while the connection goes
to a forward on 127.0.0.1. Nothing touches /etc/hosts or any resolver. On httpx2, the HTTP library the official
openai client is built on."""

from __future__ import annotations

import hashlib
import socket
import ssl

import httpx2


def ca_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts only `ca_pem` and checks host names (the default context's behaviour)."""
    return ssl.create_default_context(cadata=ca_pem)


class ResolvingTransport(httpx2.HTTPTransport):
    """Sends requests for `host` (any port) to 127.0.0.1:`port`, keeping the URL's host for SNI, the Host header and
    the certificate check."""

    def __init__(self, host: str, port: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.host = host
        self.port = port

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.host == self.host:
            request.extensions = {**request.extensions, "sni_hostname": self.host}
            request.url = request.url.copy_with(host="127.0.0.1", port=self.port)
        return super().handle_request(request)


def https_client(host: str, port: int, ca_pem: str, **kwargs: object) -> httpx2.Client:
    """An httpx client for https://`host`/... through the forward on 127.0.0.1:`port`, trusting only `ca_pem`."""
    context = ca_context(ca_pem)
    return httpx2.Client(transport=ResolvingTransport(host, port, verify=context), verify=context, **kwargs)  # type: ignore[arg-type]


def served_certificate(host: str, port: int, ca_pem: str) -> str:
    """SHA-256 of the leaf certificate served for SNI `host` on 127.0.0.1:`port`, verified against `ca_pem`."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, ca_context(ca_pem).wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: str) -> str:
    """SHA-256 of the first certificate in `pem` (as `served_certificate` gives it)."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
