"""`launch --nnodes W --node-rank R --nproc G`: one pod of an Indexed Job running one rank per GPU, with the
torchrun variables for its ranks (RANK = R x G + local rank) and rank 0 found as the Indexed Job path finds it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.trainer.conftest import REPO, clean_env, run_trainer, summary_of, tiny_config, val_losses
from tinygpt.saved import complete_checkpoints
from trainer.cli import EXIT_CONFIG, main
from trainer.config import ConfigError, DistributedConfig
from trainer.distenv import DistEnv, parse_env
from trainer.launcher import free_port, node_rank0, torchrun_environments


def test_each_rank_of_a_node_gets_the_torchrun_variables() -> None:
    base = {
        "PATH": "/bin", "JOB_COMPLETION_INDEX": "1", "WORLD_SIZE": "6", "GROUP_RANK": "7", "TORCHELASTIC_RUN_ID": "x",
        "MASTER_ADDR": "train-0.train", "MLFLOW_TRACKING_URI": "http://m",
    }  # fmt: skip
    envs = torchrun_environments(nproc=2, nnodes=3, node_rank=1, master_addr="10.0.0.5", master_port=29500, base=base)
    assert [(env["RANK"], env["LOCAL_RANK"]) for env in envs] == [("2", "0"), ("3", "1")]
    for env in envs:
        assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("6", "2")
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.5", "29500")
        assert env["PATH"] == "/bin" and env["MLFLOW_TRACKING_URI"] == "http://m"
        assert not {"JOB_COMPLETION_INDEX", "GROUP_RANK", "TORCHELASTIC_RUN_ID"} & env.keys()
    # The ranks take path 1 of the contract; LOCAL_RANK is what selects their GPU.
    assert [parse_env(env, DistributedConfig()) for env in envs] == [
        DistEnv(rank=rank, world_size=6, local_rank=local, local_world_size=2, master_addr="10.0.0.5",
                master_port=29500, source="torchrun")
        for local, rank in enumerate((2, 3))
    ]  # fmt: skip


def test_node_0_hosts_rank_0_so_its_ranks_use_loopback() -> None:
    environ = {"MASTER_ADDR": "train-0.no-such-service.invalid", "MASTER_PORT": "29517"}
    assert node_rank0(nnodes=2, node_rank=0, nproc=4, config=DistributedConfig(), environ=environ) == (
        "127.0.0.1",
        29517,
    )


def test_node_1_waits_until_rank_0_accepts_then_uses_its_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        environ = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        config = DistributedConfig(rendezvous_timeout_s=30)
        assert node_rank0(nnodes=2, node_rank=1, nproc=2, config=config, environ=environ) == ("127.0.0.1", port)


def test_a_single_node_needs_no_rendezvous_variables() -> None:
    addr, port = node_rank0(nnodes=1, node_rank=0, nproc=2, config=DistributedConfig(), environ={})
    assert addr == "127.0.0.1" and 0 < port < 65536


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        ({"MASTER_ADDR": "train-0.train"}, DistributedConfig(), "MASTER_PORT is not set"),
        ({"MASTER_PORT": "29500"}, DistributedConfig(), "MASTER_ADDR is not set"),
        ({"MASTER_PORT": "29500"}, DistributedConfig(discovery="kubernetes-api"), "TRAINER_JOB_NAME is not set"),
    ],
)
def test_a_node_without_the_rendezvous_variables_is_a_config_error(
    environ: dict[str, str], config: DistributedConfig, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        node_rank0(nnodes=2, node_rank=1, nproc=2, config=config, environ=environ)


@pytest.fixture
def no_contract_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--nnodes", "0", "--node-rank", "0"], "--nnodes=0: must be >= 1"),
        (["--nnodes", "2", "--node-rank", "2"], "--node-rank=2: must be in 0..1"),
        (["--nnodes", "2", "--node-rank", "-1"], "--node-rank=-1: must be in 0..1"),
        (["--nnodes", "2"], "--node-rank is required with --nnodes"),
        (["--node-rank", "1"], "--node-rank needs --nnodes"),
        (["--nnodes", "3", "--node-rank", "0"], "world size 6"),  # batch 8 does not split into 3 x 2 ranks
        (["--nnodes", "2", "--node-rank", "1"], "MASTER_PORT is not set"),
    ],
)
@pytest.mark.usefixtures("no_contract_variables")
def test_launch_flags_are_validated_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    assert main(["launch", "--nproc", "2", *flags, "--config", str(tiny_config(tmp_path))]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and named in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.usefixtures("no_contract_variables")
def test_a_world_size_from_the_job_must_match_nodes_times_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    flags = ["--nproc", "2", "--nnodes", "2", "--node-rank", "0"]
    assert main(["launch", *flags, "--config", str(tiny_config(tmp_path))]) == EXIT_CONFIG
    assert "WORLD_SIZE=2 disagrees with --nnodes 2 x --nproc 2 = 4" in capsys.readouterr().err


@pytest.mark.slow
def test_two_nodes_of_two_ranks_train_as_one_world_of_four(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, train={"max_steps": 20, "eval_every": 10})
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    nodes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for node_rank in (1, 0):  # node 1 first: its launcher waits for rank 0's port
            out, err = tmp_path / f"node{node_rank}.out", tmp_path / f"node{node_rank}.err"
            with out.open("w") as out_file, err.open("w") as err_file:
                nodes[node_rank] = subprocess.Popen(
                    [sys.executable, "-m", "trainer", "launch", "--nproc", "2", "--nnodes", "2",
                     "--node-rank", str(node_rank), "--config", str(config)],
                    env=env, cwd=REPO, stdout=out_file, stderr=err_file,
                )  # fmt: skip
        codes = {node_rank: proc.wait(timeout=300) for node_rank, proc in nodes.items()}
    finally:
        for proc in nodes.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = {n: (tmp_path / f"node{n}.out").read_text() + (tmp_path / f"node{n}.err").read_text() for n in nodes}
    assert codes == {0: 0, 1: 0}, logs
    stdout = (tmp_path / "node0.out").read_text()
    summary = summary_of(stdout)
    assert summary["world_size"] == 4 and summary["step"] == 20
    assert sorted(val_losses(stdout)) == [10, 20]
    assert "launch: node 1 of 2 starts ranks 2..3 of 4; rank 0 at 127.0.0.1:" in logs[1]
    assert (tmp_path / "node1.out").read_text().strip() == ""  # ranks 2 and 3 print no summary
    assert [step for step, _ in complete_checkpoints(tmp_path / "checkpoints")] == [10, 20]
    # Four distinct ranks, each on its quarter of every global batch: the same curve as one process.
    single_config = tiny_config(tmp_path / "single", train={"max_steps": 20, "eval_every": 10})
    single = run_trainer("train", "--config", str(single_config))
    assert single.returncode == 0, single.stderr
    assert summary["val_loss"] == pytest.approx(summary_of(single.stdout)["val_loss"], abs=1e-3)
