"""Test-only fault injection: a registered model version can be made to fail or to be slow, so that end-to-end tests
of canary decisions can watch them react to a bad challenger without having to build a bad model.

The fault is the version's MLflow tag `ml-platform.dev/test-fault` (`workloads.contracts.TEST_FAULT_TAG`):
- `error:<fraction>`: that share (0 to 1) of the requests the version serves is answered 500, before any work;
- `slow:<seconds>`: every request the version serves is held that long after it was queued.
It is read when the version is loaded, and honoured only where the server's `test_faults` setting is `allow`;
anywhere else the tag is logged and ignored, so a tag left on a version can never hurt a real deployment.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from workloads.contracts import TEST_FAULT_TAG

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """What a version's test-fault tag asks for."""

    tag: str
    """The tag's value, as the error message and the log quote it."""
    error_fraction: float = 0.0
    """Share of the version's requests answered 500."""
    delay_s: float = 0.0
    """Extra time every request of the version takes."""

    def fails(self, draw: float) -> bool:
        """Whether the request with the uniform random `draw` in [0, 1) is one of the failing share."""
        return draw < self.error_fraction


def parse_fault(value: str) -> InjectedFault:
    """`error:<fraction>` or `slow:<seconds>`; ValueError saying what is accepted otherwise."""
    kind, _, number = value.partition(":")
    try:
        amount = float(number)
    except ValueError:
        amount = math.nan
    if kind == "error" and 0 <= amount <= 1:
        return InjectedFault(tag=value, error_fraction=amount)
    if kind == "slow" and 0 <= amount < math.inf:
        return InjectedFault(tag=value, delay_s=amount)
    raise ValueError(f"{TEST_FAULT_TAG}={value!r}: expected error:<fraction from 0 to 1> or slow:<seconds, 0 or more>")


def fault_from_tags(tags: Mapping[str, str], *, allowed: bool, version: str) -> InjectedFault | None:
    """The fault `version`'s tags ask for, if faults are `allowed` and the tag is valid; every other case that has
    the tag is logged, so that a fault that does not happen is never a silent surprise."""
    value = tags.get(TEST_FAULT_TAG)
    if value is None:
        return None
    if not allowed:
        log.warning(
            "version %s has the tag %s=%r; ignored: test faults are injected only where INFERENCE_TEST_FAULTS=allow",
            version, TEST_FAULT_TAG, value,
        )  # fmt: skip
        return None
    try:
        fault = parse_fault(value)
    except ValueError as exc:
        log.warning("version %s: the test fault is ignored: %s", version, exc)
        return None
    log.warning("version %s: injecting the test fault %s=%r into its requests", version, TEST_FAULT_TAG, value)
    return fault
