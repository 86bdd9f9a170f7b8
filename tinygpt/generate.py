"""Sampling and generation through the KV cache, for one or a few sequences (the MLflow model, tests).

Context longer than `block_size`: like nanoGPT's crop, the model only ever sees a window of at most `block_size`
tokens, with positions counted from the window's start. A prompt is left-truncated to its last `block_size`
tokens. When a cache is full, the window slides: it restarts from the last `block_size // 2` tokens and their
cache is recomputed (positions shift, so cached keys cannot be reused), after which decoding is cached again. So
each token is predicted from between `block_size // 2` and `block_size` tokens of context, and recomputation
costs one prefill per `block_size // 2` generated tokens instead of one per token. The inference server's batch
decoder follows the same policy through `slid_window_start`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tinygpt.model import GPT


def slid_window_start(num_tokens: int, block_size: int) -> int:
    """Where the context window of a sequence of `num_tokens` tokens restarts once its cache is full."""
    return num_tokens - max(1, block_size // 2)


def sample(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, uniforms: torch.Tensor
) -> torch.Tensor:
    """One token per row of `logits` (B, vocab): greedy where `temperature` is 0, else drawn with inverse-CDF
    sampling from `uniforms` (B,) in [0, 1) among the most likely tokens whose probabilities add up to `top_p`.

    Each row's draw depends only on its own uniform, so a row samples the same tokens whatever batch it is in.
    """
    greedy = logits.argmax(dim=-1)
    temps = temperature.clamp_min(1e-5)[:, None]
    probs, order = torch.sort(torch.softmax(logits / temps, dim=-1), dim=-1, descending=True)
    if bool((top_p < 1).any()):
        # Keep the smallest prefix of the sorted distribution whose mass reaches top_p (always >= 1 token).
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p[:, None], 0.0)
    cdf = probs.cumsum(dim=-1)
    draws = uniforms[:, None] * cdf[:, -1:]
    picks = torch.searchsorted(cdf, draws).clamp_max(cdf.shape[-1] - 1)
    sampled = order.gather(-1, picks)[:, 0]
    return torch.where(temperature == 0, greedy, sampled)


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[int]:
    """`max_new_tokens` tokens continuing `prompt`, one cached forward step per token (see the module docstring)."""
    if not prompt:
        raise ValueError("a prompt needs at least one token")
    block_size = model.config.block_size
    device = model.wte.weight.device
    cache = model.new_cache(1)
    tokens = list(prompt)
    window_start = max(0, len(tokens) - block_size)
    cache_len = 0
    temperatures = torch.tensor([temperature], device=device)
    top_ps = torch.tensor([top_p], device=device)
    for _ in range(max_new_tokens):
        if cache_len == block_size:
            window_start = slid_window_start(len(tokens), block_size)
            cache_len = 0
        if cache_len == 0:  # a new or slid window: cache all of it but its last token in one pass
            cache_len = len(tokens) - 1 - window_start
            if cache_len:
                model(torch.tensor([tokens[window_start:-1]], device=device), cache=cache, logits=False)
        logits, _ = model(
            torch.tensor([tokens[-1:]], device=device),
            cache=cache,
            input_pos=torch.tensor([cache_len], device=device),
        )
        cache_len += 1
        uniforms = torch.rand(1, generator=generator).to(device)
        tokens.append(int(sample(logits[:, -1].float(), temperatures, top_ps, uniforms)[0]))
    return tokens[len(prompt) :]
