"""The import rules of docs/architecture.md, checked on the source: every `import` and `from ... import` of every
module (inside functions too), parsed with `ast`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What `pulumi up` installs (infra/requirements.txt) and what it brings along (PyYAML comes with pulumi).
PULUMI_PROGRAM = {"pulumi", "pulumi_kubernetes", "pulumi_kubernetes_cert_manager", "yaml"}
# Allowed imports beyond the standard library, per package.
ALLOWED = {
    # infra: the Pulumi program; never torch, mlflow, kopf, fastapi or any runtime package.
    "infra": PULUMI_PROGRAM | {"infra", "workloads"},
    # workloads: pure manifest builders both infra and a runtime package may import.
    "workloads": {"workloads", "yaml"},
}
# Forbidden imports per package (runtime packages may use their own third-party libraries).
FORBIDDEN = {
    "trainer": {"infra", "inference", "pulumi"},
    "inference": {"infra", "trainer", "pulumi"},
    "tinygpt": {"infra", "trainer", "inference", "demo", "pulumi"},
    "demo": {"infra", "pulumi"},
    # The TrainingJob operator: builds its objects with workloads; validates train.yaml with trainer's config.
    "trainop": {"infra", "inference", "pulumi"},
    # The task launcher (API + CLI): builds its objects with workloads; never the Pulumi program or the runtimes.
    "skyrun": {"infra", "trainer", "inference", "tinygpt", "trainop", "demo", "pulumi"},
    # The canary gate: in the services image (no torch); reads the inference replicas over HTTP, never by import.
    "rollout": {"infra", "trainer", "inference", "tinygpt", "trainop", "skyrun", "demo", "pulumi", "torch"},
}


def imported_roots(source: str) -> set[str]:
    """Top-level names of every absolute import in `source` (relative imports stay inside the package)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def violations(package: str, source: str) -> set[str]:
    roots = imported_roots(source) - {"__future__"}
    if package in ALLOWED:
        return {r for r in roots if r not in sys.stdlib_module_names and r not in ALLOWED[package]}
    return roots & FORBIDDEN[package]


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted({*ALLOWED, *FORBIDDEN}))
def test_package_imports_follow_the_rules(package: str) -> None:
    # Every package with rules exists now: a missing one means a stale rule, not a package still to come.
    assert (ROOT / package).is_dir(), f"{package}/ has import rules but no directory: remove or fix its rule"
    found = {str(path.relative_to(ROOT)): violations(package, path.read_text()) for path in modules(package)}
    assert found, f"no modules in {package}/"
    assert {path: bad for path, bad in found.items() if bad} == {}


def test_every_top_level_package_has_rules() -> None:
    """A new package gets its rules here (and a line in docs/architecture.md) before it lands."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "policy", "bench"}
    assert packages <= {*ALLOWED, *FORBIDDEN}, packages - {*ALLOWED, *FORBIDDEN}


@pytest.mark.parametrize(
    ("package", "source", "bad"),
    [
        ("infra", "import torch\n", {"torch"}),
        ("infra", "def f():\n    from mlflow.tracking import MlflowClient\n", {"mlflow"}),
        ("infra", "import kopf, fastapi\n", {"kopf", "fastapi"}),
        ("infra", "from trainer.config import build_config\n", {"trainer"}),
        ("infra", "from demo import runner\n", {"demo"}),
        ("workloads", "import pulumi_kubernetes as k8s\n", {"pulumi_kubernetes"}),
        ("workloads", "from infra.common import labels\n", {"infra"}),
        ("trainer", "from infra.config import parse_quantity\n", {"infra"}),
        ("trainer", "import inference.service\n", {"inference"}),
        ("inference", "from trainer import loop\n", {"trainer"}),
        ("tinygpt", "from trainer.config import TrainConfig\n", {"trainer"}),
        ("trainop", "from infra.training import TrainingJob\n", {"infra"}),
        ("infra", "from trainop.handlers import register\n", {"trainop"}),
        ("rollout", "from inference.metrics import Metrics\n", {"inference"}),
        ("rollout", "import torch\n", {"torch"}),
    ],
)
def test_the_rules_catch_a_forbidden_import(package: str, source: str, bad: set[str]) -> None:
    assert violations(package, source) == bad


def test_the_rules_allow_what_the_packages_need() -> None:
    assert violations("infra", "import json\nimport pulumi\nfrom workloads.training import TrainingJobSpec\n") == set()
    assert violations("trainer", "import torch\nfrom tinygpt.model import GPT\nfrom . import loop\n") == set()
    assert violations("inference", "from tinygpt.saved import load\nimport fastapi\n") == set()
    assert violations("trainop", "import kopf\nfrom workloads.training import training_manifests\n") == set()
    assert (
        violations("rollout", "import httpx\nfrom mlflow import MlflowClient\nfrom workloads import contracts\n")
        == set()
    )
