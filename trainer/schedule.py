"""The learning-rate schedule: `lr_at(step, config)`, linear warmup then cosine decay to `train.min_lr`."""

from __future__ import annotations

import math

from trainer.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for the step with 0-based index `step`: linear warmup, then cosine decay to min_lr."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)
