"""The local platform demo (`make demo` = `python -m demo`): real MLflow server, 2-rank DDP training,
inference service, an openai-client completion; and it cleans up after itself, also when interrupted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_command(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "demo", "--state-dir", str(state), "--mlflow-port", str(free_port()),
            "--inference-port", str(free_port()), *extra]  # fmt: skip


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def wait_gone(text: str, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.slow
def test_demo_end_to_end_and_leaves_nothing_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = subprocess.run(demo_command(state, "--steps", "12", "--max-tokens", "24"), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for marker in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "MLflow UI:", "Inference:"):
        assert marker in out
    assert "registered tiny-gpt version 1" in out
    assert (state / "loss-curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (state / "mlflow.db").exists() and any((state / "checkpoints").rglob("COMPLETE"))
    assert wait_gone(str(state)) == []

    # A second run starts a new training run cleanly and registers the next version.
    again = subprocess.run(demo_command(state, "--steps", "12", "--max-tokens", "8"), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "registered tiny-gpt version 2" in again.stdout
    assert wait_gone(str(state)) == []


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "demo", "--state-dir", str(tmp_path), "--mlflow-port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--mlflow-port" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(demo_command(state, "--steps", "100000"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "[2/5]" in line:
            break
    time.sleep(8)  # the ranks are up and training
    assert processes_mentioning(str(state)), "nothing was running to interrupt"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert wait_gone(str(state)) == []
