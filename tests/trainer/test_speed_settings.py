"""The settings issue 15 added: biases off (nanoGPT's recipe), CPU pinning of co-located ranks, DDP buckets."""

from __future__ import annotations

import pytest

from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from trainer.config import ConfigError, build_config
from trainer.runtime import rank_cpus


def test_booleans_parse_from_yaml_and_from_set() -> None:
    assert build_config({"model": {"bias": False}}, environ={}).model.bias is False
    assert build_config({}, ["model.bias=false", "train.pin_cpus=no"], environ={}).train.pin_cpus is False
    assert build_config({}, ["model.bias=True"], environ={}).model.bias is True
    with pytest.raises(ConfigError, match=r"model.bias='maybe': must be true or false"):
        build_config({}, ["model.bias=maybe"], environ={})
    with pytest.raises(ConfigError, match=r"train.pin_cpus=2: must be true or false"):
        build_config({"train": {"pin_cpus": 2}}, environ={})


def test_a_model_without_biases_has_none_and_old_configs_keep_them() -> None:
    plain = GPT(GPTConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=16, block_size=8, bias=False))
    assert not [name for name, _ in plain.named_parameters() if name.endswith(".bias")]
    saved_before = GPTConfig.from_json('{"vocab_size": 30, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16, '
                                       '"dropout": 0.0}')  # fmt: skip
    assert saved_before.bias is True
    biased = GPT(saved_before)
    assert len([name for name, _ in biased.named_parameters() if name.endswith(".bias")]) == 2 * 6 + 1


def test_colocated_ranks_get_cpus_of_their_own_only_when_there_are_enough() -> None:
    assert rank_cpus([0, 1], 0, 2, 1) == {0}
    assert rank_cpus([0, 1], 1, 2, 1) == {1}
    assert rank_cpus([4, 5, 6, 7], 1, 2, 2) == {6, 7}
    assert rank_cpus([0, 1, 2], 1, 2, 2) is None  # 2 ranks x 2 threads do not fit on 3 CPUs: no pinning
    assert rank_cpus([0, 1, 2, 3], 0, 1, 4) is None  # one rank: nothing to separate


def test_ddp_buckets_must_have_a_size() -> None:
    assert build_config({}, ["distributed.bucket_cap_mb=0.5"], environ={}).distributed.bucket_cap_mb == 0.5
    with pytest.raises(ConfigError, match=r"distributed.bucket_cap_mb=0.0: must be > 0"):
        build_config({}, ["distributed.bucket_cap_mb=0"], environ={})
