"""Serving from a real MLflow registry (`mlflow server` subprocess, sqlite, served artifacts): alias resolution,
download into the cache, pinned versions, and an alias move picked up by polling."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from inference.app import create_app
from inference.settings import Settings
from tests.inference.helpers import wait_ready
from tests.mlflow_server import mlflow_server

pytestmark = pytest.mark.slow


NAME = "tiny-gpt"


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend that serves artifacts itself."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def register(tracking_uri: str, saved_model: Path) -> str:
    """Register `saved_model` the way the trainer does: run artifacts under `model`, then a model version."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("inference-tests")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(saved_model), "model")
    client = MlflowClient(tracking_uri=tracking_uri)
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(version.version)


def fingerprint(client: TestClient) -> str:
    response = client.post("/v1/completions", json={"model": NAME, "prompt": "The", "max_tokens": 3})
    assert response.status_code == 200, response.text
    return response.json()["system_fingerprint"]


def test_alias_is_served_and_moving_it_swaps_the_model(
    tracking_uri: str, model_a: Path, model_b: Path, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    first = register(tracking_uri, model_a)
    registry = MlflowClient(tracking_uri=tracking_uri)
    registry.set_registered_model_alias(NAME, "champion", first)
    settings = make_settings(model_uri=f"models:/{NAME}@champion", tracking_uri=tracking_uri)
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client) == {"status": "ready", "model": NAME, "version": first}
        assert client.get("/v1/models").json()["data"][0]["id"] == NAME
        assert fingerprint(client) == f"{NAME}:{first}"
        assert (settings.cache_dir / NAME / first / "model.pt").is_file()

        second = register(tracking_uri, model_b)
        assert fingerprint(client) == f"{NAME}:{first}", "registering alone must not change what is served"
        registry.set_registered_model_alias(NAME, "champion", second)
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["version"] != second:
            assert time.monotonic() < deadline, "the alias move was not picked up"
            time.sleep(0.1)
        assert fingerprint(client) == f"{NAME}:{second}"
        assert f'inference_model_loaded{{model="{NAME}",version="{second}"}} 1.0' in client.get("/metrics").text


def test_pinned_version_and_environment_settings(
    tracking_uri: str, model_a: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = register(tracking_uri, model_a)
    monkeypatch.setenv("INFERENCE_MODEL_URI", f"models:/{NAME}/{version}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("INFERENCE_CACHE_DIR", str(tmp_path / "cache"))
    settings = Settings()
    assert settings.tracking_uri == tracking_uri
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["version"] == version
        assert fingerprint(client) == f"{NAME}:{version}"


def test_unknown_alias_keeps_the_server_unready_with_the_reason(
    tracking_uri: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(model_uri=f"models:/{NAME}@no-such-alias", tracking_uri=tracking_uri)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while "cannot resolve" not in str(client.get("/readyz").json().get("reason")):
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert f"models:/{NAME}@no-such-alias" in response.json()["reason"]
        assert client.get("/livez").status_code == 200
