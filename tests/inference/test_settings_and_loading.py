"""Settings from the environment, model sources, checkpoint selection and the CLI's configuration errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from inference.cli import EXIT_CONFIG, main
from inference.loading import (
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
    ],
)
def test_invalid_settings_name_the_key(
    overrides: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("INFERENCE_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**overrides)  # type: ignore[arg-type]


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
    assert source.pollable and source.current_version() == "step-00000010"
    assert source.fetch("step-00000010") == tmp_path / "step-00000010"


def test_a_saved_model_directory_is_served_as_is(model_a: Path) -> None:
    source = LocalSource(model_a)
    assert not source.pollable
    assert source.current_version() == model_a.name
    loaded = load_directory(source.fetch(source.current_version()), source.name, "v", torch.device("cpu"))
    assert not loaded.model.training and loaded.tokenizer.vocab_size == loaded.model.config.vocab_size


def test_missing_and_unusable_model_paths_raise_clear_errors(tmp_path: Path, model_a: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        LocalSource(tmp_path / "nowhere").current_version()
    with pytest.raises(ModelLoadError, match="nor a checkpoint root"):
        LocalSource(tmp_path).current_version()
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
    assert isinstance(pinned, MlflowSource) and not pinned.pollable and pinned.current_version() == "7"
    assert isinstance(make_source(Settings(model_uri=str(tmp_path))), LocalSource)
