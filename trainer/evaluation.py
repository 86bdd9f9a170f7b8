"""Evaluation: the validation loss over the same global batches every time, averaged across the ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist

from tinygpt.model import GPT
from trainer.accel import Acceleration
from trainer.data import BatchSampler
from trainer.distenv import DistEnv


@torch.no_grad()
def evaluate(
    model: GPT, batches: BatchSampler, iters: int, env: DistEnv, device: torch.device, accel: Acceleration
) -> float:
    """Mean loss over the same `iters` global validation batches every time, averaged across ranks."""
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    for index in range(iters):
        x, y = batches(index)
        with accel.autocast(device):
            _, loss = model(x, y)
        assert loss is not None
        total += loss.double()
    model.train()
    if env.is_distributed:
        dist.all_reduce(total)
    return float(total.item() / (iters * env.world_size))
