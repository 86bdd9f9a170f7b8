"""Stopping on SIGTERM/SIGINT: the request (a signal handler), and the vote that makes every rank stop together.

A rank that gets the signal cannot just stop: the others would wait in their next collective until the timeout.
So each rank casts its vote after every step and the ranks agree on the sum; the vote is reduced in the
background while the next step computes and read after it, so it costs no host sync and no wait on the critical
path, and every rank stops after the same step (one step after the signal).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist


class StopRequest:
    """Set by SIGTERM or SIGINT; the loop checks it after every step (agreed across ranks) and, if set,
    writes a checkpoint and stops. A second signal gets the default behaviour (exit at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)


class Stopped(Exception):
    """Training stopped early on a signal after writing `checkpoint`; the process should exit 128 + signum."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signum} after checkpoint {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint


class StopVote:
    """Whether any rank was asked to stop, agreed across ranks one step late, without blocking a step.

    Every rank calls `decided()` then `cast()` once per step, in the same order, so the ranks' collectives on
    `group` line up (gloo runs a group's collectives in the order they were issued). `group` must be a CPU (gloo)
    group: with NCCL as the main backend the trainer makes one for the vote, so reading it never syncs a GPU.
    """

    def __init__(self, stop: StopRequest, *, distributed: bool, group: dist.ProcessGroup | None = None) -> None:
        self.stop = stop
        self.distributed = distributed
        self.group = group
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

    def decided(self) -> bool:
        """The outcome of the votes cast at the previous step (a local check when there is one process)."""
        if not self.distributed:
            return self.stop.requested
        if self._pending is None:
            return False
        work, votes = self._pending
        self._pending = None
        work.wait()
        return bool(votes.item())

    def cast(self) -> None:
        """Start reducing this rank's vote for the current step; `decided()` at the next step reads the result."""
        if self.distributed:
            votes = torch.tensor([float(self.stop.requested)])
            work = dist.all_reduce(votes, group=self.group, async_op=True)
            assert work is not None
            self._pending = (work, votes)

    def settle(self) -> None:
        """Wait for a vote still in flight (before a barrier or leaving the process group)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


@contextlib.contextmanager
def installed(stop: StopRequest) -> Iterator[StopRequest]:
    """Install the stop handlers for the duration of the block, restoring the previous ones after."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    stop.install()
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
