"""Real multi-process runs on localhost with gloo: the local launcher (Indexed Job path) and torchrun."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import REPO, clean_env, run_trainer, summary_of, tiny_config, val_losses
from tinygpt import saved
from tinygpt.saved import complete_checkpoints
from trainer.launcher import free_port

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


FINISHED_SETTINGS: dict[str, dict[str, Any]] = {"train": {"max_steps": 10, "eval_every": 10}}


def _finished_job(directory: Path, rendezvous_timeout_s: float) -> Path:
    """The config of a job whose checkpoint.dir (under `directory`) holds its final checkpoint."""
    config = _job(directory, rendezvous_timeout_s)
    result = run_trainer("train", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return config


def _job(directory: Path, rendezvous_timeout_s: float) -> Path:
    return tiny_config(directory, **FINISHED_SETTINGS, distributed={"rendezvous_timeout_s": rendezvous_timeout_s})


@contextmanager
def _indexed_job_ranks(configs: dict[int, Path], logs: Path) -> Iterator[dict[int, subprocess.Popen[str]]]:
    """Start `python -m trainer train` as the given ranks of a 2-pod Indexed Job on 127.0.0.1, each with its own
    config (so its own checkpoint.dir: ranks need not share a filesystem); yields the processes, killed at exit."""
    port = str(free_port())
    procs: dict[int, subprocess.Popen[str]] = {}
    try:
        for rank, config in configs.items():
            env = clean_env(JOB_COMPLETION_INDEX=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            with (logs / f"rank{rank}.out").open("w") as out, (logs / f"rank{rank}.err").open("w") as err:
                procs[rank] = subprocess.Popen(
                    [sys.executable, "-m", "trainer", "train", "--config", str(config)],
                    env=env, cwd=REPO, stdout=out, stderr=err, text=True,
                )  # fmt: skip
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_finished_job_ends_on_every_rank_although_only_rank_0_has_the_checkpoint(tmp_path: Path) -> None:
    # Short, so that a rank waiting for a rank 0 that never hosts the store fails quickly; long enough for the
    # other rank's interpreter to start.
    rank0_config = _finished_job(tmp_path / "rank0", rendezvous_timeout_s=15)
    rank1_config = _job(tmp_path / "rank1", rendezvous_timeout_s=15)
    (tmp_path / "rank1" / "checkpoints").mkdir()  # another filesystem: empty
    with _indexed_job_ranks({0: rank0_config, 1: rank1_config}, tmp_path) as procs:
        codes = {rank: proc.wait(timeout=120) for rank, proc in procs.items()}
    logs = {rank: (tmp_path / f"rank{rank}.err").read_text() for rank in procs}
    assert codes == {0: 0, 1: 0}, logs
    summary = summary_of((tmp_path / "rank0.out").read_text())
    assert summary["step"] == 10 and summary["resumed_from_step"] == 10 and summary["tokens_per_s"] == 0
    assert (tmp_path / "rank1.out").read_text() == ""  # no summary from rank 1
    assert "rank 1: rank 0's checkpoint is at step 10 (train.max_steps=10): nothing to train" in logs[1]
    assert "did not acknowledge" not in logs[0]  # rank 0 did not wait out its bound: rank 1 answered
    assert not list((tmp_path / "rank1" / "checkpoints").iterdir())


def test_a_finished_rank_0_whose_peers_already_completed_waits_for_them_only_a_bounded_time(tmp_path: Path) -> None:
    # An Indexed Job retries rank 0 alone (backoffLimitPerIndex) after the other pods completed: nobody answers.
    config = _finished_job(tmp_path, rendezvous_timeout_s=2)
    with _indexed_job_ranks({0: config}, tmp_path) as procs:
        code = procs[0].wait(timeout=120)
    stderr = (tmp_path / "rank0.err").read_text()
    assert code == 0, stderr
    assert summary_of((tmp_path / "rank0.out").read_text())["step"] == 10
    assert "rank 0: rank 1 did not acknowledge the end of training within 2 s" in stderr
