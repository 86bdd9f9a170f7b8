"""One forward for training and generation: the cached path computes what the full forward computes."""

from __future__ import annotations

import pytest
import torch

from tinygpt.config import GPTConfig
from tinygpt.generate import generate, sample, slid_window_start
from tinygpt.model import GPT


def full_logits(model: GPT, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits, _ = model(torch.tensor([tokens]))
    return logits[0]


def test_cached_forward_in_chunks_equals_the_full_forward(model: GPT) -> None:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(model.vocab_size, (model.config.block_size,), generator=generator)
    cache = model.new_cache(1)
    pieces = []
    with torch.inference_mode():
        for start, end in ((0, 5), (5, 6), (6, 13), (13, 16)):
            logits, _ = model(tokens[None, start:end], cache=cache, input_pos=torch.tensor([start]))
            pieces.append(logits[0])
    torch.testing.assert_close(torch.cat(pieces), full_logits(model, tokens.tolist()), atol=1e-5, rtol=1e-5)


def test_rows_at_different_positions_and_slots_see_only_their_own_cache(model: GPT) -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randint(model.vocab_size, (n,), generator=gen).tolist() for n in (9, 4))
    cache = model.new_cache(3)
    with torch.inference_mode():
        # Both prefixes in one padded batch, into slots 2 and 0 (b is right-padded with junk).
        padded = torch.tensor([a[:-1], b[:-1] + [7] * 5])
        model(padded, cache=cache, slots=torch.tensor([2, 0]))
        cache.move(2, 1)  # what a batch does when a row leaves: a's cache now lives in slot 1
        logits, _ = model(
            torch.tensor([[b[-1]], [a[-1]]]), cache=cache, input_pos=torch.tensor([len(b) - 1, len(a) - 1])
        )
    torch.testing.assert_close(logits[0, 0], full_logits(model, b)[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, 0], full_logits(model, a)[-1], atol=1e-5, rtol=1e-5)


def test_a_prefill_without_logits_fills_the_same_cache(model: GPT) -> None:
    tokens = torch.randint(model.vocab_size, (2, 10), generator=torch.Generator().manual_seed(5))
    with_logits, without = model.new_cache(2), model.new_cache(2)
    with torch.inference_mode():
        model(tokens, cache=with_logits)
        assert model(tokens, cache=without, logits=False) == (None, None)
    for a, b in zip((*with_logits.keys, *with_logits.values), (*without.keys, *without.values), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert bool(without.keys[-1][:, :, :10].abs().sum() > 0), "the last layer's keys must be written too"


def test_a_cache_cannot_grow_past_the_context_window(model: GPT) -> None:
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match="beyond block_size"):
        model(torch.zeros((1, 2), dtype=torch.long), cache=cache, input_pos=torch.tensor([model.config.block_size - 1]))
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros((1, model.config.block_size + 1), dtype=torch.long))


def recompute_generate(
    model: GPT, prompt: list[int], steps: int, generator: torch.Generator, temperature: float
) -> list[int]:
    """The reference: every token from a full forward over its window, with the documented window policy."""
    block = model.config.block_size
    tokens = list(prompt)
    start = max(0, len(tokens) - block)
    for _ in range(steps):
        if len(tokens) - start > block:
            start = slid_window_start(len(tokens), block)
        logits = full_logits(model, tokens[start:])[-1:]
        uniforms = torch.rand(1, generator=generator)
        tokens.append(int(sample(logits, torch.tensor([temperature]), torch.tensor([1.0]), uniforms)[0]))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("prompt_len", [1, 5, 40])
def test_generation_through_the_cache_equals_recompute(model: GPT, temperature: float, prompt_len: int) -> None:
    prompt = torch.randint(model.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(3)).tolist()
    steps = 3 * model.config.block_size  # slides the window several times
    cached = generate(model, prompt, steps, temperature=temperature, generator=torch.Generator().manual_seed(4))
    reference = recompute_generate(model, prompt, steps, torch.Generator().manual_seed(4), temperature)
    assert cached == reference
    assert len(set(cached)) > 3, "a degenerate model would make the comparison meaningless"


def test_sampling_honours_temperature_zero_and_a_tiny_top_p() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.9]])
    uniforms = torch.tensor([0.999, 0.999])
    assert sample(logits, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), uniforms).tolist() == [1, 0]
    assert sample(logits, torch.tensor([1.0, 1.0]), torch.tensor([1e-6, 1e-6]), uniforms).tolist() == [1, 0]
    # With the whole distribution, a uniform near 1 lands on the least likely token.
    assert sample(logits, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), uniforms).tolist() == [0, 1]


def test_training_forward_returns_the_loss_and_gradients_flow(model: GPT) -> None:
    model.train()
    x = torch.randint(model.vocab_size, (2, 8))
    logits, loss = model(x, x)
    assert logits.shape == (2, 8, model.vocab_size) and loss is not None
    loss.backward()
    assert model.wte.weight.grad is not None and model.lm_head.weight.grad is not None


def test_config_validation_names_the_keys_and_needs_a_vocabulary() -> None:
    with pytest.raises(ValueError, match=r"model.n_layer=0: must be an integer >= 1"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match=r"model.n_embd=30: must be divisible by model.n_head=4"):
        GPTConfig(n_embd=30)
    with pytest.raises(ValueError, match=r"model.dropout=1.0"):
        GPTConfig(dropout=1.0)
    with pytest.raises(ValueError, match="vocab_size is unset"):
        GPT(GPTConfig())
    config = GPTConfig(n_layer=1).with_vocab(11)
    assert GPTConfig.from_json(config.to_json()) == config and config.vocab_size == 11
