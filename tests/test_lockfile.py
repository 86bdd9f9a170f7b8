"""The lock (constraints.txt): every declared dependency is pinned within its declared range, the environment the
tests run in is the locked one, and the Dockerfile installs torch at the locked version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lockfile import differences, read_lock

ROOT = Path(__file__).resolve().parents[1]


def declared() -> list[tuple[str, Requirement]]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [(extra, Requirement(line)) for extra, lines in extras.items() for line in lines]


@pytest.mark.parametrize(("extra", "req"), declared(), ids=lambda v: str(v))
def test_every_declared_dependency_is_locked_within_its_range(extra: str, req: Requirement) -> None:
    if canonicalize_name(req.name) == "ml-platform":
        return  # the project's own extras
    locked = read_lock()
    name = canonicalize_name(req.name)
    assert name in locked, f"[{extra}] {req} is not in constraints.txt: run python -m tests.lockfile write"
    assert req.specifier.contains(locked[name], prereleases=True), f"[{extra}] {req}: locked {locked[name]}"


def test_the_environment_is_the_locked_one() -> None:
    """`make install` installs with the lock; a package installed or upgraded by hand shows here."""
    assert differences() == []


def test_the_dockerfile_installs_the_locked_torch() -> None:
    match = re.search(r"^ARG TORCH_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile no longer declares ARG TORCH_VERSION"
    assert match[1] == read_lock()["torch"]


def test_the_dockerfile_installs_every_stage_from_the_lock() -> None:
    text = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install --requirement \S+ (--constraint \S+)?", text)
    assert len(installs) == 2 and all(installs), "each stage installs its extras with --constraint constraints.txt"
    assert text.count("COPY pyproject.toml constraints.txt ./") == 2
