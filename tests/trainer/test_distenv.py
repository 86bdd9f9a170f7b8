"""The distributed environment contract: parsing, rank-0 discovery with retry, and Kubernetes API lookup."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trainer.config import ConfigError, DistributedConfig
from trainer.distenv import DistEnv, RendezvousError, find_rank0, parse_env, retry_until
from trainer.k8s import InClusterAPI, rank0_pod_ip

DNS = DistributedConfig()
K8S = DistributedConfig(discovery="kubernetes-api", rendezvous_timeout_s=30)


def test_torchrun_variables_come_first() -> None:
    env = parse_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "node0",
            "MASTER_PORT": "29500",
            "JOB_COMPLETION_INDEX": "0",
        },
        DNS,
    )
    assert env == DistEnv(
        rank=3,
        world_size=4,
        local_rank=1,
        local_world_size=2,
        master_addr="node0",
        master_port=29500,
        source="torchrun",
    )


def test_indexed_job_takes_the_rank_from_the_completion_index() -> None:
    env = parse_env(
        {"JOB_COMPLETION_INDEX": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "train-0.train", "MASTER_PORT": "29500"},
        DNS,
    )
    assert (env.rank, env.world_size, env.local_rank, env.source) == (2, 3, 0, "indexed-job")
    assert (env.master_addr, env.master_port) == ("train-0.train", 29500)


def test_no_variables_means_one_process() -> None:
    env = parse_env({}, DNS)
    assert (env.rank, env.world_size, env.source, env.is_distributed) == (0, 1, "single", False)


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        (
            {"JOB_COMPLETION_INDEX": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
            DNS,
            "JOB_COMPLETION_INDEX=2 is not below WORLD_SIZE=2",
        ),
        ({"JOB_COMPLETION_INDEX": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, DNS, "WORLD_SIZE is not set"),
        ({"JOB_COMPLETION_INDEX": "0", "WORLD_SIZE": "two"}, DNS, "WORLD_SIZE='two': must be an integer"),
        ({"JOB_COMPLETION_INDEX": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, DNS, "MASTER_ADDR is not set"),
        ({"JOB_COMPLETION_INDEX": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a"}, DNS, "MASTER_PORT is not set"),
        (
            {"JOB_COMPLETION_INDEX": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "70000"},
            DNS,
            "MASTER_PORT=70000",
        ),
        ({"JOB_COMPLETION_INDEX": "1", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, K8S, "TRAINER_JOB_NAME is not set"),
        (
            {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
            DNS,
            "RANK=2 is not below WORLD_SIZE=2",
        ),
    ],
)
def test_broken_environments_are_config_errors(
    environ: dict[str, str], config: DistributedConfig, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_env(environ, config)
    assert message in str(caught.value)


class FakeClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _job_env(rank: int, addr: str = "train-0.train", port: int = 29500) -> DistEnv:
    return DistEnv(
        rank=rank,
        world_size=2,
        local_rank=0,
        local_world_size=1,
        master_addr=addr,
        master_port=port,
        source="indexed-job",
    )


def test_rank0_does_not_wait_for_itself() -> None:
    def fail(*args: object) -> str:
        raise AssertionError("rank 0 must not resolve or probe")

    env = find_rank0(_job_env(0), DNS, resolve=fail, probe=fail)
    assert env.master_addr == "127.0.0.1"


def test_dns_is_retried_with_backoff_until_it_resolves() -> None:
    time = FakeClock()
    answers = iter([socket.gaierror("not yet"), socket.gaierror("not yet"), "10.0.0.5"])

    def resolve(host: str, port: int) -> str:
        assert (host, port) == ("train-0.train", 29500)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    probed = []
    env = find_rank0(
        _job_env(1),
        DNS,
        resolve=resolve,
        probe=lambda a, p: probed.append((a, p)) or a,
        clock=time.clock,
        sleep=time.sleep,
    )
    assert env.master_addr == "10.0.0.5"
    assert probed == [("10.0.0.5", 29500)]
    assert len(time.sleeps) == 2 and time.sleeps[1] > time.sleeps[0]


def test_a_stale_address_is_resolved_again_until_the_new_rank0_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """After a gang restart the name may point at the old rank 0 for a moment: the next try resolves again."""
    time = FakeClock()
    answers = iter(["10.0.0.5", "10.0.0.5", "10.0.0.9"])  # the old pod's address twice, then the new one

    def probe(addr: str, port: int) -> str | None:
        if addr == "10.0.0.5":
            raise ConnectionRefusedError("the old rank 0 is gone")
        return addr

    env = find_rank0(
        _job_env(1), DNS, resolve=lambda h, p: next(answers), probe=probe, clock=time.clock, sleep=time.sleep
    )
    assert env.master_addr == "10.0.0.9"
    assert "rank 1: rank 0 is train-0.train = 10.0.0.9:29500" in capsys.readouterr().err


def test_an_address_that_never_resolves_fails_stating_the_time_waited() -> None:
    time = FakeClock()

    def never(host: str, port: int) -> str:
        raise socket.gaierror(-2, "Name or service not known")

    config = DistributedConfig(rendezvous_timeout_s=30)
    with pytest.raises(RendezvousError) as caught:
        find_rank0(_job_env(1), config, resolve=never, clock=time.clock, sleep=time.sleep)
    message = str(caught.value)
    assert "resolving rank 0's address 'train-0.train'" in message
    assert "after waiting 30.0 s" in message and "Name or service not known" in message
    assert max(time.sleeps) <= 1.0


def test_retry_until_treats_none_as_not_yet() -> None:
    time = FakeClock()
    answers = iter([None, None, "ok"])
    assert retry_until(lambda: next(answers), deadline=200, what="x", clock=time.clock, sleep=time.sleep) == "ok"


def test_non_zero_rank_waits_for_rank0_port_to_accept() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        time = FakeClock()
        attempts = []

        def probe(addr: str, port_: int) -> str | None:
            attempts.append(addr)
            if len(attempts) == 3:
                listener.listen()  # rank 0 comes up after two refused connections
            from trainer.distenv import port_accepts

            return port_accepts(addr, port_, timeout=5)

        env = find_rank0(_job_env(1, addr="127.0.0.1", port=port), DNS, probe=probe, clock=time.clock, sleep=time.sleep)
    assert len(attempts) == 3
    assert env.master_addr == "127.0.0.1"


# --- Kubernetes API discovery against a real HTTPS server --------------------------------------------------


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[InClusterAPI, list[dict[str, object]], list[object]]]:
    """An HTTPS server posing as the API server; returns (api, requests seen, pod lists to answer in turn)."""
    cert, key = tmp_path / "ca.crt", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("secret-token\n")
    (account / "ca.crt").write_bytes(cert.read_bytes())
    (account / "namespace").write_text("ml\n")
    seen: list[dict[str, object]] = []
    answers: list[object] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            seen.append(
                {"path": url.path, "query": urllib.parse.parse_qs(url.query), "auth": self.headers.get("Authorization")}
            )
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            status, body = (answer, b"{}") if isinstance(answer, int) else (200, json.dumps(answer).encode())
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.server_port)}
    try:
        yield InClusterAPI.from_environment(environ, account), seen, answers
    finally:
        server.shutdown()
        server.server_close()


def _pod(ip: str, phase: str = "Running", created: str = "2026-01-01T00:00:00Z") -> dict[str, object]:
    return {"metadata": {"creationTimestamp": created}, "status": {"phase": phase, "podIP": ip}}


def test_rank0_pod_ip_queries_the_api_with_the_token_and_label_selector(api_server: tuple) -> None:
    api, seen, answers = api_server
    answers.append(
        {
            "items": [
                _pod("10.1.2.3", "Failed", "2026-01-01T00:00:00Z"),
                _pod("10.1.2.4", "Running", "2026-01-01T00:01:00Z"),
            ]
        }
    )
    assert rank0_pod_ip(api, "train") == "10.1.2.4"
    assert seen[0]["path"] == "/api/v1/namespaces/ml/pods"
    assert seen[0]["query"] == {"labelSelector": ["job-name=train,batch.kubernetes.io/job-completion-index=0"]}
    assert seen[0]["auth"] == "Bearer secret-token"


def test_kubernetes_discovery_retries_until_rank0_has_an_ip(api_server: tuple) -> None:
    api, seen, answers = api_server
    answers.extend([403, {"items": []}, {"items": [_pod("", "Pending")]}, {"items": [_pod("10.9.8.7")]}])
    time = FakeClock()
    env = find_rank0(
        _job_env(1, addr=""),
        K8S,
        discover_pod_ip=lambda: rank0_pod_ip(api, "train"),
        resolve=lambda host, port: host,
        probe=lambda addr, port: addr,
        clock=time.clock,
        sleep=time.sleep,
    )
    assert env.master_addr == "10.9.8.7"
    assert len(seen) == 4


def test_kubernetes_discovery_gives_up_with_the_last_error(api_server: tuple) -> None:
    api, _, answers = api_server
    answers.append(403)
    time = FakeClock()
    with pytest.raises(RendezvousError) as caught:
        find_rank0(
            _job_env(1, addr=""),
            K8S,
            discover_pod_ip=lambda: rank0_pod_ip(api, "train"),
            clock=time.clock,
            sleep=time.sleep,
        )
    assert "rank 0's pod IP from the Kubernetes API" in str(caught.value)
    assert "after waiting 30.0 s" in str(caught.value) and "403" in str(caught.value)


def test_kubernetes_discovery_outside_a_cluster_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        InClusterAPI.from_environment({}, tmp_path)
    with pytest.raises(ConfigError, match="token"):
        InClusterAPI.from_environment({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path)
