"""`make test` runs the suite as two pytest processes side by side (tests/tiers.py): together they must select
exactly the tests one `pytest -m "engine or cluster or prometheus or not engine"` selects, each test once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiers import GROUPS

ROOT = Path(__file__).resolve().parents[1]
EVERY_TIER = "engine or cluster or prometheus or not engine"


def collected(markexpr: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", markexpr],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {line for line in proc.stdout.splitlines() if "::" in line}


@pytest.mark.slow
def test_the_two_processes_select_every_test_once() -> None:
    every = collected(EVERY_TIER)
    groups = {name: collected(args[args.index("-m") + 1]) for name, args in GROUPS.items()}
    assert len(every) > 700 and groups["cluster"] and all(t.startswith("tests/cluster/") for t in groups["cluster"])
    assert groups["cluster"].isdisjoint(groups["rest"])
    assert groups["cluster"] | groups["rest"] == every
