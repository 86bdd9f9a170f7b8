"""MLflow against a real `mlflow server`: the run (resumed after SIGTERM), metrics, model version and alias."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import REPO, clean_env, run_trainer, sigterm_once_logged, summary_of, tiny_config
from tinygpt import saved
from tinygpt.saved import MLMODEL_FILE, find_saved_model

pytestmark = pytest.mark.slow


def test_runs_are_logged_registered_and_the_alias_moves_only_on_improvement(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    name = "trainer-test-model"
    tracking = {"experiment": "trainer-tests", "model_name": name}
    env = clean_env(MLFLOW_TRACKING_URI=mlflow_server)  # the file leaves tracking.uri empty
    config = tiny_config(
        tmp_path / "good", tracking=tracking, train={"max_steps": 400, "eval_every": 100}, checkpoint={"every": 0}
    )

    # First attempt: preempted by SIGTERM mid-training; rank 0 checkpoints the run id with the state.
    first = subprocess.Popen(
        [sys.executable, "-m", "trainer", "train", "--config", str(config)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = sigterm_once_logged(first, "step 20/")
    assert first.returncode == 128 + signal.SIGTERM, stderr

    # The restart resumes the same run and finishes it.
    resumed = run_trainer("train", "--config", str(config), env=env)
    assert resumed.returncode == 0, resumed.stderr
    good = summary_of(resumed.stdout)
    assert 20 <= good["resumed_from_step"] < 400
    assert good["model_uri"] == f"models:/{name}/1"
    assert good["alias_moved"] is True

    client = MlflowClient(mlflow_server)
    run = client.get_run(good["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.n_embd"] == "32" and run.data.params["world_size"] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == sorted(steps) and steps[0] == 10 and steps[-1] == 400
    assert min(steps) < good["resumed_from_step"] < max(steps)  # one run across the restart
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [100, 200, 300, 400]
    assert {"lr", "tokens_per_s"} <= run.data.metrics.keys()
    assert run.data.tags["alias_decision"] == "promoted"

    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == "1" and champion.run_id == good["run_id"]
    assert float(champion.tags["val_loss"]) == pytest.approx(good["val_loss"])
    # For this test only (not `mlflow.set_tracking_uri`, which would outlive it and rescue later tests of code
    # that forgets to pass its URI): the plain `models:/` download resolves the registry from the environment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}@champion", dst_path=str(tmp_path / "download")
        )
    )
    assert (downloaded / MLMODEL_FILE).is_file()
    served = saved.load(find_saved_model(downloaded))
    # MLflow's own loader runs the registered version: a python_function model with a signature.
    import mlflow.pyfunc
    import pandas as pd

    pyfunc_model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert pyfunc_model.metadata.signature.inputs.input_names() == ["prompt"]
    prompt = served.tokenizer.decode([0, 1, 2])
    predicted = pyfunc_model.predict(pd.DataFrame({"prompt": [prompt]}), params={"max_tokens": 7, "temperature": 0.0})
    assert len(predicted["completion"][0]) == 7

    # A worse model (a few steps) gets a version but not the alias, and the run says why.
    worse = run_trainer(
        "train",
        "--config",
        str(tiny_config(tmp_path / "worse", tracking=tracking)),
        "--set",
        "train.max_steps=5",
        env=env,
    )
    assert worse.returncode == 0, worse.stderr
    bad = summary_of(worse.stdout)
    assert bad["val_loss"] > good["val_loss"]
    assert bad["model_uri"] == f"models:/{name}/2" and bad["alias_moved"] is False
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    tags = client.get_run(bad["run_id"]).data.tags
    assert tags["alias_decision"] == "kept"
    assert "which keeps 'champion'" in tags["alias_decision_reason"]

    # Relaunching a finished job does not register the same model again.
    again = run_trainer("train", "--config", str(config), env=env)
    assert again.returncode == 0, again.stderr
    assert summary_of(again.stdout)["model_uri"] == good["model_uri"]
    assert len(client.search_model_versions(f"name='{name}'")) == 2


def test_tracking_uri_from_the_config_alone_is_used_for_every_call(tmp_path: Path, mlflow_server: str) -> None:
    """No MLFLOW_TRACKING_URI or MLFLOW_REGISTRY_URI in the environment: the run, its artifacts, the model
    version and the alias all go to `tracking.uri` (the working directory shows no local fallback store)."""
    from mlflow import MlflowClient

    name = "trainer-config-uri-model"
    config = tiny_config(
        tmp_path / "run",
        tracking={"uri": mlflow_server, "experiment": "trainer-config-uri", "model_name": name},
        train={"max_steps": 5},
    )
    result = run_trainer("train", "--config", str(config), env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert summary["model_uri"] == f"models:/{name}/1" and summary["alias_moved"] is True
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.get_model_version_by_alias(name, "champion").run_id == summary["run_id"]
    files = {item.path for item in client.list_artifacts(summary["run_id"], "model")}
    assert {f"model/{MLMODEL_FILE}", "model/data", "model/code"} <= files
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_tracking_tags_and_the_newest_checkpoint_are_on_the_run(tmp_path: Path, mlflow_server: str) -> None:
    """What the TrainingJob operator reads: its uid tag on the run, and the newest checkpoint as run tags."""
    from mlflow import MlflowClient

    # The names the operator reads (trainop/progress.py), defined once for both sides.
    from workloads.contracts import CHECKPOINT_PATH_TAG, CHECKPOINT_STEP_TAG, UID_TAG

    tags = {UID_TAG: "0b6c6f0e-uid", "team": "vision"}
    tracking = {"experiment": "trainer-tags", "model_name": "trainer-tags-model", "tags": tags}
    config = tiny_config(tmp_path, tracking=tracking, train={"max_steps": 30}, checkpoint={"every": 10})
    done = run_trainer("train", "--config", str(config), env=clean_env(MLFLOW_TRACKING_URI=mlflow_server))
    assert done.returncode == 0, done.stderr
    summary = summary_of(done.stdout)
    run = MlflowClient(mlflow_server).get_run(summary["run_id"])
    assert tags.items() <= run.data.tags.items()
    assert run.data.tags[CHECKPOINT_STEP_TAG] == "30"
    assert run.data.tags[CHECKPOINT_PATH_TAG] == summary["checkpoint"]
    found = MlflowClient(mlflow_server).search_runs(
        [run.info.experiment_id], filter_string=f"tags.`{UID_TAG}` = '0b6c6f0e-uid'"
    )
    assert [r.info.run_id for r in found] == [summary["run_id"]]


def test_tracking_tags_must_be_a_mapping_of_strings(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, tracking={"tags": ["not", "a", "mapping"]})
    bad = run_trainer("train", "--config", str(config), env=clean_env())
    assert bad.returncode == 2, bad.stderr
    assert "tracking.tags=" in bad.stderr and "mapping of names to strings" in bad.stderr
