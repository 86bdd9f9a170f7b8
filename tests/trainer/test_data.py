"""Batch sampling is a pure function of (seed, stream, index, rank, world size)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError, DataConfig
from trainer.data import build_corpus, load_text, sample_batch

DATA = torch.arange(1000)


def _batch(index: int, rank: int = 0, world_size: int = 1, seed: int = 1, stream: str = "train") -> torch.Tensor:
    x, y = sample_batch(
        DATA, seed=seed, stream=stream, index=index, global_batch=8, block_size=16, rank=rank, world_size=world_size
    )
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one
    return x


def test_the_same_arguments_give_the_same_batch() -> None:
    assert torch.equal(_batch(5), _batch(5))
    assert not torch.equal(_batch(5), _batch(6))
    assert not torch.equal(_batch(5), _batch(5, seed=2))
    assert not torch.equal(_batch(5), _batch(5, stream="val"))


def test_ranks_take_disjoint_slices_of_one_global_batch() -> None:
    whole = _batch(3)
    parts = [_batch(3, rank=r, world_size=2) for r in range(2)]
    assert [len(p) for p in parts] == [4, 4]
    assert torch.equal(torch.cat(parts), whole)


def test_python_docs_corpus_splits_into_train_and_val() -> None:
    corpus = build_corpus(DataConfig(source="python-docs", val_fraction=0.1), block_size=64)
    assert len(corpus.val) == pytest.approx(0.1 * (len(corpus.train) + len(corpus.val)), abs=1)
    assert corpus.tokenizer.decode(corpus.train[:20].tolist()) == load_text("python-docs")[:20]


def test_a_corpus_too_small_for_the_block_size_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("hello world, hello world")
    with pytest.raises(ConfigError, match=r"model.block_size=64, data.val_fraction=0.1"):
        build_corpus(DataConfig(source=str(path)), block_size=64)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_text(str(path))
