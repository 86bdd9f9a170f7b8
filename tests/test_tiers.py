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


def collected(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {line for line in proc.stdout.splitlines() if "::" in line}


@pytest.mark.slow
def test_the_two_processes_select_every_test_once() -> None:
    every = collected("-m", EVERY_TIER)
    groups = {name: collected(*args) for name, args in GROUPS.items()}
    cluster_tier = collected("-m", "cluster")
    assert len(every) > 700 and cluster_tier and cluster_tier <= groups["clusters"]
    assert groups["clusters"].isdisjoint(groups["rest"])
    assert groups["clusters"] | groups["rest"] == every
