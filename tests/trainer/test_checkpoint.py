"""Checkpoints: layout (also a saved-model directory), atomicity, pruning and RNG state."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest
import torch

from tinygpt import saved
from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from tinygpt.saved import COMPLETE_FILE, complete_checkpoints, latest_checkpoint
from tinygpt.tokenizer import CharTokenizer
from trainer import checkpoint as ckpt
from trainer.checkpoint import TrainingState, load_checkpoint, save_checkpoint

TOKENIZER = CharTokenizer(list("abcdef"))
TWO_HOURS_S = 2 * 3600.0
"""Longer than `trainer.checkpoint.ABANDONED_TMP_AGE_S`."""


def _model() -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=6, block_size=8, n_layer=1, n_head=2, n_embd=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _, loss = model(torch.randint(0, 6, (2, 8)), torch.randint(0, 6, (2, 8)))
    assert loss is not None
    loss.backward()
    optimizer.step()
    return model, optimizer


def _state(step: int) -> TrainingState:
    return TrainingState(
        step=step, samples_seen=step * 4, seed=1, world_size=2, run_id="abc", train_loss=1.5, val_loss=1.6
    )


def _save(root: Path, step: int, keep: int = 5) -> Path:
    model, optimizer = _model()
    return save_checkpoint(root, model=model, tokenizer=TOKENIZER, optimizer=optimizer, state=_state(step), keep=keep)


def test_a_checkpoint_is_a_saved_model_directory_and_holds_the_training_state(tmp_path: Path) -> None:
    path = _save(tmp_path, 7)
    assert path == tmp_path / "step-00000007"
    names = {p.name for p in path.iterdir()}
    assert {
        "model.pt",
        "model_config.json",
        "tokenizer.json",
        COMPLETE_FILE,
        "optimizer.pt",
        "rng.pt",
        "trainer_state.json",
    } == names
    model, optimizer = _model()
    served = saved.load(path).model
    for key, value in model.state_dict().items():
        assert torch.equal(served.state_dict()[key], value)
    assert CharTokenizer.load(path / "tokenizer.json").chars == TOKENIZER.chars
    loaded = load_checkpoint(path)
    assert loaded.state == _state(7)
    assert loaded.optimizer_state["state"].keys() == optimizer.state_dict()["state"].keys()


def test_latest_skips_incomplete_and_temporary_directories(tmp_path: Path) -> None:
    _save(tmp_path, 10)
    (tmp_path / "step-00000030").mkdir()  # no COMPLETE marker: a crashed or foreign write
    (tmp_path / ".tmp-step-00000040-123").mkdir()
    (tmp_path / "notes").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    assert latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("failing_file", ["optimizer.pt", "rng.pt", COMPLETE_FILE])
def test_a_crash_while_saving_never_leaves_a_newer_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_file: str
) -> None:
    _save(tmp_path, 10)
    real_sync = ckpt._write_synced

    def crash(path: Path, write: object) -> None:
        if path.name == failing_file:
            raise OSError("disk full")
        real_sync(path, write)  # type: ignore[arg-type]

    monkeypatch.setattr(ckpt, "_write_synced", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 20)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    assert not (tmp_path / "step-00000020").exists()
    monkeypatch.undo()
    _save(tmp_path, 20)  # the next save succeeds and clears the leftover
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000020"
    assert not list(tmp_path.glob(".tmp-*"))


def test_only_the_newest_keep_are_kept(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep=2)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [30, 40]


def test_saving_an_existing_complete_step_keeps_it(tmp_path: Path) -> None:
    first = _save(tmp_path, 10)
    marker = (first / COMPLETE_FILE).stat().st_mtime_ns
    assert _save(tmp_path, 10) == first
    assert (first / COMPLETE_FILE).stat().st_mtime_ns == marker


def test_rng_states_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    random.seed(3)
    states = ckpt.capture_rng()
    torch.save(states, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), ckpt.np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert ckpt.np.random.rand() == expected[2]


def _other_writers_temp(root: Path, step: int, age_s: float, file_age_s: float | None = None) -> Path:
    """A temporary checkpoint directory of another process (another pod's rank 0), created `age_s` ago, with a
    file last written `file_age_s` ago (default: then too)."""
    temp = root / f".tmp-step-{step:08d}-otherpod-1-0123abcd"
    temp.mkdir(parents=True)
    (temp / "model.pt").write_bytes(b"half written")
    now = time.time()
    for path, age in ((temp / "model.pt", age_s if file_age_s is None else file_age_s), (temp, age_s)):
        os.utime(path, (now - age, now - age))
    return temp


@pytest.mark.parametrize(
    ("age_s", "file_age_s"),
    [(60, None), (TWO_HOURS_S, 60)],  # the second: a file still being written for a long time
)
def test_saving_keeps_another_writers_temporary_directory_while_it_may_be_in_use(
    tmp_path: Path, age_s: float, file_age_s: float | None
) -> None:
    # A preempted gang's rank 0 may still be writing its SIGTERM checkpoint into the shared directory.
    other = _other_writers_temp(tmp_path, 10, age_s, file_age_s)
    _save(tmp_path, 20)
    assert (other / "model.pt").read_bytes() == b"half written"


def test_saving_removes_another_writers_abandoned_temporary_directory(tmp_path: Path) -> None:
    stale = _other_writers_temp(tmp_path, 10, TWO_HOURS_S)
    _save(tmp_path, 20)
    assert not stale.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_another_writers_complete_checkpoint_of_the_same_step_is_never_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "step-00000010"
    real_sync = ckpt._write_synced

    def other_writer_finishes_first(path: Path, write: object) -> None:
        real_sync(path, write)  # type: ignore[arg-type]
        if path.name == COMPLETE_FILE:  # ours is complete; the other writer renames its own copy in first
            shutil.copytree(path.parent, final)
            (final / "written-by").write_text("other")

    monkeypatch.setattr(ckpt, "_write_synced", other_writer_finishes_first)
    assert _save(tmp_path, 10) == final
    assert (final / "written-by").read_text() == "other"
    assert latest_checkpoint(tmp_path) == final
    assert not list(tmp_path.glob(".tmp-*"))
