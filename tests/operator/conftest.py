"""The operator's control-plane tests use the engine tier's local control plane (tests/engine/conftest.py)."""

from tests.engine.conftest import cluster, pytest_configure

__all__ = ["cluster", "pytest_configure"]
