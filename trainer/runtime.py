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
    """Set torch's intra-op threads for this rank (before any tensor work) and return the number."""
    threads = config.threads_per_rank or max(1, cpu_budget() // env.local_world_size)
    torch.set_num_threads(threads)
    return threads


def choose_device(config: TrainConfig, env: DistEnv) -> torch.device:
    """`train.device` made concrete: `auto` is this rank's GPU when CUDA is available, else the CPU."""
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.device='cuda': CUDA is not available on this node; allowed here: auto, cpu")
    device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def choose_backend(config: DistributedConfig, device: torch.device) -> str:
    """`distributed.backend` made concrete: `auto` is nccl on CUDA and gloo otherwise."""
    if config.backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if config.backend == "nccl" and device.type != "cuda":
        raise ConfigError("distributed.backend='nccl' needs CUDA, but the device is the CPU; allowed: auto, gloo")
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
