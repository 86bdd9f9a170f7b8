"""Helpers for the inference tests: tiny GPTs trained on Python's help topics, checkpoint layout, servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import httpx
import httpx2
import torch
from fastapi.testclient import TestClient

from tests.harness.wait import eventually
from tinygpt import saved
from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from tinygpt.saved import COMPLETE_FILE
from tinygpt.tokenizer import CharTokenizer

TINY_SHAPE = {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}
CORPUS = "\n".join(topics[key] for key in sorted(topics))


def train_tiny_model(directory: Path, *, seed: int, steps: int, shape: dict[str, int] | None = None) -> Path:
    """Train a GPT on Python's help topics for a few steps and save it as a saved-model directory."""
    torch.manual_seed(seed)
    # One thread: the model is tiny, and two threads on two shared cores mostly wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(directory, steps=steps, shape=shape)
    finally:
        torch.set_num_threads(threads)


def _train(directory: Path, *, steps: int, shape: dict[str, int] | None) -> Path:
    tokenizer = CharTokenizer.from_text(CORPUS)
    data = torch.tensor(tokenizer.encode(CORPUS), dtype=torch.long)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, **(shape or TINY_SHAPE))
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - config.block_size - 1, (16,))
        x = torch.stack([data[s : s + config.block_size] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + config.block_size] for s in starts])
        _, loss = model(x, y)
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    saved.save(model, tokenizer, directory)
    return directory


def add_checkpoint(root: Path, step: int, saved_model: Path, *, complete: bool = True) -> Path:
    """Lay out `saved_model` as the trainer's `step-*` checkpoint directory under `root`."""
    directory = root / f"step-{step:08d}"
    shutil.copytree(saved_model, directory)
    (directory / "train_state.pt").write_bytes(b"optimizer state is not read by inference")
    if complete:
        (directory / COMPLETE_FILE).write_text("")
    return directory


def register_version(
    tracking_uri: str, name: str, saved_model: Path, *, raw: bool = False, tags: Mapping[str, str] | None = None
) -> str:
    """Register `saved_model` as a new version of `name` the way the trainer does: an MLflow pyfunc model as run
    artifacts under `model`, then a model version (with `tags`). `raw=True`: the saved model's files themselves, as
    trainers before the pyfunc model did.

    Only through a client bound to the server: MLflow's process-wide tracking URI stays unset, so a code path of
    the service that falls back to it is not rescued by the test's own set-up.
    """
    import mlflow
    from mlflow import MlflowClient

    from tinygpt.pyfunc import save_pyfunc

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("inference-tests")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("inference-tests")
    run = client.create_run(experiment_id)
    if raw:
        client.log_artifacts(run.info.run_id, str(saved_model), "model")
    else:
        with tempfile.TemporaryDirectory() as staging:
            client.log_artifacts(run.info.run_id, str(save_pyfunc(saved_model, Path(staging) / "model")), "model")
    client.set_terminated(run.info.run_id)
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=dict(tags or {})
    )
    return str(version.version)


def wait_readyz(
    client: TestClient,
    what: str,
    ok: Callable[[httpx2.Response], bool],
    timeout: float = 60.0,
    interval: float = 0.05,
) -> dict[str, Any]:
    """Poll the in-process app's /readyz until `ok(answer)` and return the answer's body; a timeout names `what`
    and the last body. Nothing is retried: the app answers in-process, so an exception is a failure at once."""

    def check() -> dict[str, Any] | None:
        answer = client.get("/readyz")
        return dict(answer.json()) if ok(answer) else None

    try:
        return dict(eventually(what, check, timeout, interval, retry_on=()))
    except TimeoutError as err:
        raise AssertionError(f"{err}; /readyz: {client.get('/readyz').json()}") from None


def wait_ready(client: TestClient, timeout: float = 60.0) -> dict[str, Any]:
    return wait_readyz(client, "/readyz to answer 200", lambda answer: answer.status_code == 200, timeout)


REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """`python -m inference serve` in a subprocess on 127.0.0.1 (the way the pod runs it)."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
        environment.update(PYTHONPATH=str(REPO_ROOT), INFERENCE_HOST="127.0.0.1", INFERENCE_PORT=str(self.port), **env)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inference",
                "serve",
                "--log-level",
                os.environ.get("TEST_SERVER_LOG_LEVEL", "info"),
            ],
            # Not the repository: a library falling back to a default location (MLflow's ./mlflow.db) must not
            # write there.
            cwd=log_path.parent,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            response = httpx.get(f"{self.url}/readyz", timeout=5)
            return dict(response.json()) if response.status_code == 200 else None

        what = f"{self.url}/readyz to answer 200"
        try:  # not listening yet: a transport error, tried again
            return dict(eventually(what, ready, timeout, 0.1, retry_on=(httpx.TransportError,)))
        except TimeoutError as err:
            raise AssertionError(f"{err}\n{self.log()}") from None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._log.close()
