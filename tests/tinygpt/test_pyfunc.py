"""The MLflow pyfunc model: MLflow's own loader and CLI run it, and it generates what tinygpt generates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tinygpt import saved
from tinygpt.generate import generate
from tinygpt.model import GPT
from tinygpt.pyfunc import save_pyfunc
from tinygpt.tokenizer import CharTokenizer


@pytest.fixture
def pyfunc_dir(model: GPT, tokenizer: CharTokenizer, tmp_path: Path) -> Path:
    saved.save(model, tokenizer, tmp_path / "step-00000007")
    return save_pyfunc(tmp_path / "step-00000007", tmp_path / "model")


def test_mlflow_loads_it_with_signature_and_example_and_predicts_like_generate(
    pyfunc_dir: Path, model: GPT, tokenizer: CharTokenizer
) -> None:
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(str(pyfunc_dir))
    signature = loaded.metadata.signature
    assert signature.inputs.input_names() == ["prompt"] and signature.outputs.input_names() == ["completion"]
    assert {p.name for p in signature.params.params} == {"max_tokens", "temperature", "top_p", "seed"}
    assert (pyfunc_dir / "input_example.json").is_file() and (pyfunc_dir / "serving_input_example.json").is_file()
    prompts = ["def f(x):", "The"]
    out = loaded.predict(pd.DataFrame({"prompt": prompts}), params={"max_tokens": 20, "temperature": 0.0})
    expected = [tokenizer.decode(generate(model, tokenizer.encode(p), 20, temperature=0.0)) for p in prompts]
    assert list(out["completion"]) == expected
    assert saved.find_saved_model(pyfunc_dir) == pyfunc_dir / "data" / "step-00000007"


def test_sampling_params_seed_and_bad_values(pyfunc_dir: Path) -> None:
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(str(pyfunc_dir))
    frame = pd.DataFrame({"prompt": ["if "]})

    def run(**params: object) -> str:
        return str(loaded.predict(frame, params={"max_tokens": 30, "temperature": 1.5, **params})["completion"][0])

    assert run(seed=5) == run(seed=5)
    assert len({run(seed=s) for s in range(4)}) > 1
    with pytest.raises(ValueError, match="max_tokens=0"):
        run(max_tokens=0)
    with pytest.raises(ValueError, match="characters not in the vocabulary"):
        loaded.predict(pd.DataFrame({"prompt": ["\u2603"]}))


@pytest.mark.slow
def test_mlflow_models_predict_cli_runs_the_serving_input_example(pyfunc_dir: Path, tmp_path: Path) -> None:
    """`mlflow models predict` in a fresh process with no PYTHONPATH: the model's own code/ directory provides
    tinygpt (the venv's editable install of the project may or may not list the package)."""
    output = tmp_path / "predictions.json"
    command = [
        sys.executable, "-m", "mlflow", "models", "predict", "--model-uri", str(pyfunc_dir),
        "--input-path", str(pyfunc_dir / "serving_input_example.json"), "--content-type", "json",
        "--output-path", str(output), "--env-manager", "local",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(output.read_text())["predictions"]
    assert len(predictions) == 1 and len(predictions[0]["completion"]) == 16
