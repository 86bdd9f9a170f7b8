"""train.yaml: defaults, coercion, overrides and errors that name the key (exit code 2 from the CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.conftest import run_trainer, tiny_config
from trainer.config import ConfigError, TrainerConfig, build_config, load_config


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("")
    assert load_config(path, environ={}) == TrainerConfig()


def test_every_required_key_exists_with_its_name() -> None:
    keys = set(TrainerConfig().to_flat_dict())
    required = {
        "data.source",
        "data.val_fraction",
        "model.n_layer",
        "model.n_head",
        "model.n_embd",
        "model.block_size",
        "model.dropout",
        "train.batch_size",
        "train.max_steps",
        "train.lr",
        "train.min_lr",
        "train.warmup_steps",
        "train.weight_decay",
        "train.grad_clip",
        "train.eval_every",
        "train.eval_iters",
        "train.seed",
        "train.threads_per_rank",
        "train.device",
        "train.log_every",
        "checkpoint.dir",
        "checkpoint.every",
        "checkpoint.keep",
        "tracking.uri",
        "tracking.experiment",
        "tracking.model_name",
        "tracking.alias",
        "distributed.backend",
        "distributed.timeout_s",
        "distributed.rendezvous_timeout_s",
        "distributed.discovery",
    }
    assert required <= keys
    assert TrainerConfig().tracking.alias == "champion"


def test_yaml_values_are_coerced_to_the_field_types() -> None:
    # Pulumi hands numbers over as floats; PyYAML reads 1e-3 (no dot) as a string.
    config = build_config({"train": {"batch_size": 12.0, "lr": "1e-3", "max_steps": "50"}}, environ={})
    assert config.train.batch_size == 12 and isinstance(config.train.batch_size, int)
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.max_steps == 50


def test_set_overrides_win_over_the_file_and_are_coerced() -> None:
    config = build_config(
        {"train": {"max_steps": 10}},
        ["train.max_steps=20", "train.lr=0.01", "checkpoint.dir=/tmp/x=y", "model.dropout=0.1"],
        environ={},
    )
    assert config.train.max_steps == 20
    assert config.train.lr == 0.01
    assert config.checkpoint.dir == "/tmp/x=y"
    assert config.model.dropout == 0.1


@pytest.mark.parametrize(
    ("document", "overrides", "named"),
    [
        ({"train": {"bogus": 1}}, [], "train.bogus: unknown key"),
        ({"nonsense": {}}, [], "nonsense: unknown section"),
        ({}, ["model.nope=1"], "model.nope: unknown key"),
        ({}, ["train.max_steps"], "expected section.key=value"),
        ({"train": {"batch_size": 2.5}}, [], "train.batch_size=2.5: must be an integer"),
        ({"train": {"lr": "fast"}}, [], "train.lr='fast': must be a number"),
        ({"train": {"max_steps": True}}, [], "train.max_steps=True"),
        ({"train": {"device": "tpu"}}, [], "train.device='tpu': allowed: auto, cpu, cuda"),
        ({"train": {"min_lr": 1.0}}, [], "train.min_lr=1.0"),
        ({"model": {"n_embd": 30, "n_head": 4}}, [], "model.n_embd=30: must be divisible by model.n_head=4"),
        ({"model": {"dropout": 1.0}}, [], "model.dropout=1.0"),
        ({"data": {"val_fraction": 0.0}}, [], "data.val_fraction=0.0"),
        ({"checkpoint": {"keep": 0}}, [], "checkpoint.keep=0"),
        ({"tracking": {"alias": "v2"}}, [], "tracking.alias='v2'"),
        ({"distributed": {"backend": "mpi"}}, [], "distributed.backend='mpi': allowed: auto, gloo, nccl"),
        ({"distributed": {"discovery": "mdns"}}, [], "distributed.discovery='mdns': allowed: dns, kubernetes-api"),
        ({"distributed": {"timeout_s": 0}}, [], "distributed.timeout_s=0.0"),
        ({"train": 3}, [], "train: must be a mapping"),
    ],
)
def test_bad_configs_name_the_key(document: dict[str, object], overrides: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(document, overrides, environ={})
    assert named in str(caught.value)


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"train": {"max_steps": 0, "log_every": 0}, "model": {"n_layer": 0}}, environ={})
    message = str(caught.value)
    assert "train.max_steps=0" in message and "train.log_every=0" in message and "model.n_layer=0" in message


def test_mlflow_tracking_uri_fills_an_empty_tracking_uri() -> None:
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert build_config({}, environ=environ).tracking.uri == "http://mlflow:5000"
    assert build_config({"tracking": {"uri": ""}}, environ=environ).tracking.uri == "http://mlflow:5000"
    assert build_config({"tracking": {"uri": "http://other"}}, environ=environ).tracking.uri == "http://other"
    assert build_config({}, environ={}).tracking.uri == ""


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "train.batch_size=-1"], "train.batch_size=-1"),
        (["--set", "train.unknown=1"], "train.unknown: unknown key"),
        (["--set", "data.source=/no/such/file.txt"], "data.source='/no/such/file.txt': no such file"),
    ],
)
def test_train_exits_2_naming_the_key(tmp_path: Path, args: list[str], named: str) -> None:
    result = run_trainer("train", "--config", str(tiny_config(tmp_path)), *args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr


def test_launch_exits_2_when_the_batch_does_not_split_across_ranks(tmp_path: Path) -> None:
    result = run_trainer("launch", "--nproc", "3", "--config", str(tiny_config(tmp_path)))
    assert result.returncode == 2
    assert "train.batch_size=8" in result.stderr and "world size 3" in result.stderr


def test_launch_propagates_a_rank_config_error(tmp_path: Path) -> None:
    # The launcher's own check passes; each rank finds the data source missing and exits 2.
    config = tiny_config(tmp_path, data={"source": str(tmp_path / "missing.txt")})
    result = run_trainer("launch", "--nproc", "2", "--config", str(config))
    assert result.returncode == 2
    assert "data.source=" in result.stderr
