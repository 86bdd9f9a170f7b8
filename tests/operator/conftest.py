"""The operator's control-plane tests use the engine tier's local control plane (tests/engine/conftest.py) and, for
Kueue, its real manager (tests/engine/kueue.py)."""

from tests.engine.conftest import cluster, pytest_configure
from tests.engine.kueue import kueue

__all__ = ["cluster", "kueue", "pytest_configure"]
