"""`python -m trainer launch --nproc N`: the Indexed Job emulated on one machine.

Each rank gets the environment a Job gives its pods (JOB_COMPLETION_INDEX, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
so the Indexed Job path of the contract is what runs. When one rank fails the others are stopped; SIGTERM and
SIGINT are forwarded once to every rank (which checkpoint and exit).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

# Variables that would select torchrun's path (a) of the contract in the ranks.
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID")
STOP_GRACE_S = 30.0
POLL_S = 0.05


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies, so ranks never outlive it (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def rank_environments(nproc: int, port: int, base: Mapping[str, str]) -> list[dict[str, str]]:
    env = {key: value for key, value in base.items() if key not in TORCHRUN_VARS}
    return [
        env | {"JOB_COMPLETION_INDEX": str(i), "WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "LOCAL_WORLD_SIZE": str(nproc)}
        for i in range(nproc)
    ]


def exit_code(codes: Sequence[int | None]) -> int:
    """2 if any rank had a configuration error, else the first failure (a signal N as 128 + N), else 0."""
    finished = [code for code in codes if code is not None]
    if 2 in finished:
        return 2
    for code in finished:
        if code != 0:
            return 128 - code if code < 0 else code
    return 0


def launch(nproc: int, train_args: Sequence[str], base_env: Mapping[str, str] | None = None) -> int:
    """Run `python -m trainer train TRAIN_ARGS` as `nproc` ranks and return the launcher's exit code."""
    environments = rank_environments(nproc, free_port(), os.environ if base_env is None else base_env)
    command = [sys.executable, "-m", "trainer", "train", *train_args]
    # Own session: a terminal's Ctrl-C reaches only the launcher, which forwards it exactly once (a second
    # signal makes a rank exit at once, without its checkpoint).
    procs = [
        subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        for env in environments
    ]
    forwarded: list[tuple[int, float]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        if forwarded:
            return
        forwarded.append((signum, time.monotonic()))
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            if all(code is not None for code in codes):
                break
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed and not forwarded:
                rank = failed[0]
                print(
                    f"launch: rank {rank} exited with {exit_code([codes[rank]])}; stopping the other ranks",
                    file=sys.stderr, flush=True,
                )
                _stop(procs)
                break
            if forwarded and time.monotonic() - forwarded[0][1] > STOP_GRACE_S:
                print("launch: ranks did not stop in time after the signal; killing them", file=sys.stderr)
                _stop(procs)
                break
            time.sleep(POLL_S)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = [proc.returncode for proc in procs]
    if forwarded and 2 not in codes and any(code != 0 for code in codes):
        return 128 + forwarded[0][0]
    return exit_code(codes)


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every rank still running, then SIGKILL those that outlive the grace period."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
