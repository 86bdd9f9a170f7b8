"""`GPTConfig`, the shape of the network: the trainer's `model:` section and `model_config.json` of a saved model.

Deliberately free of torch, so that the trainer's configuration can be validated before any rank starts.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

VOCAB_FROM_TOKENIZER = "vocab_size"
"""The one field a training configuration does not set: it is the tokenizer's, known once the corpus is read."""


@dataclass(kw_only=True, slots=True, frozen=True)
class GPTConfig:
    """Shape of the network; saved next to the weights so a model can be rebuilt without the training config."""

    vocab_size: int | None = None
    """Number of distinct tokens (characters) the tokenizer knows; None until the tokenizer is known
    (`with_vocab`). A model can only be built from a config that has it."""
    block_size: int = 64
    """Longest context, in tokens, the model attends over; also the length of every training sequence."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide `n_embd`."""
    n_embd: int = 128
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout probability during training (0 disables it)."""
    bias: bool = True
    """Biases in the Linear and LayerNorm layers (GPT-2 has them; nanoGPT's recipes train without)."""

    def __post_init__(self) -> None:
        problems = []
        keys = ("block_size", "n_layer", "n_head", "n_embd")
        for key in keys if self.vocab_size is None else ("vocab_size", *keys):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"model.{key}={value!r}: must be an integer >= 1")
        if not problems and self.n_embd % self.n_head:
            problems.append(f"model.n_embd={self.n_embd}: must be divisible by model.n_head={self.n_head}")
        if not isinstance(self.bias, bool):
            problems.append(f"model.bias={self.bias!r}: must be true or false")
        if not 0.0 <= float(self.dropout) < 1.0:
            problems.append(f"model.dropout={self.dropout!r}: must be in [0, 1)")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def with_vocab(self, vocab_size: int) -> GPTConfig:
        return dataclasses.replace(self, vocab_size=vocab_size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        return cls(**json.loads(text))
