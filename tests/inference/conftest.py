"""Fixtures for the inference tests: tiny models trained in the session, settings, clients, live servers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from inference.app import create_app
from inference.settings import Settings
from tests.inference.helpers import LiveServer, add_checkpoint, train_tiny_model, wait_ready
from tests.mlflow_server import mlflow_server


@pytest.fixture(scope="session", autouse=True)
def clean_environment() -> Iterator[None]:
    """Settings read INFERENCE_* and MLFLOW_TRACKING_URI; a developer's shell must not change the tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("INFERENCE_") or k == "MLFLOW_TRACKING_URI"}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """As the server by default: tiny models run fastest on one thread, above all on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("model-a"), seed=1, steps=40)


@pytest.fixture(scope="session")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second version with different weights, for swaps."""
    return train_tiny_model(tmp_path_factory.mktemp("model-b"), seed=2, steps=30)


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory, model_a: Path, model_b: Path) -> Path:
    """A trainer checkpoint root: step 40 is complete; a newer step 50 was interrupted (no COMPLETE)."""
    root = tmp_path_factory.mktemp("checkpoints")
    add_checkpoint(root, 40, model_a)
    add_checkpoint(root, 50, model_b, complete=False)
    return root


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend that serves artifacts itself, shared by the
    registry tests (each registers its own model names, so their aliases never meet)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"cache_dir": tmp_path / "cache", "poll_interval_s": 0.2, "drain_delay_s": 0.0}
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def client(make_settings: Callable[..., Settings], checkpoint_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(model_uri=str(checkpoint_root)))) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        env.setdefault("INFERENCE_CACHE_DIR", str(tmp_path / "cache"))
        server = LiveServer(tmp_path / f"server-{len(started)}.log", **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
