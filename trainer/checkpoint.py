"""Checkpoints: `<checkpoint.dir>/step-NNNNNNNN/` directories that are also saved-model directories.

Layout of one checkpoint (the first three files are a saved model, `tinygpt.saved`, so any checkpoint can be
served as is; the `step-NNNNNNNN` names and the `COMPLETE` marker are tinygpt.saved's checkpoint-root layout):

    model.pt, model_config.json, tokenizer.json   the saved model
    optimizer.pt                                   AdamW state
    rng.pt                                         python, numpy, torch CPU and CUDA generator states
    trainer_state.json                             step, data position, seed, world size, MLflow run id, losses
    COMPLETE                                       written last; a directory without it is ignored

A checkpoint is written into a hidden temporary directory, flushed to disk, marked COMPLETE and then renamed
into place, so a crash at any moment leaves either the previous newest checkpoint or the new complete one.

Several processes may write into one checkpoint root at once: every attempt of a job shares it, and a preempted
gang's rank 0 may still be writing its SIGTERM checkpoint while the next gang's rank 0 starts saving. So each
temporary directory is named after its writer (`.tmp-step-NNNNNNNN-<host>-<pid>-<token>`), a writer removes
only its own leftovers and those untouched for `ABANDONED_TMP_AGE_S`, and a complete checkpoint is never
replaced by another copy of the same step.
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinygpt import saved
from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from tinygpt.saved import COMPLETE_FILE, complete_checkpoints, step_dir_name
from tinygpt.tokenizer import CharTokenizer

OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
_TMP_PREFIX = ".tmp-"
ABANDONED_TMP_AGE_S = 3600.0
"""Another writer's temporary directory with nothing in it written for this long is abandoned (its writer
crashed) and may be removed. Far longer than any save takes: a directory still being written is never removed."""
_WRITER_TOKEN = secrets.token_hex(4)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingState:
    """The scalar part of a checkpoint (trainer_state.json)."""

    step: int
    """Optimizer steps completed."""
    samples_seen: int
    """Data position: global sequences consumed (batches are a pure function of the step, see trainer.data)."""
    seed: int
    """train.seed of the run."""
    world_size: int
    """Ranks that trained up to this checkpoint."""
    run_id: str | None
    """MLflow run to resume logging to; None when tracking is off."""
    train_loss: float | None
    """Mean training loss of the last step."""
    val_loss: float | None
    """Latest validation loss, if one was measured."""


def capture_rng() -> dict[str, Any]:
    """Every generator's state, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_synced(path: Path, write: Callable[[Path], object]) -> None:
    write(path)
    _fsync_file(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path,
    *,
    model: GPT,
    tokenizer: CharTokenizer,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    keep: int,
) -> Path:
    """Atomically write checkpoint `state.step` under `root`, then keep only the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(state.step)
    if (final / COMPLETE_FILE).is_file():
        # Only reachable right after resuming from this very step: training is deterministic, so the state
        # on disk is the state in memory.
        return final
    tmp = root / f"{_TMP_PREFIX}{final.name}-{writer_id()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    saved.save(model, tokenizer, tmp)
    for name in saved.SAVED_MODEL_FILES:
        _fsync_file(tmp / name)
    _write_synced(tmp / OPTIMIZER_FILE, lambda path: torch.save(optimizer.state_dict(), path))
    _write_synced(tmp / RNG_FILE, lambda path: torch.save(capture_rng(), path))
    _write_synced(tmp / STATE_FILE, lambda path: path.write_text(json.dumps(asdict(state), indent=2)))
    _write_synced(tmp / COMPLETE_FILE, lambda path: path.write_text(f"{state.step}\n"))
    _fsync_dir(tmp)
    _move_into_place(tmp, final)
    _fsync_dir(root)
    prune(root, keep)
    return final


def writer_id() -> str:
    """This process's name in its temporary directories: host and pid say who wrote one, the random token tells
    apart processes that share both (successive pods with the same hostname, each with the trainer as pid 1)."""
    return f"{socket.gethostname()}-{os.getpid()}-{_WRITER_TOKEN}"


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`.

    If another writer saved the same step first, its complete checkpoint holds the same state (training is
    deterministic) and stays; `tmp` is dropped. A `final` without COMPLETE cannot be a writer's (writers rename
    only complete directories), so it is replaced. rename(2) never replaces a non-empty directory, so a complete
    checkpoint that appears at any moment is never lost.
    """
    for _ in range(2):
        try:
            os.rename(tmp, final)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if (final / COMPLETE_FILE).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)


def _last_written(path: Path) -> float:
    """The newest mtime of `path` and its entries: a file being written keeps its directory's mtime still."""
    with os.scandir(path) as entries:
        return max([path.stat().st_mtime, *(entry.stat(follow_symlinks=False).st_mtime for entry in entries)])


def _is_removable_tmp(path: Path, now: float) -> bool:
    """Whether the temporary directory `path` is this process's leftover or another writer's abandoned one."""
    if path.name.endswith(f"-{writer_id()}"):
        return True
    try:
        return now - _last_written(path) > ABANDONED_TMP_AGE_S
    except OSError:  # removed meanwhile (its writer renamed it into place, or another prune)
        return False


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, this process's temporary leftovers and other
    writers' abandoned ones (see `ABANDONED_TMP_AGE_S`)."""
    for _, path in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    now = time.time()
    for path in root.glob(f"{_TMP_PREFIX}step-*"):
        if _is_removable_tmp(path, now):
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    """Its directory."""
    state: TrainingState
    """Scalars from trainer_state.json."""
    model_config: GPTConfig
    """Shape of the saved model."""
    tokenizer: CharTokenizer
    """The saved tokenizer."""
    model_state: dict[str, torch.Tensor]
    """Weights (`GPT.state_dict()`)."""
    optimizer_state: dict[str, Any]
    """`Optimizer.state_dict()`."""
    rng: dict[str, Any]
    """Generator states saved by rank 0 (see `capture_rng`)."""


def read_state(path: Path) -> TrainingState:
    """Only the scalar state of the checkpoint at `path` (cheap)."""
    return TrainingState(**json.loads((path / STATE_FILE).read_text()))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read every part of the checkpoint at `path`."""
    return Checkpoint(
        path=path,
        state=read_state(path),
        model_config=saved.load_config(path),
        tokenizer=saved.load_tokenizer(path),
        model_state=saved.load_weights(path, map_location),
        optimizer_state=torch.load(path / OPTIMIZER_FILE, map_location=map_location, weights_only=True),
        rng=torch.load(path / RNG_FILE, map_location="cpu", weights_only=True),
    )
