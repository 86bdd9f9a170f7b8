"""Batched decoding with sequences joining and leaving between steps, on `tinygpt`'s cached forward.

The decoder owns one key/value cache slot per batch row. Rows are kept contiguous (a finished row's slot is
filled by moving the last row into it), so every decoding step is one forward pass over rows `[0, n)`.

Each step, every row contributes exactly one new token:
1. rows that just joined, or whose cache is full, are *prefilled*: their context window, except its last
   token, is run through the model in one padded batch, writing keys and values into their slots;
2. all rows then run one cached decoding step on their last token, and a token is sampled for each.

Context windows follow `tinygpt.generate`: prompts are left-truncated to `block_size` tokens, and a full cache
slides the window to its last `block_size // 2` tokens (`slid_window_start`), whose cache is then recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass

import torch

from tinygpt.generate import sample, slid_window_start
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer

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
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = model.config.block_size
        self.max_batch_size = max_batch_size
        self.device = model.wte.weight.device
        self.cache = model.new_cache(max_batch_size)
        self.rows: list[Sequence] = []
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
                self.cache.move(last, slot)
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
                seq.window_start = slid_window_start(len(seq.tokens), self.block_size)
            windows.append((slot, seq.tokens[seq.window_start : -1]))
            seq.cache_len = len(seq.tokens) - 1 - seq.window_start
        windows = [w for w in windows if w[1]]
        if not windows:
            return
        length = max(len(window) for _, window in windows)
        ids = torch.zeros((len(windows), length), dtype=torch.long)
        for i, (_, window) in enumerate(windows):
            ids[i, : len(window)] = torch.tensor(window)
        slots = torch.tensor([slot for slot, _ in windows], device=self.device)
        # Right padding is harmless under causal attention: real positions never attend to later padding, and
        # the padding's cache entries lie beyond each row's `cache_len`, so decoding masks or overwrites them.
        self.model(ids.to(self.device), cache=self.cache, slots=slots, logits=False)

    def _decode(self) -> torch.Tensor:
        """One cached step for every row on its last token; returns next-token logits (n, vocab)."""
        last_tokens = torch.tensor([[seq.tokens[-1]] for seq in self.rows], device=self.device)
        positions = torch.tensor([seq.cache_len for seq in self.rows], device=self.device)
        logits, _ = self.model(last_tokens, cache=self.cache, input_pos=positions)
        for seq in self.rows:
            seq.cache_len += 1
        return logits[:, -1].float()

    def _sample(self, logits: torch.Tensor) -> list[int]:
        rows = self.rows
        temperatures = [seq.params.temperature for seq in rows]
        if all(t == 0 for t in temperatures):
            return logits.argmax(dim=-1).tolist()
        uniforms = torch.rand(len(rows), generator=self._shared_generator)
        for i, seq in enumerate(rows):
            if seq.generator is not None:
                uniforms[i] = torch.rand((), generator=seq.generator)
        device = logits.device
        return sample(
            logits,
            torch.tensor(temperatures, device=device),
            torch.tensor([seq.params.top_p for seq in rows], device=device),
            uniforms.to(device),
        ).tolist()


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
