"""A real `mlflow server` for tests: sqlite backend, artifacts served, on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.harness.wait import eventually
from tests.proc import die_with_parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(root: Path, env: Mapping[str, str] | None = None, timeout_s: float = 120.0) -> Iterator[str]:
    """Start the server with its state under `root`, yield its URL once /health answers, stop it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
    ]  # fmt: skip
    # The job-execution workers MLflow 3 starts by default are not needed and cost CPU on a small machine.
    server_env = {**(os.environ if env is None else env), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, env=server_env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )

        def healthy() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"mlflow server exited with {server.returncode}: {log_path.read_text()}")
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                return bool(response.status == 200)

        try:
            # Not listening yet, or refusing: an OSError (URLError, HTTPError), tried again.
            eventually(f"mlflow server to answer {url}/health", healthy, timeout_s, 0.2, retry_on=(OSError,))
            yield url
        finally:
            # The server runs workers in its own session: stop the whole group it leads, stragglers included.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
