"""Fault tolerance: a rank killed with SIGKILL and relaunched ends bitwise where an uninterrupted run ends;
SIGTERM makes rank 0 checkpoint before exiting."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import (
    REPO,
    clean_env,
    run_trainer,
    sigterm_once_logged,
    summary_of,
    tiny_config,
    wait_for,
)
from tinygpt.saved import COMPLETE_FILE, latest_checkpoint
from trainer.checkpoint import STATE_FILE

pytestmark = pytest.mark.slow

MAX_STEPS = 150
# dropout > 0 so that exactness also covers the random masks, not just the data order
SETTINGS: dict[str, dict[str, Any]] = {
    "model": {"dropout": 0.1},
    "train": {"max_steps": MAX_STEPS, "eval_every": 100, "log_every": 50},
    "checkpoint": {"every": 10, "keep": 3},
}


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    index = next(item for item in environ if item.startswith(b"JOB_COMPLETION_INDEX="))
    return int(index.split(b"=", 1)[1])


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "model.pt", weights_only=True)


def test_sigkill_of_a_rank_then_relaunch_gives_bitwise_the_same_weights(tmp_path: Path) -> None:
    reference = run_trainer("launch", "--nproc", "2", "--config", str(tiny_config(tmp_path / "ref", **SETTINGS)))
    assert reference.returncode == 0, reference.stderr

    config = tiny_config(tmp_path / "killed", **SETTINGS)
    checkpoints = tmp_path / "killed" / "checkpoints"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "trainer", "launch", "--nproc", "2", "--config", str(config)],
        env=clean_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (checkpoints / "step-00000020" / COMPLETE_FILE).exists(), "the second checkpoint")
        rank1 = next(pid for pid in _children(launcher.pid) if _rank_of(pid) == 1)
        subprocess.run(["kill", "-KILL", str(rank1)], check=True)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode not in (0, 2), stderr
    assert "rank 1 exited with 137" in stderr
    interrupted_at = json.loads((latest_checkpoint(checkpoints) / STATE_FILE).read_text())["step"]  # type: ignore[operator]
    assert 20 <= interrupted_at < MAX_STEPS, "the kill must land mid-training"

    resumed = run_trainer("launch", "--nproc", "2", "--config", str(config))
    assert resumed.returncode == 0, resumed.stderr
    summary = summary_of(resumed.stdout)
    assert summary["resumed_from_step"] == interrupted_at
    assert summary["step"] == MAX_STEPS

    expected = _weights(Path(summary_of(reference.stdout)["checkpoint"]))
    actual = _weights(Path(summary["checkpoint"]))
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different, f"weights differ after resume: {different}"
    assert summary["val_loss"] == summary_of(reference.stdout)["val_loss"]


def test_sigterm_makes_rank0_checkpoint_before_exiting(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, train={"max_steps": 100_000}, checkpoint={"every": 0})
    checkpoints = tmp_path / "checkpoints"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer", "launch", "--nproc", "2", "--config", str(config)],
        env=clean_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = sigterm_once_logged(trainer, "step 20/")  # training is under way once rank 0 logs a step
    assert trainer.returncode == 128 + signal.SIGTERM, stderr
    latest = latest_checkpoint(checkpoints)
    assert latest is not None, stderr
    state = json.loads((latest / STATE_FILE).read_text())
    assert 20 <= state["step"] < 100_000  # checkpoint.every=0: only the signal can have written it
    assert "stopped by signal 15" in stderr
