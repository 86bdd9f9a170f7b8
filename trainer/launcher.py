"""`python -m trainer launch --nproc N`: the Indexed Job emulated on one machine; with `--nnodes W --node-rank R`,
one pod of a W-pod Indexed Job that runs N ranks (one per GPU).

Alone, each rank gets the environment a Job gives its pods (JOB_COMPLETION_INDEX, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) so the Indexed Job path of the contract is what runs. As pod R of W, the launcher finds rank 0's pod
as that path does (loopback on pod 0) and gives its ranks torchrun's variables (RANK = R x N + LOCAL_RANK,
WORLD_SIZE = W x N). Either way, when one rank fails the others are stopped; SIGTERM and SIGINT are forwarded
once to every rank (which checkpoint and exit).
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

from trainer.config import DistributedConfig
from trainer.distenv import connect, node_env

# Variables that would select torchrun's path (a) of the contract in the ranks.
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID")
# The pod's own place in the Job; its ranks get theirs from the torchrun variables instead.
POD_VARS = ("JOB_COMPLETION_INDEX",)
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


def torchrun_environments(
    *, nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int, base: Mapping[str, str]
) -> list[dict[str, str]]:
    """The environments of node `node_rank`'s `nproc` ranks in a job of `nnodes` such nodes: torchrun's
    variables, so the ranks take path 1 of the contract, and LOCAL_RANK picks each one's GPU."""
    env = {key: value for key, value in base.items() if key not in TORCHRUN_VARS + POD_VARS}
    return [
        env | {"RANK": str(node_rank * nproc + local_rank), "WORLD_SIZE": str(nnodes * nproc),
               "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": master_addr,
               "MASTER_PORT": str(master_port)}
        for local_rank in range(nproc)
    ]  # fmt: skip


def node_rank0(
    *, nnodes: int, node_rank: int, nproc: int, config: DistributedConfig, environ: Mapping[str, str]
) -> tuple[str, int]:
    """Rank 0's address and port as this node's ranks reach it: loopback and a free port when the node is alone;
    else the Indexed Job path's answer (loopback on node 0, which hosts rank 0; elsewhere rank 0's pod, resolved
    and accepting connections). Raises ConfigError, or RendezvousError when rank 0 does not show up in time."""
    if nnodes == 1:
        return "127.0.0.1", free_port()
    found = connect(node_env(node_rank, nnodes, nproc, environ, config), config, environ)
    return found.master_addr, found.master_port


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
    return run_ranks(rank_environments(nproc, free_port(), os.environ if base_env is None else base_env), train_args)


def launch_node(
    *, nproc: int, nnodes: int, node_rank: int, config: DistributedConfig, train_args: Sequence[str],
    base_env: Mapping[str, str] | None = None,
) -> int:
    """Run node `node_rank`'s `nproc` ranks of a job of `nnodes` nodes once rank 0 is reachable; returns the
    launcher's exit code. Raises ConfigError, or RendezvousError when rank 0 does not show up in time."""
    base = os.environ if base_env is None else base_env
    addr, port = node_rank0(nnodes=nnodes, node_rank=node_rank, nproc=nproc, config=config, environ=base)
    first = node_rank * nproc
    print(
        f"launch: node {node_rank} of {nnodes} starts ranks {first}..{first + nproc - 1} of {nnodes * nproc}; "
        f"rank 0 at {addr}:{port}",
        file=sys.stderr, flush=True,
    )
    environments = torchrun_environments(
        nproc=nproc, nnodes=nnodes, node_rank=node_rank, master_addr=addr, master_port=port, base=base
    )
    return run_ranks(environments, train_args)


def run_ranks(environments: Sequence[Mapping[str, str]], train_args: Sequence[str]) -> int:
    """Run `python -m trainer train TRAIN_ARGS` once per environment and return the launcher's exit code."""
    command = [sys.executable, "-m", "trainer", "train", *train_args]
    # Own session: a terminal's Ctrl-C reaches only the launcher, which forwards it exactly once (a second
    # signal makes a rank exit at once, without its checkpoint).
    procs = [
        subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        for env in environments
    ]
    # The job's rank numbers, for messages (a node's ranks do not start at 0).
    ranks = [env.get("RANK", env.get("JOB_COMPLETION_INDEX", str(i))) for i, env in enumerate(environments)]
    forwarded: list[tuple[int, float]] = []
    first_failed: int | None = None

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
                first_failed = failed[0]
                print(
                    f"launch: rank {ranks[first_failed]} exited with {exit_code([codes[first_failed]])}; stopping "
                    "the other ranks",
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
    # The rank that failed first says why (e.g. 3, no GPU on this node); the others only died of being stopped.
    return exit_code(codes if first_failed is None else [codes[first_failed], *codes])


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
