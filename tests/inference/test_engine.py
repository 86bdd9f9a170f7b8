"""The batching engine: bounded queue, cancellation, draining on close, and batching of concurrent work."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from inference.decoding import FINISH_CANCELLED, FINISH_LENGTH, SamplingParams, Sequence
from inference.engine import Engine, EngineClosedError, QueueFullError
from inference.loading import LoadedModel, load_directory
from inference.metrics import Metrics
from tests.harness.wait import eventually


@pytest.fixture(scope="module")
def loaded(model_a: Path) -> LoadedModel:
    return load_directory(model_a, "tiny", "1", torch.device("cpu"))


class Finished:
    """Collects finished sequences the way the HTTP layer is notified (on the engine thread)."""

    def __init__(self) -> None:
        self.done: list[Sequence] = []
        self.tokens_seen: list[int] = []
        self.event = threading.Event()

    def __call__(self, seq: Sequence) -> None:
        self.tokens_seen.append(seq.completion_tokens)
        if seq.finish_reason is not None:
            self.done.append(seq)
            self.event.set()


def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    eventually("the condition", predicate, timeout, 0.001, retry_on=())


def test_full_queue_refuses_all_or_nothing_and_cancelled_work_frees_the_slot(loaded: LoadedModel) -> None:
    engine = Engine(loaded, max_batch_size=1, max_queue_depth=2, metrics=Metrics())
    listener = Finished()
    endless = SamplingParams(max_tokens=10**9)
    running = Sequence([1], endless, stream=True, listener=listener)
    engine.submit([running])
    wait_until(lambda: listener.tokens_seen)  # it holds the only slot now
    waiting = [Sequence([2], SamplingParams(max_tokens=3), listener=listener) for _ in range(2)]
    with pytest.raises(QueueFullError, match="at most 2"):
        engine.submit([*waiting, Sequence([3], endless)])
    assert engine.queue_depth == 0, "a refused request must not be partly queued"
    engine.submit(waiting)
    with pytest.raises(QueueFullError):
        engine.submit([Sequence([3], endless)])
    running.cancelled = True
    wait_until(lambda: len(listener.done) == 3)
    assert running.finish_reason == FINISH_CANCELLED
    assert [s.finish_reason for s in waiting] == [FINISH_LENGTH, FINISH_LENGTH]
    assert engine.close(timeout=30)


def test_close_lets_queued_and_running_sequences_finish_then_refuses_work(loaded: LoadedModel) -> None:
    engine = Engine(loaded, max_batch_size=2, max_queue_depth=8, metrics=Metrics())
    listener = Finished()
    sequences = [Sequence([i + 1], SamplingParams(max_tokens=50), listener=listener) for i in range(5)]
    engine.submit(sequences)
    assert engine.close(timeout=60)
    assert [s.finish_reason for s in sequences] == [FINISH_LENGTH] * 5
    assert all(s.completion_tokens == 50 for s in sequences)
    with pytest.raises(EngineClosedError):
        engine.submit([Sequence([1], SamplingParams())])


def test_concurrent_sequences_share_decoding_steps(loaded: LoadedModel) -> None:
    metrics = Metrics()
    engine = Engine(loaded, max_batch_size=8, max_queue_depth=8, metrics=metrics)
    listener = Finished()
    sequences = [Sequence([i + 1], SamplingParams(max_tokens=40), listener=listener) for i in range(8)]
    engine.submit(sequences)
    wait_until(lambda: len(listener.done) == 8)
    engine.close(timeout=30)
    steps = metrics.registry.get_sample_value("inference_batch_size_count")
    tokens = metrics.registry.get_sample_value("inference_generated_tokens_total")
    assert tokens == 8 * 40
    assert steps == 40, "sequences queued together must be decoded together, one token each per step"
    assert metrics.registry.get_sample_value("inference_batch_size_bucket", {"le": "8.0"}) == steps


def test_a_failing_step_fails_its_sequences_instead_of_stranding_them(loaded: LoadedModel) -> None:
    engine = Engine(loaded, max_batch_size=2, max_queue_depth=2, metrics=Metrics())
    listener = Finished()

    def broken_step() -> None:
        raise RuntimeError("simulated device failure")

    engine.decoder.step = broken_step  # type: ignore[method-assign]
    seq = Sequence([1], SamplingParams(max_tokens=5), listener=listener)
    engine.submit([seq])
    assert listener.event.wait(30)
    assert seq.finish_reason == "error"
    assert engine.close(timeout=30)
