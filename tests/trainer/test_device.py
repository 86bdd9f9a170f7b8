"""Where the device comes from: CUDA missing on a node is a retriable node problem (exit 3), a device setting that
no node can satisfy is a configuration error (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import clean_env, run_trainer, tiny_config
from trainer.cli import EXIT_CONFIG, EXIT_NODE
from trainer.config import ConfigError, DistributedConfig, TrainConfig
from trainer.distenv import DistEnv
from trainer.runtime import NodeError, choose_backend, choose_device

ONE = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, master_addr="", master_port=0, source="single")


@pytest.mark.parametrize(
    ("command", "overrides"),
    [
        (["train"], ["train.device=cuda"]),
        # `auto` falls back to the CPU on this node, where nccl cannot run; on a healthy GPU node it would.
        (["train"], ["distributed.backend=nccl"]),
        (["launch", "--nproc", "2"], ["train.device=cuda"]),
    ],
)
def test_cuda_missing_on_the_node_exits_3_naming_the_node(
    tmp_path: Path, command: list[str], overrides: list[str]
) -> None:
    assert torch.version.cuda is not None, "needs a CUDA build of torch (the dev extra installs one)"
    args = [*command, "--config", str(tiny_config(tmp_path))]
    for item in overrides:
        args += ["--set", item]
    # No GPU on this machine; the empty CUDA_VISIBLE_DEVICES makes sure of it, as a node without one would.
    result = run_trainer(*args, env=clean_env(CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == EXIT_NODE == 3, result.stderr
    assert "node problem:" in result.stderr and "CUDA is not available on this node" in result.stderr
    assert "config error" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_nccl_with_train_device_cpu_is_a_config_error(tmp_path: Path) -> None:
    args = ["--set", "train.device=cpu", "--set", "distributed.backend=nccl"]
    result = run_trainer("train", "--config", str(tiny_config(tmp_path)), *args, env=clean_env(CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "distributed.backend='nccl'" in result.stderr and "train.device='cpu'" in result.stderr


def test_a_node_without_cuda_raises_node_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NodeError, match=re.escape("train.device='cuda': CUDA is not available on this node")):
        choose_device(TrainConfig(device="cuda"), ONE)
    device = choose_device(TrainConfig(device="auto"), ONE)
    assert device == torch.device("cpu")
    with pytest.raises(NodeError, match=re.escape("distributed.backend='nccl'")):
        choose_backend(DistributedConfig(backend="nccl"), device, TrainConfig(device="auto"))
    assert choose_backend(DistributedConfig(), device, TrainConfig(device="auto")) == "gloo"


def test_a_cpu_only_torch_build_asked_for_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No node can give CUDA to a torch built without it: retrying would only repeat the failure."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="built without CUDA"):
        choose_device(TrainConfig(device="cuda"), ONE)
    with pytest.raises(ConfigError, match="built without CUDA"):
        choose_backend(DistributedConfig(backend="nccl"), torch.device("cpu"), TrainConfig(device="auto"))
