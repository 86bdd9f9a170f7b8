"""Settings from the environment, model sources, checkpoint selection and the CLI's configuration errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from inference.cli import EXIT_CONFIG, main
from inference.loading import (
    Current,
    LocalSource,
    MlflowSource,
    ModelLoadError,
    load_directory,
    make_source,
)
from inference.settings import Settings
from tests.inference.helpers import add_checkpoint
from tinygpt.saved import latest_checkpoint


def test_settings_come_from_inference_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFERENCE_MODEL_URI", "models:/demo@champion")
    monkeypatch.setenv("INFERENCE_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ignored:5000")
    monkeypatch.setenv("INFERENCE_HOST", "0.0.0.0")
    monkeypatch.setenv("INFERENCE_PORT", "8080")
    monkeypatch.setenv("INFERENCE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("INFERENCE_CACHE_DIR", str(tmp_path))
    settings = Settings()
    assert (settings.model_uri, settings.tracking_uri, settings.host, settings.port, settings.max_batch_size) == (
        "models:/demo@champion",
        "http://mlflow:5000",
        "0.0.0.0",
        8080,
        8,
    )
    assert settings.cache_dir == tmp_path


def test_mlflow_tracking_uri_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERENCE_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.ml:5000")
    assert Settings(model_uri="models:/demo@champion").tracking_uri == "http://mlflow.ml:5000"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_uri": "models:/demo", "tracking_uri": "http://x"}, "expected models:/<name>@<alias>"),
        ({"model_uri": "models:/demo@a@b", "tracking_uri": "http://x"}, "expected models:/<name>@<alias>"),
        ({"model_uri": "models:/demo@champion"}, "tracking_uri (or MLFLOW_TRACKING_URI) must be set"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"port": 70000}, "port"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"canary_percent": 101}, "canary_percent=101: the challenger's share of requests is a percentage; set it "
                                  "between 0 and 100"),
        ({"canary_percent": -1}, "canary_percent=-1: .* set it between 0 and 100"),
        ({"canary_percent": float("nan")}, "canary_percent=nan: .* between 0 and 100"),
        ({"challenger_alias": "a@b"}, "challenger_alias='a@b': an MLflow alias has no '/', '@' or spaces"),
        ({"model_uri": "models:/demo@champion", "tracking_uri": "http://x", "challenger_alias": "champion"},
         "challenger_alias='champion' is the alias model_uri serves as champion"),
        ({"test_faults": "yes"}, "test_faults"),
    ],
)
def test_invalid_settings_name_the_key(
    overrides: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("INFERENCE_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**overrides)  # type: ignore[arg-type]


def test_canary_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_CHALLENGER_ALIAS", "candidate")
    monkeypatch.setenv("INFERENCE_CANARY_PERCENT", "12.5")
    monkeypatch.setenv("INFERENCE_CANARY_STICKY", "false")
    monkeypatch.setenv("INFERENCE_TEST_FAULTS", "allow")
    settings = Settings(model_uri="models:/demo@champion", tracking_uri="http://x")
    assert (settings.challenger_alias, settings.canary_percent, settings.canary_sticky, settings.test_faults) == (
        "candidate", 12.5, False, "allow"
    )
    assert Settings().test_faults == "allow"
    monkeypatch.delenv("INFERENCE_TEST_FAULTS")
    assert Settings().test_faults == "ignore", "test faults are off unless asked for"


@pytest.mark.parametrize(
    ("overrides", "polled"),
    [
        ({"model_uri": "models:/demo@champion"}, "challenger"),
        ({"model_uri": "models:/demo@champion", "challenger_alias": "candidate"}, "candidate"),
        ({"model_uri": "models:/demo@champion", "canary_percent": 100}, "challenger"),
        ({"model_uri": "models:/demo@champion", "challenger_alias": ""}, None),
        ({"model_uri": "models:/demo@champion", "canary_percent": 0}, None),
        ({"model_uri": "models:/demo/7"}, None),
        ({"model_uri": "/models/demo"}, None),
    ],
)
def test_only_an_alias_uri_with_a_challenger_alias_and_a_share_has_a_canary(
    overrides: dict[str, object], polled: str | None
) -> None:
    settings = Settings(tracking_uri="http://x", **overrides)  # type: ignore[arg-type]
    assert settings.canary_alias == polled


def test_cli_reports_configuration_errors_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("INFERENCE_TRACKING_URI", raising=False)
    assert main(["serve", "--model-uri", "models:/demo@champion", "--port", "8081"]) == EXIT_CONFIG
    assert "tracking_uri" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "not-a-number"])
    assert exited.value.code == 2


def test_latest_checkpoint_skips_incomplete_and_foreign_directories(tmp_path: Path, model_a: Path) -> None:
    add_checkpoint(tmp_path, 9, model_a)
    add_checkpoint(tmp_path, 10, model_a)
    add_checkpoint(tmp_path, 11, model_a, complete=False)
    (tmp_path / "step-latest").mkdir()
    (tmp_path / "notes").mkdir()
    newest = latest_checkpoint(tmp_path)
    assert newest is not None and newest.name == "step-00000010"
    source = LocalSource(tmp_path)
    assert source.pollable and source.current() == Current("step-00000010")
    assert source.fetch("step-00000010") == tmp_path / "step-00000010"


def test_a_saved_model_directory_is_served_as_is(model_a: Path) -> None:
    source = LocalSource(model_a)
    assert not source.pollable
    assert source.current() == Current(model_a.name)
    loaded = load_directory(source.fetch(source.current().champion), source.name, "v", torch.device("cpu"))
    assert not loaded.model.training and loaded.tokenizer.vocab_size == loaded.model.config.vocab_size


def test_missing_and_unusable_model_paths_raise_clear_errors(tmp_path: Path, model_a: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        LocalSource(tmp_path / "nowhere").current()
    with pytest.raises(ModelLoadError, match="nor a checkpoint root"):
        LocalSource(tmp_path).current()
    broken = tmp_path / "broken"
    shutil.copytree(model_a, broken)
    (broken / "tokenizer.json").write_text('{"type": "char", "chars": ["a", "b"]}')
    with pytest.raises(ModelLoadError, match="tokenizer has 2 characters"):
        load_directory(broken, "x", "1", torch.device("cpu"))
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        load_directory(broken, "x", "1", torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="no model configured"):
        make_source(Settings(model_uri=""))


def test_model_uri_forms_select_the_source(tmp_path: Path) -> None:
    alias = make_source(Settings(model_uri="models:/demo@champion", tracking_uri="http://x", cache_dir=tmp_path))
    pinned = make_source(Settings(model_uri="models:/demo/7", tracking_uri="http://x", cache_dir=tmp_path))
    assert isinstance(alias, MlflowSource) and alias.pollable and alias.name == "demo"
    assert alias.challenger_alias == "challenger"
    assert isinstance(pinned, MlflowSource) and not pinned.pollable and pinned.current() == Current("7")
    assert pinned.challenger_alias is None
    assert isinstance(make_source(Settings(model_uri=str(tmp_path))), LocalSource)
