"""Fixtures for the model package's tests: small random GPTs whose logits are far apart, and their tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from pydoc_data.topics import topics

import pytest
import torch

from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer

CORPUS = "\n".join(topics[key] for key in sorted(topics))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text(CORPUS)


def make_model(vocab_size: int, *, seed: int = 0, block_size: int = 16) -> GPT:
    """A random GPT in eval mode; the output head is scaled up so that greedy choices are never near-ties."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    return model.eval()


@pytest.fixture
def model(tokenizer: CharTokenizer) -> GPT:
    return make_model(tokenizer.vocab_size)
