"""The gate's settings: defaults that work, and every bad value refused at start with the variable and the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.settings import SettingsError, load_settings

REQUIRED = {"model_name": "tiny", "tracking_uri": "http://mlflow:5000", "targets": "http://a:8000"}


@pytest.fixture(autouse=True)
def no_rollout_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in [k for k in os.environ if k.startswith("ROLLOUT_")]:
        monkeypatch.delenv(key)
    yield


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_MODEL_NAME", "tiny")
    monkeypatch.setenv("ROLLOUT_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("ROLLOUT_TARGETS", "http://a:8000, http://b:8000/")
    monkeypatch.setenv("ROLLOUT_WINDOW_S", "120")
    settings = load_settings()
    assert settings.targets == ("http://a:8000", "http://b:8000")
    assert settings.thresholds.window_s == 120
    assert (settings.min_requests, settings.max_error_rate_increase, settings.max_latency_ratio) == (200, 0.01, 1.2)


def test_edge_values_that_can_be_met_are_accepted() -> None:
    settings = load_settings(
        **REQUIRED, interval_s=5, window_s=10, min_requests=1, max_error_rate_increase=0, max_latency_ratio=1.0
    )
    assert settings.thresholds.max_latency_ratio == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"interval_s": 10, "window_s": 15}, "ROLLOUT_WINDOW_S=15.0: must be at least two intervals (20 s"),
        ({"interval_s": 0}, "ROLLOUT_INTERVAL_S=0.0: must be a number of seconds above 0"),
        ({"interval_s": "nan"}, "ROLLOUT_INTERVAL_S=nan"),
        ({"min_requests": 0}, "ROLLOUT_MIN_REQUESTS=0: must be 1 or more"),
        ({"max_error_rate_increase": -0.01}, "ROLLOUT_MAX_ERROR_RATE_INCREASE=-0.01: must be a share from 0"),
        ({"max_error_rate_increase": 1}, "1 or more could never be exceeded"),
        ({"max_error_rate_increase": "nan"}, "ROLLOUT_MAX_ERROR_RATE_INCREASE=nan"),
        ({"max_latency_ratio": 0.9}, "ROLLOUT_MAX_LATENCY_RATIO=0.9: must be 1.0 or more"),
        ({"max_ttft_ratio": "inf"}, "ROLLOUT_MAX_TTFT_RATIO=inf: must be 1.0 or more"),
        ({"targets": ""}, "ROLLOUT_TARGETS is empty"),
        ({"targets": "a:8000"}, "ROLLOUT_TARGETS: 'a:8000' is not an http(s) URL"),
        ({"challenger_alias": "champion"}, "equals ROLLOUT_CHAMPION_ALIAS"),
        ({"model_name": " "}, "ROLLOUT_MODEL_NAME is empty"),
        ({"window_s": "soon"}, "ROLLOUT_WINDOW_S: Input should be a valid number"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable_and_the_fix(overrides: dict, message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(**{**REQUIRED, **overrides})
    assert message in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(**{**REQUIRED, "min_requests": 0, "max_latency_ratio": 0.5, "targets": ""})
    assert all(name in str(err.value) for name in ("MIN_REQUESTS", "MAX_LATENCY_RATIO", "TARGETS"))


def test_the_process_exits_2_on_bad_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), ROLLOUT_MODEL_NAME="tiny", ROLLOUT_MIN_REQUESTS="0")
    done = subprocess.run([sys.executable, "-m", "rollout"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "ROLLOUT_TRACKING_URI is empty" in done.stderr and "ROLLOUT_MIN_REQUESTS=0" in done.stderr
