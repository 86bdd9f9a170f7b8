"""constraints.txt: the exact version of every package the project installs, the lock that `make install` (so CI)
and the Dockerfile install from.

    python -m tests.lockfile write   pin what the current environment has installed for ml-platform[dev]
    python -m tests.lockfile check   exit 1 unless the environment and constraints.txt agree

`write` walks the installed distributions' requirements from `ml-platform[dev]` (markers evaluated for this
interpreter), so a package installed by hand is never locked and a dependency is never missed. Update the lock by
changing pyproject.toml, installing into a fresh venv without the constraints (`pip install -e ".[dev]"`), running
the tests, then `write`.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
PROJECT = "ml-platform"
HEADER = """\
# The lock: every package ml-platform[dev] installs, at the version the test suite ran with (Python 3.11, Linux).
# `make install` (so CI) and the Dockerfile install with `-c constraints.txt`.
# Regenerate: python -m tests.lockfile write
"""


def closure(root: str = PROJECT, extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """{canonical name: installed version} of everything `root[extras]` needs, as installed here."""
    found: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        dist = metadata.distribution(name)
        if canonicalize_name(name) != PROJECT:
            found[canonicalize_name(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**default_environment(), "extra": extra}) for extra in (wanted or {""})
            ):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return found


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
            if not match:
                raise ValueError(f"{path.name}: {line!r} is not name==version")
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def write(path: Path = LOCK) -> None:
    pins = closure()
    path.write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    print(f"wrote {len(pins)} pins to {path}")


def differences() -> list[str]:
    """What differs between the environment's closure and the lock (empty when they agree)."""
    locked, installed = read_lock(), closure()
    problems = [f"{n}: installed {v}, not in constraints.txt" for n, v in sorted(installed.items()) if n not in locked]
    problems += [
        f"{n}: installed {v}, constraints.txt pins {locked[n]}"
        for n, v in sorted(installed.items())
        if n in locked and locked[n] != v
    ]
    return problems


def main(argv: list[str]) -> int:
    if argv == ["write"]:
        write()
        return 0
    if argv == ["check"]:
        problems = differences()
        print("\n".join(problems) or "constraints.txt matches the environment")
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
