"""What the CRD schema cannot check: the train.yaml sections (with the trainer's own rules, trainer.config, which
imports no torch), the global batch against the world size, keys the resource owns, and GPUs on a stack without
them. Every problem names its field; any problem makes the TrainingJob Failed (InvalidSpec) before anything is
created."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer.config import ConfigError, build_config
from workloads.train_yaml import owner_field, user_sections
from workloads.trainingjob import READ_WRITE_ONCE_POD, RUN_NAME_MAX, run_name


def spec_problems(tj: Mapping[str, Any], *, gpus_available: bool, access_mode: str = "ReadWriteOnce") -> list[str]:
    """Every problem of a TrainingJob's spec, each naming its field; empty when the run can be created.
    `access_mode` is the checkpoint volume's: ReadWriteOncePod lets one pod mount it."""
    spec = tj["spec"]
    problems: list[str] = []
    workers = int(spec.get("workers", 1))
    if access_mode == READ_WRITE_ONCE_POD and workers > 1:
        problems.append(
            f"spec.workers={workers}: the checkpoint volume is ReadWriteOncePod, so only one pod can mount it; "
            "use workers: 1 with more GPUs per worker, or ask the platform for a ReadWriteOnce/ReadWriteMany volume"
        )
    if len(run_name(tj)) > RUN_NAME_MAX:
        problems.append(f"spec.runName: {run_name(tj)!r} is longer than {RUN_NAME_MAX} characters")
    gpus = int(spec.get("gpusPerWorker", 0))
    if gpus and not gpus_available:
        problems.append(f"spec.gpusPerWorker={gpus}: this platform has no GPUs (GPUS_AVAILABLE=false)")
    train = spec.get("train") or {}
    if not isinstance(train, Mapping):
        return [*problems, "spec.train: must be a mapping of train.yaml sections"]
    for section, values in train.items():
        for key in values if isinstance(values, Mapping) else ():
            if where := owner_field(f"{section}.{key}", "trainingjob"):
                problems.append(f"spec.train.{section}.{key}: set {where} instead")
    try:
        config = build_config(user_sections(train, "trainingjob"), environ={})
    except ConfigError as err:
        return [*problems, *(f"spec.train.{p.strip()}" for p in str(err).split("; "))]
    world = int(spec.get("workers", 1)) * max(1, gpus)
    if config.train.batch_size % world:
        problems.append(
            f"spec.train.train.batch_size={config.train.batch_size}: must divide evenly across the world size "
            f"{world} (workers x max(1, gpusPerWorker))"
        )
    return problems


def run_shape(tj: Mapping[str, Any]) -> tuple[int, int] | None:
    """(train.max_steps, tokens per step = batch_size x block_size) of a valid spec, for progress and ETA."""
    try:
        config = build_config(user_sections(tj["spec"].get("train") or {}, "trainingjob"), environ={})
    except (ConfigError, AttributeError, TypeError):
        return None
    return config.train.max_steps, config.train.batch_size * config.model.block_size
