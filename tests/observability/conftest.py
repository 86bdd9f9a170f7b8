"""Observability tier: the platform's alert rules, dashboards and metrics against the real Prometheus tools.

promtool and prometheus are built from Go modules by tests/observability/toolchain.sh, beside the Prometheus
Operator's CRDs (monitoring.coreos.com). Every test that needs them carries the `prometheus` marker; they never
skip: without the toolchain the fixtures below fail with the command that builds it.

Set ML_PLATFORM_OBS_TOOLCHAIN to a directory printed by toolchain.sh to use it instead of the default cache key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.observability.promtools import MONITORING_CRDS, how_to_build, missing, toolchain_dir


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "prometheus: needs promtool/prometheus built from Go modules by tests/observability/toolchain.sh "
        "(`make test` builds them and passes ML_PLATFORM_OBS_TOOLCHAIN)",
    )


@pytest.fixture(scope="session")
def obs_toolchain() -> Path:
    """The toolchain directory (built or not: the fixtures below check what they need)."""
    return toolchain_dir()


def _require(directory: Path, *names: str) -> list[Path]:
    lacks = missing(directory, *names)
    if lacks:
        pytest.fail(how_to_build(directory, lacks), pytrace=False)
    return [directory / name for name in names]


@pytest.fixture(scope="session")
def promtool(obs_toolchain: Path) -> Path:
    return _require(obs_toolchain, "promtool")[0]


@pytest.fixture(scope="session")
def prometheus_binary(obs_toolchain: Path) -> Path:
    return _require(obs_toolchain, "prometheus")[0]


@pytest.fixture(scope="session")
def monitoring_crds(obs_toolchain: Path) -> list[Path]:
    """The CustomResourceDefinitions of PodMonitor, ServiceMonitor and PrometheusRule, one YAML file each."""
    return _require(obs_toolchain, *MONITORING_CRDS)
