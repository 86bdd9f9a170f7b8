"""KV-cached batched decoding of `trainer.model.GPT` with sequences joining and leaving between steps.

The decoder owns one key/value cache slot per batch row. Rows are kept contiguous (a finished row's slot is
filled by moving the last row into it), so every decoding step is one forward pass over rows `[0, n)`.

Each step, every row contributes exactly one new token:
1. rows that just joined, or whose cache is full, are *prefilled*: their context window, except its last
   token, is run through the model in one padded batch, writing keys and values into their slots;
2. all rows then run one cached decoding step on their last token, and a token is sampled for each.

Context longer than `block_size`: like nanoGPT's crop, the model only ever sees a window of at most `block_size`
tokens, with positions counted from the window's start. A prompt is left-truncated to its last `block_size`
tokens. When a row's cache is full, the window slides: it restarts from the last `block_size // 2` tokens and
their cache is recomputed (positions shift, so cached keys cannot be reused), after which decoding is cached
again. So each token is predicted from between `block_size // 2` and `block_size` tokens of context, and
recomputation costs one prefill per `block_size // 2` generated tokens instead of one per token.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch.nn import functional as F

from trainer.model import GPT
from trainer.tokenizer import CharTokenizer


class _Attention(Protocol):
    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def project(self, y: torch.Tensor) -> torch.Tensor: ...


class _Block(Protocol):
    """The parts of a `trainer.model` block the decoder runs one by one (nanoGPT's pre-norm layout)."""

    ln_1: Callable[[torch.Tensor], torch.Tensor]
    attn: _Attention
    ln_2: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]


