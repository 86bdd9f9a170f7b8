"""Per-process runtime: CPU threads, device, process-group backend, the rendezvous store, rank 0's start decision
and the process group's lifetime."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from trainer.config import ConfigError, DistributedConfig, TrainConfig
from trainer.distenv import DistEnv

_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_budget(cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU limit (a pod's limits.cpu)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def set_threads(config: TrainConfig, env: DistEnv) -> int:
    """Set torch's intra-op threads for this rank (before any tensor work), pin the rank to CPUs of its own when
    `train.pin_cpus` asks for it and the machine has them, and return the number of threads."""
    budget = cpu_budget()
    threads = config.threads_per_rank or max(1, budget // env.local_world_size)
    # Only CPUs that are all ours can be split: under a CPU quota smaller than the affinity mask (a shared node),
    # every pod sees the same CPU numbers, and pinning would pile pods onto the first ones.
    if config.pin_cpus and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) == budget:
        slot = env.rank % env.local_world_size
        cpus = rank_cpus(sorted(os.sched_getaffinity(0)), slot, env.local_world_size, threads)
        if cpus:
            os.sched_setaffinity(0, cpus)
    torch.set_num_threads(threads)
    return threads


def rank_cpus(available: list[int], slot: int, ranks: int, threads: int) -> set[int] | None:
    """The CPUs of the rank in `slot` of `ranks` on this machine: `threads` of its own, or None when the ranks
    would have to share (fewer CPUs than ranks x threads) or there is only one rank to place."""
    if ranks < 2 or len(available) < ranks * threads:
        return None
    return set(available[slot * threads : (slot + 1) * threads])


class NodeError(RuntimeError):
    """This node cannot give the job what its (valid) configuration asks for, e.g. no usable GPU; a retry, on
    another node or after the driver or device plugin comes up, may succeed."""


def _cuda_missing(setting: str) -> Exception:
    """Why `setting` cannot have CUDA here: a torch built without CUDA can never have it (a configuration error
    of the image or the setting); otherwise this node lacks a usable GPU (retriable)."""
    if torch.version.cuda is None:
        return ConfigError(
            f"{setting}: this torch {torch.__version__} is built without CUDA, so no node can run it; use the "
            "CUDA image (Dockerfile TORCH_INDEX_URL) or train.device=auto/cpu"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if visible is None else repr(visible)
    return NodeError(
        f"{setting}: CUDA is not available on this node (torch built for CUDA {torch.version.cuda} sees no usable "
        f"GPU; CUDA_VISIBLE_DEVICES is {shown}): no GPU on the node, the NVIDIA driver not loaded, or no device "
        "from the device plugin; a retry on a healthy GPU node can succeed"
    )


def choose_device(config: TrainConfig, env: DistEnv) -> torch.device:
    """`train.device` made concrete: `auto` is this rank's GPU when CUDA is available, else the CPU.

    Raises NodeError when `cuda` is asked for and this node has no usable GPU.
    """
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise _cuda_missing(f"train.device={config.device!r}")
    device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def choose_backend(config: DistributedConfig, device: torch.device, train: TrainConfig) -> str:
    """`distributed.backend` made concrete: `auto` is nccl on CUDA and gloo otherwise.

    nccl on the CPU is a configuration error when `train.device` is `cpu`; with `auto` it means CUDA is missing
    on this node (NodeError), since a node with a GPU would have chosen it.
    """
    if config.backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if config.backend == "nccl" and device.type != "cuda":
        if train.device == "cpu":
            raise ConfigError(
                "distributed.backend='nccl' needs CUDA, but train.device='cpu'; allowed with it: auto, gloo"
            )
        raise _cuda_missing("distributed.backend='nccl' (with train.device='auto')")
    return config.backend


def rendezvous_store(env: DistEnv, timeout_s: float) -> dist.Store:
    """The job's store at MASTER_ADDR:MASTER_PORT, made as `env://` makes it except that rank 0 does not wait
    for the other ranks to connect (a finished rank 0 must not wait for peers that already completed).

    Rank 0 hosts it (on all interfaces; MASTER_ADDR is loopback on rank 0, see `trainer.distenv.find_rank0`),
    unless torchrun's agent already hosts it there (TORCHELASTIC_USE_AGENT_STORE, as `env://` checks); every
    other rank is a client. `timeout_s` bounds every store operation, as it does under `env://`.
    """
    agent_hosts = (
        env.source == "torchrun"
        and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        and os.environ.get("MASTER_ADDR") == env.master_addr
        and os.environ.get("MASTER_PORT") == str(env.master_port)
    )
    return dist.TCPStore(
        env.master_addr, env.master_port, env.world_size, is_master=env.rank == 0 and not agent_hosts,
        timeout=timedelta(seconds=timeout_s), wait_for_workers=False, multi_tenant=True,
    )  # fmt: skip


_DECISION_KEY = "decision"
_TRAIN = "train"
_FINISHED = "finished:"


def _trainer_keys(store: dist.Store) -> dist.Store:
    # Apart from the process group's keys ("default_pg/...", as under env://).
    return dist.PrefixStore("trainer", store)


def _ack_key(rank: int) -> str:
    return f"finished-ack/{rank}"


def announce_start(store: dist.Store, finished_step: int | None) -> None:
    """Rank 0: tell the other ranks whether to train (None) or that rank 0's checkpoint already reached
    train.max_steps at `finished_step`. Ranks need not share rank 0's filesystem, so only rank 0 can know."""
    decision = _TRAIN if finished_step is None else f"{_FINISHED}{finished_step}"
    _trainer_keys(store).set(_DECISION_KEY, decision)


def await_start(store: dist.Store) -> int | None:
    """Ranks > 0: rank 0's decision (see `announce_start`): None to train, or the step training finished at."""
    decision = _trainer_keys(store).get(_DECISION_KEY).decode()
    return int(decision.removeprefix(_FINISHED)) if decision.startswith(_FINISHED) else None


def acknowledge_finish(store: dist.Store, rank: int) -> None:
    """Ranks > 0: say that this rank read rank 0's "finished" and is leaving, so rank 0 may close the store."""
    _trainer_keys(store).set(_ack_key(rank), "")


def await_acknowledgements(store: dist.Store, env: DistEnv, timeout_s: float) -> list[int]:
    """Rank 0 after announcing "finished": keep the store up until every other rank has read it, at most
    `timeout_s` (ranks whose pods already completed never come). Returns the ranks that did not acknowledge."""
    keys = _trainer_keys(store)
    peers = range(1, env.world_size)
    try:
        keys.wait([_ack_key(rank) for rank in peers], timedelta(seconds=timeout_s))
    except dist.DistStoreError:
        return [rank for rank in peers if not keys.check([_ack_key(rank)])]
    return []


@contextmanager
def process_group(
    env: DistEnv, backend: str, timeout_s: float, device: torch.device, store: dist.Store | None
) -> Iterator[None]:
    """Join the job's process group, on `store` (`rendezvous_store`), for the duration of the block (nothing to
    join, and no store, for one process)."""
    if not env.is_distributed:
        yield
        return
    assert store is not None, "a distributed run joins its process group on the rendezvous store"
    dist.init_process_group(
        backend=backend,
        # The prefix env:// gives the default group's keys.
        store=dist.PrefixStore("default_pg", store),
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
