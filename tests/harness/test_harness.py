"""The harness's own small parts, without a cluster: `eventually`, `Processes` and the `Pki`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.api import ApiError
from tests.harness.pki import Pki
from tests.harness.procs import ClusterError, Processes
from tests.harness.wait import eventually


def raising(err: Exception) -> Callable[[], object]:
    def check() -> object:
        raise err

    return check


def test_eventually_returns_the_first_truthy_value() -> None:
    answers: Iterator[object] = iter([None, 0, [], {"ready": True}])
    assert eventually("an answer", lambda: next(answers), 5, 0.01) == {"ready": True}


def test_eventually_times_out_naming_what_and_the_last_value() -> None:
    with pytest.raises(TimeoutError, match=r"waiting for the moon; last: \[\]"):
        eventually("the moon", list, 0.2, 0.05)


def test_eventually_retries_what_a_server_not_yet_there_raises_and_nothing_else() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            raise ApiError(404, {"message": "not found"}, "get")
        return "up"

    assert eventually("the server", flaky, 5, 0.01) == "up"
    with pytest.raises(TimeoutError, match="last: ApiError"):
        eventually("an object", raising(ApiError(404, "gone", "get")), 0.1, 0.02)
    with pytest.raises(ValueError, match="bad"):
        eventually("a value", raising(ValueError("bad")), 5, 0.01)
    with pytest.raises(httpx.ConnectError):
        eventually("no retries", raising(httpx.ConnectError("x")), 5, 0.01, retry_on=())


def test_processes_wait_fails_at_once_when_one_exits_and_stop_ends_them(tmp_path: Path) -> None:
    procs = Processes(tmp_path / "logs")
    sleeper = procs.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    procs.spawn("quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"])
    # A ClusterError, not the TimeoutError of the 600 s wait: the exit ended the wait.
    with pytest.raises(ClusterError, match=r"quitter exited with 3:\nbye"):
        procs.eventually("something that never comes", lambda: False, 600, 0.05)
    assert procs.running("sleeper") and not procs.running("quitter")
    for name in reversed(list(procs.procs)):
        procs.stop(name)
    assert procs.procs == {} and sleeper.poll() is not None


def test_front_proxy_client_is_signed_by_its_own_ca_only(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    crt, _ = pki.issue_front_proxy_client()
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    front_proxy_ca = x509.load_pem_x509_certificate(pki.front_proxy_ca_cert.read_bytes())
    cluster_ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "front-proxy-client"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    cert.verify_directly_issued_by(front_proxy_ca)
    # A certificate of the cluster's CA is not one the API server takes X-Remote-User headers from, nor the reverse.
    assert front_proxy_ca.subject != cluster_ca.subject
    with pytest.raises(ValueError):
        cert.verify_directly_issued_by(cluster_ca)