FINISH_LENGTH = "length"
FINISH_STOP = "stop"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one completion is sampled (the OpenAI request fields of the same names)."""

    max_tokens: int = 16
    """Tokens to generate unless a stop sequence ends the completion first."""
    temperature: float = 1.0
    """0 picks the most likely token (greedy); higher flattens the distribution."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the most likely tokens whose probabilities add up to `top_p`."""
    stop: tuple[str, ...] = ()
    """The completion ends before the first occurrence of any of these strings."""
    seed: int | None = None
    """Seeds this completion's own random generator, so its sampling does not depend on the batch."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty strings")


class Sequence:
    """One completion being generated: the tokens so far, the completion text, and why it finished.

    The decoder thread mutates it; other threads read `text` and `finish_reason` only after `finish_reason` is
    set and the owner was notified, and only ever write `cancelled`.
    """

    def __init__(
        self,
        prompt_ids: SequenceOf[int],
        params: SamplingParams,
        *,
        stream: bool = False,
        listener: Callable[[Sequence], None] | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        self.params = params
        self.tokens: list[int] = list(prompt_ids)
        self.prompt_len = len(prompt_ids)
        self.text = ""
        self.finish_reason: str | None = None
        self.cancelled = False
        self.stream = stream
        self.listener = listener
        self.cache_len = 0
        self.window_start = 0
        self.emitted = 0
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)
        self._stop_tail = max((len(s) for s in params.stop), default=1) - 1

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) - self.prompt_len

    def take_delta(self) -> str:
        """Text not handed out yet that can no longer be cut by a stop sequence (all of it once finished)."""
        end = len(self.text) if self.finish_reason else max(self.emitted, len(self.text) - self._stop_tail)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def append(self, token: int, piece: str) -> None:
        """Record a sampled token and finish the sequence on a stop sequence or at `max_tokens`."""
        self.tokens.append(token)
        self.text += piece
        if self.params.stop:
            start = max(0, len(self.text) - len(piece) - self._stop_tail)
            hits = [i for s in self.params.stop if (i := self.text.find(s, start)) >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish_reason = FINISH_STOP
                return
        if self.completion_tokens >= self.params.max_tokens:
            self.finish_reason = FINISH_LENGTH


class BatchDecoder:
    """Runs the rows of a batch one token per step with a per-row KV cache (see the module docstring)."""

    def __init__(self, model: GPT, tokenizer: CharTokenizer, max_batch_size: int) -> None:
        config = model.config
        self.model = model
        self.blocks = [cast(_Block, block) for block in model.blocks]
        self.tokenizer = tokenizer
        self.block_size = config.block_size
        self.max_batch_size = max_batch_size
        self.device = model.wte.weight.device
        head_dim = config.n_embd // config.n_head
        shape = (max_batch_size, config.n_head, config.block_size, head_dim)
        dtype = model.wte.weight.dtype
        self.keys = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(config.n_layer)]
        self.rows: list[Sequence] = []
        self._positions = torch.arange(config.block_size, device=self.device)
        self._pieces = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self._shared_generator = torch.Generator(device="cpu")
        self._shared_generator.seed()

    @property
    def free_slots(self) -> int:
        return self.max_batch_size - len(self.rows)

    def add(self, seq: Sequence) -> None:
        if not self.free_slots:
            raise RuntimeError("no free batch slot")
        seq.window_start = max(0, len(seq.tokens) - self.block_size)
        seq.cache_len = 0
        self.rows.append(seq)

    def remove_finished(self) -> list[Sequence]:
        """Drop finished and cancelled rows, keeping the remaining rows contiguous; returns the dropped ones."""
        dropped = []
        for slot in range(len(self.rows) - 1, -1, -1):
            seq = self.rows[slot]
            if seq.finish_reason is None and not seq.cancelled:
                continue
            last = len(self.rows) - 1
            if slot != last:
                for cache in (*self.keys, *self.values):
                    cache[slot].copy_(cache[last])
                self.rows[slot] = self.rows[last]
            self.rows.pop()
            dropped.append(seq)
        return dropped

    @torch.inference_mode()
    def forward(self) -> torch.Tensor:
        """Next-token logits (rows, vocab), each computed from the row's window `tokens[window_start:]`."""
        # A new row has an empty cache; a full cache means the window must slide.
        self._prefill([(slot, seq) for slot, seq in enumerate(self.rows) if seq.cache_len in (0, self.block_size)])
        return self._decode()

    @torch.inference_mode()
    def step(self) -> None:
        """Generate one token for every row (rows must all be unfinished)."""
        if not self.rows:
            return
        tokens = self._sample(self.forward())
        for seq, token in zip(self.rows, tokens, strict=True):
            seq.append(token, self._pieces[token])

    def _prefill(self, todo: list[tuple[int, Sequence]]) -> None:
        """Fill the cache of each row with its context window except the last token."""
        windows = []
        for slot, seq in todo:
            if seq.cache_len >= self.block_size:
                seq.window_start = len(seq.tokens) - max(1, self.block_size // 2)
            windows.append((slot, seq, seq.tokens[seq.window_start : -1]))
            seq.cache_len = len(seq.tokens) - 1 - seq.window_start
        windows = [w for w in windows if w[2]]
        if not windows:
            return
        length = max(len(w[2]) for w in windows)
        ids = torch.zeros((len(windows), length), dtype=torch.long)
        for i, (_, _, window) in enumerate(windows):
            ids[i, : len(window)] = torch.tensor(window)
        ids = ids.to(self.device)
        slots = torch.tensor([w[0] for w in windows], device=self.device)
        model = self.model
        # Right padding is harmless under causal attention: real positions never attend to later padding, and
        # the padding's cache entries lie beyond each row's `cache_len`, so decoding masks or overwrites them.
        x = model.wte(ids) + model.wpe(self._positions[:length])
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.qkv(block.ln_1(x))
            self.keys[layer][slots, :, :length] = k
            self.values[layer][slots, :, :length] = v
            if layer == last:
                break  # the last block's output is not needed, only its keys and values
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + block.attn.project(y)
            x = x + block.mlp(block.ln_2(x))

    def _decode(self) -> torch.Tensor:
        """One cached step for every row on its last token; returns next-token logits (n, vocab)."""
        n = len(self.rows)
        model = self.model
        last_tokens = torch.tensor([seq.tokens[-1] for seq in self.rows], device=self.device)
        positions = torch.tensor([seq.cache_len for seq in self.rows], device=self.device)
        rows = torch.arange(n, device=self.device)
        span = int(positions.max()) + 1
        mask = (self._positions[:span] <= positions[:, None])[:, None, None, :]
        x = (model.wte(last_tokens) + model.wpe(positions))[:, None, :]
        for layer, block in enumerate(self.blocks):
            q, k, v = block.attn.qkv(block.ln_1(x))
            keys, values = self.keys[layer], self.values[layer]
            keys[rows, :, positions] = k[:, :, 0]
            values[rows, :, positions] = v[:, :, 0]
            y = F.scaled_dot_product_attention(q, keys[:n, :, :span], values[:n, :, :span], attn_mask=mask)
            x = x + block.attn.project(y)
            x = x + block.mlp(block.ln_2(x))
        for seq in self.rows:
            seq.cache_len += 1
        return model.lm_head(model.ln_f(x[:, 0, :])).float()

    def _sample(self, logits: torch.Tensor) -> list[int]:
        rows = self.rows
        temperatures = [seq.params.temperature for seq in rows]
        if all(t == 0 for t in temperatures):
            return logits.argmax(dim=-1).tolist()
        greedy = logits.argmax(dim=-1)
        temps = torch.tensor(temperatures, device=logits.device).clamp_min(1e-5)[:, None]
        probs, order = torch.sort(torch.softmax(logits / temps, dim=-1), dim=-1, descending=True)
        top_p = [seq.params.top_p for seq in rows]
        if any(p < 1 for p in top_p):
            cutoff = torch.tensor(top_p, device=logits.device)[:, None]
            # Keep the smallest prefix of the sorted distribution whose mass reaches top_p (always >= 1 token).
            probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= cutoff, 0.0)
        cdf = probs.cumsum(dim=-1)
        uniforms = torch.rand(len(rows), generator=self._shared_generator)
        for i, seq in enumerate(rows):
            if seq.generator is not None:
                uniforms[i] = torch.rand((), generator=seq.generator)
        draws = uniforms.to(logits.device)[:, None] * cdf[:, -1:]
        picks = torch.searchsorted(cdf, draws).clamp_max(cdf.shape[-1] - 1)
        sampled = order.gather(-1, picks)[:, 0]
        is_greedy = torch.tensor([t == 0 for t in temperatures], device=logits.device)
        return torch.where(is_greedy, greedy, sampled).tolist()


def generate(decoder: BatchDecoder, prompts: SequenceOf[SequenceOf[int]], params: SamplingParams) -> list[Sequence]:
    """Generate a completion for every prompt in one batch in the caller's thread (no server, no queue)."""
    if len(prompts) > decoder.max_batch_size:
        raise ValueError(f"{len(prompts)} prompts exceed the decoder's batch size {decoder.max_batch_size}")
    sequences = [Sequence(p, params) for p in prompts]
    for seq in sequences:
        decoder.add(seq)
    while decoder.rows:
        decoder.step()
        decoder.remove_finished()
    return sequences
