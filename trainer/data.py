"""The corpus, its character tokenizer, the train/validation split and batch sampling.

Sampling is a pure function of (seed, stream, batch index, rank, world size): a step's GLOBAL batch is drawn
from the step number alone and each rank takes its contiguous slice of it. So the data position is just the
step (nothing to replay on resume), ranks see disjoint data, and 1 rank and N ranks train on the same global
batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from tinygpt.tokenizer import CharTokenizer
from trainer.config import PYTHON_DOCS, ConfigError, DataConfig


def load_text(source: str) -> str:
    """The corpus named by `data.source`; raises ConfigError when it cannot be read as UTF-8 text."""
    if source == PYTHON_DOCS:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"data.source={source!r}: no such file; allowed: '{PYTHON_DOCS}' or a file path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"data.source={source!r}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"data.source={source!r}: cannot read ({exc.strerror})") from None
    if not text:
        raise ConfigError(f"data.source={source!r}: the file is empty")
    return text


@dataclass(frozen=True, kw_only=True, slots=True)
class Corpus:
    """The encoded corpus, split into a training head and a validation tail."""

    tokenizer: CharTokenizer
    """Built from every character of the corpus (sorted, so deterministic)."""
    train: torch.Tensor
    """Token ids (int64) of the first 1 - data.val_fraction of the text."""
    val: torch.Tensor
    """Token ids (int64) of the rest."""


def build_corpus(config: DataConfig, block_size: int) -> Corpus:
    """Load, tokenize and split; both splits must hold at least one sequence of `block_size` + 1 tokens."""
    text = load_text(config.source)
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.int64)
    n_val = int(len(ids) * config.val_fraction)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
    if min(len(train), len(val)) <= block_size + 1:
        raise ConfigError(
            f"model.block_size={block_size}, data.val_fraction={config.val_fraction}: the corpus "
            f"({len(ids)} characters) splits into {len(train)} train and {len(val)} validation characters; "
            f"each split needs more than block_size + 1"
        )
    return Corpus(tokenizer=tokenizer, train=train, val=val)


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from `parts`; stable across processes and Python versions (unlike `hash`)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_batch(
    data: torch.Tensor,
    *,
    seed: int,
    stream: str,
    index: int,
    global_batch: int,
    block_size: int,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of global batch number `index` of `stream`: inputs and next-token targets, each
    (global_batch // world_size, block_size), from random windows of `data`."""
    generator = torch.Generator().manual_seed(mix_seed(seed, stream, index))
    starts = torch.randint(0, len(data) - block_size, (global_batch,), generator=generator)
    per_rank = global_batch // world_size
    mine = starts[rank * per_rank : (rank + 1) * per_rank]
    windows = data[mine[:, None] + torch.arange(block_size + 1)]
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchSampler:
    """`sample_batch` with everything but the batch index fixed, for one split."""

    data: torch.Tensor
    """Token ids of the split."""
    stream: str
    """Names the random stream (`train`, `val`) so splits never share batches' randomness."""
    seed: int
    """train.seed."""
    global_batch: int
    """train.batch_size."""
    block_size: int
    """model.block_size."""
    rank: int
    """This process's rank."""
    world_size: int
    """Number of ranks."""
    device: torch.device
    """Where batches are placed."""

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = sample_batch(
            self.data, seed=self.seed, stream=self.stream, index=index, global_batch=self.global_batch,
            block_size=self.block_size, rank=self.rank, world_size=self.world_size,
        )
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
