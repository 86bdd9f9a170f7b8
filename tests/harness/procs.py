"""The processes a test cluster starts: each in a session of its own with its log in the cluster's log directory,
watched while the cluster waits (one that exits is an error with its log tail), stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.harness.wait import eventually


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: Sequence[str], *, timeout: float = 60, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """SIGTERM to the process's own group (it was started in a new session), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # Children left in the group (socat's per-connection forks) go with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def process_identity(pid: int) -> str:
    """pid and start time: names one process, even after its pid is reused ("" when none runs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


class Processes:
    """A cluster's processes by name, in start order. `prefix` goes before every command (the real cluster's
    `nsenter --net=...`) unless a spawn asks for none; `append` keeps what an earlier run logged."""

    def __init__(
        self, logs: Path, *, prefix: Sequence[str] = (), cwd: Path | None = None, append: bool = False
    ) -> None:
        self.logs = logs
        self.prefix = list(prefix)
        self.cwd = cwd
        self.mode = "ab" if append else "wb"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, args: Sequence[str], *, prefix: bool = True) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", self.mode) as log:
            proc = subprocess.Popen(
                [*self.prefix, *args] if prefix else list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.cwd,
            )
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def eventually(self, what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.5) -> Any:
        """`eventually`, failing at once when one of the processes has exited."""

        def alive_and() -> Any:
            self.check_alive()
            return check()

        return eventually(what, alive_and, timeout_s, interval_s)

    def stop(self, name: str) -> None:
        stop_process(self.procs.pop(name))
