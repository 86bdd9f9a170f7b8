"""Stopping the servers the test tiers start in a process group of their own (start_new_session=True)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess

PR_SET_PDEATHSIG = 1


def kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the process group: no shutdown code runs, as when a node dies under the server."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def stop_group(proc: subprocess.Popen[bytes] | None, grace_s: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after `grace_s`."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGTERM when the process that started it dies, so a pytest killed before its
    teardown (a timeout, a Ctrl-C twice) leaves no server behind. Linux only; start the child from the main thread
    (the signal follows the thread that forked)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
