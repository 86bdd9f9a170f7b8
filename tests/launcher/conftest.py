"""The launcher's tests: unit tests need nothing; the `engine` ones use the engine tier's local control plane
(tests/engine/conftest.py) with the API server as a real `python -m skyrun serve` subprocess."""

from tests.engine.conftest import cluster, pytest_configure

__all__ = ["cluster", "pytest_configure"]
