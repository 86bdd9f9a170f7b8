"""The saved model as an MLflow `python_function` model, so MLflow's own tools load and run it.

    mlflow.pyfunc.load_model("models:/tiny-gpt@champion").predict(
        pandas.DataFrame({"prompt": ["def "]}), params={"max_tokens": 32, "temperature": 0.0}
    )

Layout written by `save_pyfunc` (MLflow's, with this module as the loader):

    MLmodel                  flavor python_function, loader_module tinygpt.pyfunc, signature, data path
    data/<name>/             the saved model (tinygpt.saved): model.pt, model_config.json, tokenizer.json
    code/tinygpt/            this package, so the model loads where the project is not installed
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

The inference service reads the same directory through `tinygpt.saved.find_saved_model`, without pyfunc.
Writing or loading a pyfunc model imports `mlflow.pyfunc`, which needs pandas (not part of mlflow-skinny).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tinygpt import saved
from tinygpt.generate import generate

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import ModelSignature

PROMPT_COLUMN = "prompt"
COMPLETION_COLUMN = "completion"
DEFAULT_PARAMS: dict[str, int | float] = {"max_tokens": 32, "temperature": 1.0, "top_p": 1.0, "seed": 0}
"""Sampling parameters `predict` accepts, with their defaults (the OpenAI completion fields of the same names)."""
MAX_TOKENS_LIMIT = 4096


def signature() -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    types = {int: "long", float: "double"}
    return ModelSignature(
        inputs=Schema([ColSpec("string", PROMPT_COLUMN)]),
        outputs=Schema([ColSpec("string", COMPLETION_COLUMN)]),
        params=ParamSchema([ParamSpec(key, types[type(value)], value) for key, value in DEFAULT_PARAMS.items()]),
    )


def _example_prompt(tokenizer_chars: list[str]) -> str:
    preferred = "The "
    return preferred if set(preferred) <= set(tokenizer_chars) else tokenizer_chars[-1]


def save_pyfunc(saved_model_dir: Path, path: Path) -> Path:
    """Write the saved model in `saved_model_dir` as an MLflow pyfunc model at `path` (must not exist)."""
    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    tokenizer = saved.load_tokenizer(saved_model_dir)
    example = pd.DataFrame({PROMPT_COLUMN: [_example_prompt(tokenizer.chars)]})
    mlflow.pyfunc.save_model(
        path=str(path),
        loader_module=saved.LOADER_MODULE,
        data_path=str(saved_model_dir),
        code_paths=[str(Path(__file__).resolve().parent)],
        signature=signature(),
        input_example=(example, {"max_tokens": 16, "temperature": 0.0}),
        # Given, not inferred: inference would load the model in a subprocess to watch its imports.
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"pandas=={pd.__version__}",
            f"mlflow-skinny=={mlflow.__version__}",
            "pyyaml",
        ],
    )
    return path


class TinyGPTPredictor:
    """What `mlflow.pyfunc.load_model` wraps: one completion per prompt, generated through the KV cache."""

    def __init__(self, model: saved.SavedModel) -> None:
        self.model = model.model
        self.tokenizer = model.tokenizer

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        options = {**DEFAULT_PARAMS, **(params or {})}
        max_tokens, seed = int(options["max_tokens"]), int(options["seed"])
        temperature, top_p = float(options["temperature"]), float(options["top_p"])
        if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            raise ValueError(f"max_tokens={max_tokens}: must be in [1, {MAX_TOKENS_LIMIT}]")
        if temperature < 0:
            raise ValueError(f"temperature={temperature}: must be >= 0")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p}: must be in (0, 1]")
        generator = torch.Generator().manual_seed(seed)
        completions = []
        for row, prompt in enumerate(model_input[PROMPT_COLUMN].astype(str)):
            if not prompt:
                raise ValueError(f"prompt {row} is empty; this model has no start token, so give it some text")
            ids = generate(
                self.model, self.tokenizer.encode(prompt), max_tokens,
                temperature=temperature, top_p=top_p, generator=generator,
            )  # fmt: skip
            completions.append(self.tokenizer.decode(ids))
        return pd.DataFrame({COMPLETION_COLUMN: completions})


def _load_pyfunc(data_path: str) -> TinyGPTPredictor:
    """MLflow's entry point for a `python_function` model with this loader module."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TinyGPTPredictor(saved.load(Path(data_path), map_location=device))
