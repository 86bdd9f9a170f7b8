"""The phase record bench/ci_budget.py reads: when ML_PLATFORM_PHASE_LOG names a file, each timed step of the
test setup (an image build, an image import) appends "<name> <start> <end>" (epoch seconds) to it. The toolchain
scripts write the same lines (tests/toolchain/lib.sh)."""

from __future__ import annotations

import os
import time


def record(name: str, start: float, end: float | None = None) -> None:
    """Record a step that ran from `start` (time.time()) until `end` (default: now)."""
    path = os.environ.get("ML_PLATFORM_PHASE_LOG")
    if not path:
        return
    with open(path, "a") as out:
        out.write(f"{name} {start:.2f} {(time.time() if end is None else end):.2f}\n")
