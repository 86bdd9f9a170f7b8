"""The saved-model format, read and written here only.

A *saved model* is a directory with three files:

    model.pt            the weights (`GPT.state_dict()`, loaded with `weights_only=True`)
    model_config.json   `GPTConfig` as JSON
    tokenizer.json      `CharTokenizer` as JSON

It appears in three places, all read through `load` / `find_saved_model`:
- a trainer checkpoint `<root>/step-NNNNNNNN/` is a saved model plus training state, complete once it holds
  `COMPLETE` (`complete_checkpoints` finds them);
- a registered MLflow model version is an MLflow `python_function` model (`tinygpt.pyfunc`) whose `data`
  directory (named in its MLmodel file) is a saved model;
- versions registered before that hold the saved model's files at the root of the version's artifacts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from tinygpt.tokenizer import CharTokenizer

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.json"
SAVED_MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE)

COMPLETE_FILE = "COMPLETE"
"""A checkpoint directory is finished only once this file exists in it (written last)."""
_STEP_DIR = re.compile(r"^step-(\d{8})$")

MLMODEL_FILE = "MLmodel"
LOADER_MODULE = "tinygpt.pyfunc"
"""The `python_function` loader module of the MLflow models that `tinygpt.pyfunc.save_pyfunc` writes."""


class SavedModelError(RuntimeError):
    """A directory is not a readable saved model; the message names the directory and what is wrong."""


@dataclass(frozen=True, slots=True)
class SavedModel:
    """A model read back from a saved-model directory, on the device it was mapped to, in eval mode."""

    model: GPT
    tokenizer: CharTokenizer


def is_saved_model_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in SAVED_MODEL_FILES)


def save(model: GPT, tokenizer: CharTokenizer, directory: Path) -> None:
    """Write `model` and `tokenizer` as a saved model into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(model.config.to_json())
    tokenizer.save(directory / TOKENIZER_FILE)


def load_config(directory: Path) -> GPTConfig:
    return GPTConfig.from_json((directory / CONFIG_FILE).read_text())


def load_weights(directory: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    return state


def load_tokenizer(directory: Path) -> CharTokenizer:
    return CharTokenizer.load(directory / TOKENIZER_FILE)


def load(directory: Path, map_location: str | torch.device = "cpu") -> SavedModel:
    """Rebuild the model and tokenizer saved in `directory`; SavedModelError says what is missing or wrong."""
    missing = [name for name in SAVED_MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise SavedModelError(f"{directory} is not a saved model: {', '.join(missing)} missing")
    try:
        model = GPT(load_config(directory))
        model.load_state_dict(load_weights(directory, map_location))
        tokenizer = load_tokenizer(directory)
    except Exception as exc:  # a corrupt file can raise almost anything from unpickling; report it as unloadable
        raise SavedModelError(f"cannot load the model in {directory}: {type(exc).__name__}: {exc}") from exc
    if tokenizer.vocab_size != model.config.vocab_size:
        raise SavedModelError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} characters but the model expects "
            f"vocab_size={model.config.vocab_size}"
        )
    model.to(map_location).eval()
    return SavedModel(model=model, tokenizer=tokenizer)


def find_saved_model(directory: Path) -> Path:
    """The saved model inside `directory`: an MLflow model of `tinygpt.pyfunc` (its `python_function` data), or a
    saved model itself (a checkpoint, or a model version registered as raw files before the MLflow model)."""
    mlmodel = directory / MLMODEL_FILE
    if mlmodel.is_file():
        pyfunc = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
        if pyfunc.get("loader_module") != LOADER_MODULE or not pyfunc.get("data"):
            raise SavedModelError(
                f"{directory} is an MLflow model but not one of {LOADER_MODULE} "
                f"(python_function loader_module: {pyfunc.get('loader_module')!r})"
            )
        data = directory / pyfunc["data"]
        if not is_saved_model_dir(data):
            raise SavedModelError(f"{directory}: the MLflow model's data {pyfunc['data']} is not a saved model")
        return data
    if is_saved_model_dir(directory):
        return directory
    raise SavedModelError(
        f"{directory} holds neither an MLflow model ({MLMODEL_FILE}) nor a saved model "
        f"({', '.join(SAVED_MODEL_FILES)})"
    )


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every complete checkpoint under `root`, oldest first; other entries are skipped."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / COMPLETE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`; incomplete and temporary directories are skipped."""
    found = complete_checkpoints(root)
    return found[-1][1] if found else None
