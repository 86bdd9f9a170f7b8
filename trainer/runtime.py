"""Per-process runtime: CPU threads, device, process-group backend and the process group's lifetime."""

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


@contextmanager
def process_group(env: DistEnv, backend: str, timeout_s: float, device: torch.device) -> Iterator[None]:
    """Join the job's process group for the duration of the block (nothing to join for one process).

    MASTER_ADDR/MASTER_PORT are (re)exported because `env://` reads them: for an Indexed Job they are the
    address `trainer.distenv.find_rank0` resolved, and loopback on rank 0, which hosts the store on all
    interfaces.
    """
    if not env.is_distributed:
        yield
        return
    os.environ["MASTER_ADDR"] = env.master_addr
    os.environ["MASTER_PORT"] = str(env.master_port)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()
