"""Small pure pieces: learning-rate schedule, launcher exit codes and environments, progress lines, CPU budget,
rank 0's start decision."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch.distributed as dist

from trainer.config import TrainConfig
from trainer.distenv import DistEnv
from trainer.launcher import exit_code, rank_environments
from trainer.progress import Progress
from trainer.runtime import (
    acknowledge_finish,
    announce_start,
    await_acknowledgements,
    await_start,
    cpu_budget,
)
from trainer.schedule import lr_at


def test_lr_warms_up_linearly_then_decays_to_min_lr() -> None:
    config = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000)
    assert lr_at(0, config) == pytest.approx(1e-3 / 101)
    assert lr_at(99, config) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(100, config) == pytest.approx(1e-3)
    assert lr_at(1050, config) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(1999, config) == pytest.approx(1e-4, rel=1e-3)
    rates = [lr_at(step, config) for step in range(100, 2000)]
    assert rates == sorted(rates, reverse=True)


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([0, 0], 0),
        ([0, 1], 1),
        ([-9, 1], 137),
        ([1, 2], 2),
        ([None, 143], 143),
        ([None, None], 0),
        ([0, 3], 3),
        ([3, 3], 3),
        ([3, 2], 2),
        ([None, 3], 3),
    ],
)
def test_launcher_exit_code(codes: list[int | None], expected: int) -> None:
    assert exit_code(codes) == expected


def test_launcher_gives_each_rank_the_indexed_job_environment() -> None:
    base = {"PATH": "/bin", "RANK": "5", "LOCAL_RANK": "1", "MLFLOW_TRACKING_URI": "http://m"}
    envs = rank_environments(2, 29511, base)
    assert [env["JOB_COMPLETION_INDEX"] for env in envs] == ["0", "1"]
    for env in envs:
        assert "RANK" not in env and "LOCAL_RANK" not in env  # else the torchrun path would be taken
        assert (env["WORLD_SIZE"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("2", "127.0.0.1", "29511")
        assert env["LOCAL_WORLD_SIZE"] == "2" and env["MLFLOW_TRACKING_URI"] == "http://m"


def test_progress_without_a_tty_prints_plain_lines_on_logging_steps() -> None:
    stream = io.StringIO()
    progress = Progress(total=20, initial=0, log_every=10, enabled=True, stream=stream)
    for step in range(1, 21):
        progress.step(step, {"train_loss": 2.0} if step % 10 == 0 else {})
    progress.message("step 20: val_loss 1.9")
    progress.close()
    assert stream.getvalue().splitlines() == [
        "step 10/20 train_loss 2",
        "step 20/20 train_loss 2",
        "step 20: val_loss 1.9",
    ]


def test_progress_is_silent_on_other_ranks() -> None:
    stream = io.StringIO()
    progress = Progress(total=5, initial=0, log_every=1, enabled=False, stream=stream)
    progress.step(1, {"train_loss": 1.0})
    progress.message("hello")
    assert stream.getvalue() == ""


def test_cpu_budget_respects_a_cgroup_limit(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")
    assert cpu_budget(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert cpu_budget(cpu_max) >= 1
    assert cpu_budget(tmp_path / "missing") >= 1


def test_rank_0s_decision_to_train_reaches_the_other_ranks() -> None:
    store = dist.HashStore()  # the protocol without the network; the real TCPStore in test_distributed_runs
    announce_start(store, None)
    assert await_start(store) is None


def test_rank_0_learns_which_ranks_acknowledged_that_training_is_finished() -> None:
    store = dist.HashStore()
    rank0 = DistEnv(
        rank=0, world_size=3, local_rank=0, local_world_size=1, master_addr="127.0.0.1", master_port=29500,
        source="indexed-job",
    )  # fmt: skip
    announce_start(store, 40)
    assert await_start(store) == 40
    acknowledge_finish(store, 2)
    assert await_acknowledgements(store, rank0, timeout_s=0.1) == [1]  # rank 1 never came: bounded
    acknowledge_finish(store, 1)
    assert await_acknowledgements(store, rank0, timeout_s=60) == []  # all there: no waiting
