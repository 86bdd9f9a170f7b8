"""Every example file README.md and docs/ point to exists, parses, and is one the cluster tier runs as written
(tests/cluster/test_e2e.py, test_the_documented_examples_run_as_written_within_the_dev_quota)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def referenced() -> dict[str, list[str]]:
    """examples/<file> -> the documents that name it."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for name in re.findall(r"examples/([\w.-]+\.ya?ml)", doc.read_text()):
            found.setdefault(name, []).append(doc.name)
    return found


def test_every_example_the_docs_name_exists_and_is_run_by_the_cluster_tier() -> None:
    names = referenced()
    assert {"trainingjob.yaml", "task.yaml"} <= set(names), names
    e2e = (ROOT / "tests" / "cluster" / "test_e2e.py").read_text()
    run = set(re.findall(r'EXAMPLES / "([\w.-]+)"', e2e))
    for name, docs in names.items():
        assert (ROOT / "examples" / name).is_file(), f"examples/{name}, named in {docs}, does not exist"
        assert name in run, f"examples/{name} (named in {docs}) is not run by the cluster tier"
    assert sorted(p.name for p in (ROOT / "examples").iterdir()) == sorted(names), "an example no doc names"


def test_examples_parse() -> None:
    for path in (ROOT / "examples").iterdir():
        assert yaml.safe_load(path.read_text()), path
