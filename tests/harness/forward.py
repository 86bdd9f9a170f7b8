"""socat bridges from the machine's 127.0.0.1 into the real cluster's network namespace: the machine's way to the
API server, to Services (ClusterIP or NodePort) and to pods, without an address or route of the machine's own."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.api import Api
from tests.harness.hostns import NODE_IP
from tests.harness.procs import ClusterError, free_port, stop_process
from tests.harness.wait import eventually


@dataclass
class Forward:
    """A socat bridge: 127.0.0.1:`port` on the machine to `target` inside the cluster's network namespace."""

    port: int
    target: str
    proc: subprocess.Popen[bytes]
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        stop_process(self.proc)


def bridge_args(netns_path: Path, bin_dir: Path, listen_port: int, host: str, port: int) -> list[str]:
    """socat listening on 127.0.0.1:`listen_port`, each connection going to host:port in the namespace."""
    # socat 1.7 has no netns option: each accepted connection runs a small script that enters the namespace.
    connect = bin_dir / "netns-connect"
    if not connect.exists():
        connect.write_text(f'#!/bin/sh\nexec nsenter --net={netns_path} socat STDIO "TCP:$1:$2"\n')
        connect.chmod(0o755)
    return ["socat", f"TCP-LISTEN:{listen_port},bind=127.0.0.1,fork,reuseaddr", f"EXEC:{connect} {host} {port}"]


def open_forward(netns_path: Path, bin_dir: Path, host: str, port: int) -> Forward:
    """A bridge from a free port of the machine to host:port in the namespace, once it listens."""
    local = free_port()
    proc = subprocess.Popen(
        bridge_args(netns_path, bin_dir, local, host, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    fwd = Forward(local, f"{host}:{port}", proc)

    def listening() -> bool:
        if proc.poll() is not None:
            raise ClusterError(f"socat for {fwd.target} exited with {proc.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", local)) == 0

    try:
        eventually(f"forward 127.0.0.1:{local} -> {fwd.target}", listening, 10, 0.1)
    except BaseException:
        fwd.close()
        raise
    return fwd


def service_target(api: Api, namespace: str, name: str, port: int, *, node_port: bool = False) -> tuple[str, int]:
    """Where a Service's `port` is in the namespace: its ClusterIP and `port`, or with `node_port` the node IP
    and the NodePort that serves it."""
    svc = api.get("v1", "Service", name, namespace)
    if svc is None:
        raise ClusterError(f"no Service {namespace}/{name}")
    if not node_port:
        return svc["spec"]["clusterIP"], port
    for p in svc["spec"]["ports"]:
        if p["port"] == port and p.get("nodePort"):
            return NODE_IP, p["nodePort"]
    raise ClusterError(f"Service {namespace}/{name} has no NodePort for port {port}")
