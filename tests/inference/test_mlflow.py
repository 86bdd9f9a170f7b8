"""Serving from a real MLflow registry (`mlflow server` subprocess, sqlite, served artifacts): alias resolution,
download into the cache, pinned versions, an alias move picked up by polling, versions in the raw layout of
earlier trainers, and the same completions as MLflow's own pyfunc loader."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from inference.app import create_app
from inference.settings import Settings
from tests.harness.wait import eventually
from tests.inference.helpers import LiveServer, register_version, wait_ready, wait_readyz
from tinygpt.saved import find_saved_model

pytestmark = pytest.mark.slow


NAME = "tiny-gpt"


def register(tracking_uri: str, saved_model: Path, *, raw: bool = False) -> str:
    return register_version(tracking_uri, NAME, saved_model, raw=raw)


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
        assert (find_saved_model(settings.cache_dir / NAME / first) / "model.pt").is_file()

        second = register(tracking_uri, model_b)
        assert fingerprint(client) == f"{NAME}:{first}", "registering alone must not change what is served"
        registry.set_registered_model_alias(NAME, "champion", second)
        wait_readyz(client, f"the alias move to version {second} picked up",
                    lambda answer: answer.json()["version"] == second, 60, 0.1)  # fmt: skip
        assert fingerprint(client) == f"{NAME}:{second}"
        loaded = f'inference_model_loaded{{alias="champion",model="{NAME}",version="{second}"}} 1.0'
        assert loaded in client.get("/metrics").text


def wait_for_cache(directory: Path, expected: set[str], timeout: float = 30.0) -> None:
    def cached() -> bool:
        return {entry.name for entry in directory.iterdir()} == expected

    try:
        eventually(f"{directory} to hold exactly {sorted(expected)}", cached, timeout, 0.05, retry_on=())
    except TimeoutError as err:
        raise AssertionError(f"{err}; it holds {sorted(p.name for p in directory.iterdir())}") from None


def test_the_cache_keeps_only_the_served_version(
    tracking_uri: str, model_a: Path, model_b: Path, make_settings: Callable[..., Settings]
) -> None:
    """Every load of a new version leaves the model's cache directory holding that version alone: older
    versions and crashed downloads go, so hot swaps never fill the pod's size-limited /tmp."""
    registry = MlflowClient(tracking_uri=tracking_uri)
    first = register(tracking_uri, model_a)
    registry.set_registered_model_alias(NAME, "cache-test", first)
    settings = make_settings(model_uri=f"models:/{NAME}@cache-test", tracking_uri=tracking_uri)
    cache = settings.cache_dir / NAME
    # What an earlier container of the pod leaves in the emptyDir: an older version, and a download that was
    # killed before its rename.
    shutil.copytree(model_a, cache / "0")
    (cache / f".{first}-killed").mkdir()
    (cache / f".{first}-killed" / "model.pt").write_bytes(b"half a download")
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["version"] == first
        wait_for_cache(cache, {first})

        second = register(tracking_uri, model_b)
        registry.set_registered_model_alias(NAME, "cache-test", second)
        wait_readyz(client, f"the alias move to version {second} picked up",
                    lambda answer: answer.json()["version"] == second, 60, 0.1)  # fmt: skip
        wait_for_cache(cache, {second})
        assert fingerprint(client) == f"{NAME}:{second}"
        assert (find_saved_model(cache / second) / "model.pt").is_file()


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
        wait_readyz(client, "a 'cannot resolve' reason on /readyz",
                    lambda answer: "cannot resolve" in str(answer.json().get("reason")), 60, 0.1)  # fmt: skip
        response = client.get("/readyz")
        assert response.status_code == 503
        assert f"models:/{NAME}@no-such-alias" in response.json()["reason"]
        assert client.get("/livez").status_code == 200


def test_inference_tracking_uri_alone_serves_the_registry_model(
    tracking_uri: str, model_a: Path, live_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` configured only by INFERENCE_TRACKING_URI resolves the alias *and* downloads the version from that
    server, not from MLflow's default registry (the process has no MLFLOW_TRACKING_URI or MLFLOW_REGISTRY_URI)."""
    version = register(tracking_uri, model_a)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(NAME, "only-inference-uri", version)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(variable, raising=False)
    server = live_server(INFERENCE_MODEL_URI=f"models:/{NAME}@only-inference-uri", INFERENCE_TRACKING_URI=tracking_uri)
    assert server.wait_ready(timeout=60) == {"status": "ready", "model": NAME, "version": version}
    assert "not found" not in server.log()


def test_a_version_in_the_raw_layout_of_earlier_trainers_is_still_served(
    tracking_uri: str, model_a: Path, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    version = register(tracking_uri, model_a, raw=True)
    settings = make_settings(model_uri=f"models:/{NAME}/{version}", tracking_uri=tracking_uri)
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["version"] == version
        assert fingerprint(client) == f"{NAME}:{version}"
    warning = next(r.getMessage() for r in caplog.records if "raw saved-model files" in r.getMessage())
    assert f"models:/{NAME}/{version}" in warning and "mlflow.pyfunc.load_model" in warning


def test_the_server_completes_like_mlflow_pyfunc_on_the_same_version(
    tracking_uri: str, model_a: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One registered thing: MLflow's own loader and the inference service generate the same greedy text."""
    import mlflow.pyfunc
    import pandas as pd

    version = register(tracking_uri, model_a)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(NAME, "pyfunc-check", version)
    prompts = ["def f(x):", "The"]
    # For this test only: the pyfunc loader resolves `models:/` through the environment's registry.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    pyfunc_model = mlflow.pyfunc.load_model(f"models:/{NAME}@pyfunc-check")
    expected = pyfunc_model.predict(pd.DataFrame({"prompt": prompts}), params={"max_tokens": 40, "temperature": 0.0})
    settings = make_settings(model_uri=f"models:/{NAME}@pyfunc-check", tracking_uri=tracking_uri)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        body = {"model": NAME, "prompt": prompts, "max_tokens": 40, "temperature": 0.0}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        served = [choice["text"] for choice in sorted(response.json()["choices"], key=lambda c: c["index"])]
    assert served == list(expected["completion"])
