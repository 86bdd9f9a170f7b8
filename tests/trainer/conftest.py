"""Fixtures for the trainer tests: subprocess helpers, tiny configs and a real `mlflow server`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.wait import eventually
from tests.mlflow_server import mlflow_server as start_mlflow_server

REPO = Path(__file__).resolve().parents[2]
# Variables that would change which path of the distributed contract a subprocess takes, or where it logs.
_CONTRACT_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "JOB_COMPLETION_INDEX",
    "TRAINER_JOB_NAME",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "TORCHELASTIC_RUN_ID",
    "GROUP_RANK",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the contract variables, with the repository importable."""
    env = {key: value for key, value in os.environ.items() if key not in _CONTRACT_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env | extra


def tiny_config(directory: Path, **sections: Mapping[str, Any]) -> Path:
    """A train.yaml for a model that trains in seconds on python-docs; `sections` override its keys."""
    document: dict[str, dict[str, Any]] = {
        "data": {"source": "python-docs", "val_fraction": 0.1},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.0},
        "train": {
            "batch_size": 8,
            "max_steps": 40,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 5,
            "eval_every": 20,
            "eval_iters": 4,
            "log_every": 10,
            "seed": 7,
            "threads_per_rank": 1,
        },
        "checkpoint": {"dir": str(directory / "checkpoints"), "every": 10, "keep": 2},
    }
    for section, values in sections.items():
        document.setdefault(section, {}).update(values)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "train.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_trainer(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """`python -m trainer ARGS`, captured."""
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        env=clean_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sigterm_once_logged(proc: subprocess.Popen[str], marker: str) -> str:
    """Send SIGTERM to `proc` once a stdout line starts with `marker` (training is under way); returns stderr."""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith(marker):
                break
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return stderr


def summary_of(stdout: str) -> dict[str, Any]:
    """The JSON summary, which must be the last line of stdout."""
    lines = stdout.strip().splitlines()
    assert lines, "no output on stdout"
    summary = json.loads(lines[-1])
    assert isinstance(summary, dict)
    return summary


def val_losses(stdout: str) -> dict[int, float]:
    """`{step: val_loss}` from rank 0's plain log lines (`step N: val_loss X`)."""
    losses = {}
    for line in stdout.splitlines():
        head, sep, rest = line.partition(": val_loss ")
        if sep and head.startswith("step "):
            losses[int(head.split()[1])] = float(rest)
    return losses


def wait_for(predicate: Any, what: str, timeout: float = 120.0, interval: float = 0.01) -> None:
    eventually(what, predicate, timeout, interval, retry_on=())


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, artifacts served) on a free port of 127.0.0.1; yields its URL."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow"), env=clean_env()) as url:
        yield url
