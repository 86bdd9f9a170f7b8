"""Real multi-process runs on localhost with gloo: the local launcher (Indexed Job path) and torchrun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import clean_env, run_trainer, summary_of, tiny_config, val_losses
from tinygpt import saved
from tinygpt.saved import complete_checkpoints

pytestmark = pytest.mark.slow


def _check_run(stdout: str, checkpoints: Path, max_steps: int) -> dict[str, object]:
    summary = summary_of(stdout)
    assert summary["step"] == max_steps and summary["world_size"] == 2
    losses = val_losses(stdout)
    assert sorted(losses) == [20, 40]
    assert losses[40] < losses[20] - 0.1, losses  # learning happened
    assert summary["val_loss"] == pytest.approx(losses[40], abs=1e-3)
    assert {"step", "train_loss", "val_loss", "tokens_per_s", "checkpoint"} <= summary.keys()
    assert [step for step, _ in complete_checkpoints(checkpoints)] == [30, 40]  # every 10, keep 2
    assert summary["checkpoint"] == str(checkpoints / "step-00000040")
    saved.load(Path(str(summary["checkpoint"])))  # the final checkpoint is servable as is
    return summary


def test_launch_two_ranks_trains_and_checkpoints(tmp_path: Path) -> None:
    result = run_trainer("launch", "--nproc", "2", "--config", str(tiny_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    summary = _check_run(result.stdout, tmp_path / "checkpoints", 40)
    assert summary["run_id"] is None and summary["model_uri"] is None


def test_torchrun_two_ranks_trains_and_checkpoints(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "trainer",
        "train",
        "--config",
        str(tiny_config(tmp_path)),
    ]
    result = subprocess.run(command, env=clean_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    _check_run(result.stdout, tmp_path / "checkpoints", 40)


def test_the_loss_curve_does_not_depend_on_the_number_of_ranks(tmp_path: Path) -> None:
    one = run_trainer("train", "--config", str(tiny_config(tmp_path / "one")), "--set", "train.max_steps=20")
    two = run_trainer(
        "launch", "--nproc", "2", "--config", str(tiny_config(tmp_path / "two")), "--set", "train.max_steps=20"
    )
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    # Same global batches whatever the world size: only the float summation order differs.
    assert summary_of(one.stdout)["val_loss"] == pytest.approx(summary_of(two.stdout)["val_loss"], abs=1e-3)
