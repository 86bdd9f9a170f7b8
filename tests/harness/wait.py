"""`eventually`: the one way the harness and the tests wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import httpx2

from tests.harness.api import ApiError

RETRIED: tuple[type[BaseException], ...] = (ApiError, httpx.HTTPError, httpx2.HTTPError)
"""What a check may raise while the thing it watches is not there yet (a server not listening, an object the API
server does not have yet): tried again. Anything else ends the wait at once."""


def eventually(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 0.5,
    *,
    retry_on: tuple[type[BaseException], ...] = RETRIED,
) -> Any:
    """Poll `check` every `interval_s` until it returns something truthy, and return that. After `timeout_s`
    raise TimeoutError naming `what` and the last value returned (or exception raised, of `retry_on`)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except retry_on as err:
            last = err
        remaining = deadline - time.monotonic()
        if remaining < 0:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(min(interval_s, remaining))
