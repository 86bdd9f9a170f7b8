"""train.yaml's field types: what each key accepts from YAML and from `--set`, and how a problem is reported."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError, DistributedConfig, TrainConfig, TrainerConfig, build_config


def test_tags_are_names_to_strings_and_numbers_become_strings() -> None:
    config = build_config({"tracking": {"tags": {"team": "nlp", "run": 3, "ratio": 0.5}}}, environ={})
    assert config.tracking.tags == {"team": "nlp", "run": "3", "ratio": "0.5"}


def test_an_empty_yaml_value_of_a_text_key_is_empty() -> None:
    environ = {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert build_config({"tracking": {"uri": None}}, environ=environ).tracking.uri == "http://mlflow:5000"
    with pytest.raises(ConfigError, match=r"checkpoint.dir='': must be a directory path"):
        build_config({"checkpoint": {"dir": None}}, environ={})


def test_floats_are_floats_and_ints_ints() -> None:
    config = build_config({}, ["distributed.timeout_s=30", "train.seed=7", "train.warmup_steps=5.0"], environ={})
    assert config.distributed.timeout_s == 30.0 and isinstance(config.distributed.timeout_s, float)
    assert (config.train.seed, config.train.warmup_steps) == (7, 5)
    assert DistributedConfig(rendezvous_timeout_s=30).rendezvous_timeout_s == 30.0


def test_the_model_section_has_every_gpt_key_but_the_vocabulary() -> None:
    flat = TrainerConfig().to_flat_dict()
    assert {k for k in flat if k.startswith("model.")} == {
        "model.block_size", "model.n_layer", "model.n_head", "model.n_embd", "model.dropout", "model.bias"
    }  # fmt: skip
    assert build_config({}, ["model.n_layer=2", "model.bias=no"], environ={}).model.n_layer == 2


@pytest.mark.parametrize(
    ("document", "overrides", "named"),
    [
        ({"model": {"vocab_size": 50}}, [], "model.vocab_size: unknown key; allowed: block_size, n_layer"),
        ({}, ["distributed.timeout_s=0"], "distributed.timeout_s=0.0: must be > 0"),
        ({}, ["train.batch_size=0"], "train.batch_size=0: must be an integer >= 1"),
        ({}, ["train.pin_cpus=on"], "train.pin_cpus='on': must be true or false"),
        ({"train": {"lr": True}}, [], "train.lr=True: must be a number"),
        ({"model": {"bias": 1}}, [], "model.bias=1: must be true or false"),
        ({"tracking": {"tags": {"ok": True}}}, [], "tracking.tags.ok=True: must be a string"),
        ({}, ["tracking.tags=x"], "tracking.tags='x': must be a mapping of names to strings"),
        ({"tracking": {"experiment": ""}}, [], "tracking.experiment='': must not be empty"),
        ({"metrics": {"port": 70000}}, [], "metrics.port=70000: must be in [0, 65535] (0 = off)"),
        ({"train": {"lr": 0.01, "min_lr": 0.1}}, [], "train.min_lr=0.1: must be in [0, 0.01]"),
        ({"model": [1]}, [], "model: must be a mapping of keys"),
        ({}, ["nope.key=1"], "nope: unknown section; allowed: data, model, train"),
    ],
)
def test_each_problem_names_the_key_the_value_and_the_rule(
    document: dict[str, object], overrides: list[str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(document, overrides, environ={})
    assert named in str(caught.value)


def test_a_config_made_in_code_is_validated_too() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
