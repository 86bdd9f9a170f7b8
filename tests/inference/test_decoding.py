"""The KV-cached batched decoder computes what the plain model computes, row by row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.decoding import FINISH_LENGTH, FINISH_STOP, BatchDecoder, SamplingParams, Sequence, generate
from inference.loading import LoadedModel, load_directory


@pytest.fixture(scope="module")
def loaded(model_a: Path) -> LoadedModel:
    return load_directory(model_a, "tiny", "1", torch.device("cpu"))


def reference_logits(loaded: LoadedModel, window: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits, _ = loaded.model(torch.tensor([window]))
    return logits[0, -1]


def test_cached_batched_logits_match_full_forward_through_joins_leaves_and_slides(loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    block = loaded.model.config.block_size
    decoder = BatchDecoder(loaded.model, tok, max_batch_size=4)
    prompts = ["def f(x):", "T", "The class statement " * 3, "import os\n"]  # one is longer than block_size
    assert len(prompts[2]) > block
    params = SamplingParams(max_tokens=2 * block + 5)
    decoder.add(Sequence(tok.encode(prompts[0]), params))
    decoder.add(Sequence(tok.encode(prompts[1]), params))
    generator = torch.Generator().manual_seed(0)
    slides = 0
    for step in range(2 * block + 5):
        if step == 3:  # rows join mid-flight
            decoder.add(Sequence(tok.encode(prompts[2]), params))
            decoder.add(Sequence(tok.encode(prompts[3]), params))
        if step == 9:  # a row leaves from the middle of the batch; the last row moves into its slot
            decoder.rows[1].cancelled = True
            decoder.remove_finished()
        starts = [seq.window_start for seq in decoder.rows]
        logits = decoder.forward()
        slides += sum(seq.window_start != s for seq, s in zip(decoder.rows, starts, strict=True))
        for row, seq in enumerate(decoder.rows):
            window = seq.tokens[seq.window_start :]
            assert 1 <= len(window) <= block
            torch.testing.assert_close(logits[row], reference_logits(loaded, window), atol=1e-4, rtol=1e-4)
            # A random next token keeps rows diverse, so the comparison covers many contexts.
            seq.append(int(torch.randint(tok.vocab_size, (), generator=generator)), "x")
    assert slides >= 3, "the windows of long rows must have slid"


def test_batch_composition_does_not_change_greedy_output(loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    prompts = [tok.encode(p) for p in ("for x in y:", "while True", "a")]
    params = SamplingParams(max_tokens=40, temperature=0.0)
    together = generate(BatchDecoder(loaded.model, tok, 8), prompts, params)
    alone = [generate(BatchDecoder(loaded.model, tok, 1), [p], params)[0] for p in prompts]
    assert [s.text for s in together] == [s.text for s in alone]
    assert all(s.completion_tokens == 40 and s.finish_reason == FINISH_LENGTH for s in together)


def test_seeded_sampling_is_reproducible_and_seed_dependent(loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    decoder = BatchDecoder(loaded.model, tok, 4)
    prompt = [tok.encode("if ")]

    def sample(seed: int, top_p: float = 1.0) -> str:
        return generate(decoder, prompt, SamplingParams(max_tokens=30, temperature=1.5, top_p=top_p, seed=seed))[0].text

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(5)}) > 1
    assert sample(3, top_p=0.5) == sample(3, top_p=0.5)


def test_top_p_tiny_keeps_only_the_most_likely_token(loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    prompts = [tok.encode("return ")]
    greedy = generate(BatchDecoder(loaded.model, tok, 1), prompts, SamplingParams(max_tokens=20, temperature=0))
    nucleus = generate(
        BatchDecoder(loaded.model, tok, 1), prompts, SamplingParams(max_tokens=20, temperature=1.0, top_p=1e-6)
    )
    assert nucleus[0].text == greedy[0].text


def test_stop_sequence_ends_the_text_before_it_and_streaming_never_leaks_it() -> None:
    seq = Sequence([0], SamplingParams(max_tokens=50, stop=("END", "zz")))
    streamed = ""
    for ch in "abcEN":
        seq.append(1, ch)
        streamed += seq.take_delta()
    assert streamed == "abc", "a possible stop-sequence prefix must be held back"
    seq.append(1, "D")
    streamed += seq.take_delta()
    assert (seq.text, seq.finish_reason, streamed) == ("abcEN"[:3], FINISH_STOP, "abc")


def test_sequence_finishes_at_max_tokens_with_held_back_text_released() -> None:
    seq = Sequence([0, 1], SamplingParams(max_tokens=3, stop=("xyz",)))
    pieces = ""
    for ch in "axy":
        seq.append(2, ch)
        pieces += seq.take_delta()
    assert seq.finish_reason == FINISH_LENGTH
    assert pieces == "axy" and seq.completion_tokens == 3


@pytest.mark.parametrize(
    "kwargs", [{"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"stop": ("",)}]
)
def test_sampling_params_reject_invalid_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_generate_refuses_more_prompts_than_slots(loaded: LoadedModel) -> None:
    with pytest.raises(ValueError, match="batch size"):
        generate(BatchDecoder(loaded.model, loaded.tokenizer, 1), [[1], [2]], SamplingParams())
