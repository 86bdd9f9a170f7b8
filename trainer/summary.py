"""`Summary`: what a finished run reports, as rank 0's final JSON line (steps, losses, throughput, the final
checkpoint and, with tracking, the MLflow run and the registered model)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """Rank 0's final JSON line."""

    step: int
    """Steps completed."""
    train_loss: float | None
    """Mean training loss of the last step (None if no step ran since the last checkpoint was written)."""
    val_loss: float | None
    """Validation loss at the last step."""
    tokens_per_s: float
    """Global training tokens per second of training-step time in this process (0 when no step ran)."""
    checkpoint: str
    """The final checkpoint directory (also a saved-model directory)."""
    world_size: int
    """Ranks that trained."""
    resumed_from_step: int
    """Step of the checkpoint this process started from (0 = a fresh start)."""
    run_id: str | None = None
    """MLflow run, when tracking is on."""
    model_uri: str | None = None
    """`models:/<name>/<version>` of the registered model, when tracking is on."""
    alias_moved: bool | None = None
    """Whether tracking.alias now points at the new version."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))
