"""The saved-model format: round trip, where it is found (checkpoint, MLflow model, raw version), clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tinygpt import saved
from tinygpt.model import GPT
from tinygpt.saved import SavedModelError, find_saved_model
from tinygpt.tokenizer import CharTokenizer


def test_save_and_load_round_trip_weights_config_and_tokenizer(
    model: GPT, tokenizer: CharTokenizer, tmp_path: Path
) -> None:
    saved.save(model, tokenizer, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(saved.SAVED_MODEL_FILES)
    back = saved.load(tmp_path / "m")
    assert back.model.config == model.config and back.tokenizer.chars == tokenizer.chars
    assert not back.model.training
    original = model.state_dict()
    for key, value in back.model.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_a_model_config_written_before_the_package_still_loads(
    model: GPT, tokenizer: CharTokenizer, tmp_path: Path
) -> None:
    """trainer.model wrote the same keys; the file of an old checkpoint or model version reads unchanged."""
    saved.save(model, tokenizer, tmp_path)
    old = {"block_size": 16, "dropout": 0.0, "n_embd": 32, "n_head": 2, "n_layer": 2}
    old["vocab_size"] = tokenizer.vocab_size
    (tmp_path / saved.CONFIG_FILE).write_text(json.dumps(old, sort_keys=True))
    assert saved.load(tmp_path).model.config == model.config


def test_load_errors_say_what_is_wrong_and_where(model: GPT, tokenizer: CharTokenizer, tmp_path: Path) -> None:
    saved.save(model, tokenizer, tmp_path)
    (tmp_path / saved.WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(SavedModelError, match=f"cannot load the model in {tmp_path}"):
        saved.load(tmp_path)
    (tmp_path / saved.WEIGHTS_FILE).unlink()
    with pytest.raises(SavedModelError, match=r"model\.pt missing"):
        saved.load(tmp_path)
    saved.save(model, CharTokenizer(["a", "b"]), tmp_path)
    with pytest.raises(SavedModelError, match="tokenizer has 2 characters but the model expects"):
        saved.load(tmp_path)


def test_find_saved_model_in_raw_dirs_mlflow_models_and_nothing_else(
    model: GPT, tokenizer: CharTokenizer, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    saved.save(model, tokenizer, raw)
    assert find_saved_model(raw) == raw
    mlflow_dir = tmp_path / "mlflow"
    shutil.copytree(raw, mlflow_dir / "data" / "step-00000001")
    (mlflow_dir / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: tinygpt.pyfunc\n    data: data/step-00000001\n"
    )
    assert find_saved_model(mlflow_dir) == mlflow_dir / "data" / "step-00000001"
    (mlflow_dir / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n")
    with pytest.raises(SavedModelError, match=r"not one of tinygpt\.pyfunc"):
        find_saved_model(mlflow_dir)
    with pytest.raises(SavedModelError, match="neither an MLflow model"):
        find_saved_model(tmp_path)


def test_checkpoint_root_layout_skips_incomplete_and_foreign_directories(tmp_path: Path) -> None:
    for step, complete in ((9, True), (10, True), (11, False)):
        path = tmp_path / saved.step_dir_name(step)
        path.mkdir()
        if complete:
            (path / saved.COMPLETE_FILE).write_text(f"{step}\n")
    (tmp_path / "step-latest").mkdir()
    (tmp_path / ".tmp-step-00000012-1").mkdir()
    assert [step for step, _ in saved.complete_checkpoints(tmp_path)] == [9, 10]
    assert saved.latest_checkpoint(tmp_path) == tmp_path / "step-00000010"
    assert saved.latest_checkpoint(tmp_path / "missing") is None
