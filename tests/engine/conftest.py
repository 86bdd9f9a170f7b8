"""Engine tier: the platform's objects against a real local control plane (tests/engine/cluster.py).

Every test here carries the `engine` marker. They never skip: without the toolchain (tests/engine/toolchain.sh,
`make toolchain`) the cluster fixture fails with instructions. The default test run leaves them out by marker
selection (`-m "not engine"` in pytest's addopts); `make engine-test` runs them.

Set ML_PLATFORM_TOOLCHAIN to a directory printed by toolchain.sh to use it instead of the default cache key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.engine.cluster import TOOLS, LocalCluster
from tests.engine.pulumi_engine import Engine, EngineMissing, find_engine, which_engine
from tests.harness.api import condition
from tests.harness.wait import eventually
from tests.observability import promtools

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "engine: needs the locally built control plane (make toolchain); excluded from the default run, "
        "run with `make engine-test` or `pytest -m engine tests/engine`",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    if "engine" not in (config.getoption("markexpr") or "") and "engine" not in str(config.args):
        return None
    return f"engine tier: {which_engine(toolchain_dir())}"


def toolchain_dir() -> Path:
    env = os.environ.get("ML_PLATFORM_TOOLCHAIN")
    if env:
        return Path(env)
    out = subprocess.run(
        ["bash", str(HERE / "toolchain.sh"), "--print-dir"], capture_output=True, text=True, check=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tools = toolchain_dir()
    missing = [t for t in (*TOOLS, "kwok-stages.yaml") if not (tools / t).is_file()]
    if missing:
        pytest.fail(
            f"the engine toolchain is not built ({tools} lacks {', '.join(missing)}): run `make toolchain` "
            "(tests/engine/toolchain.sh) first, or deselect with -m 'not engine'",
            pytrace=False,
        )
    c = LocalCluster(tools, tmp_path_factory.mktemp("cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The Pulumi engine (tests/engine/pulumi_engine.py): the toolchain's, else the pulumi on PATH."""
    try:
        found = find_engine(toolchain_dir(), tmp_path_factory.mktemp("pulumi-home"))
    except EngineMissing as err:
        pytest.fail(str(err), pytrace=False)
    print(f"\nengine tier: {found.describe()}", file=sys.stderr)
    return found


RENDER = r"""
import json, sys
from infra.config import project_name
from infra.render import redact_secrets, run_program, stack_config

stack, overrides = sys.argv[1], json.loads(sys.argv[2])
config, secret_keys = stack_config(stack)
project = project_name()
for key, value in overrides.items():
    config[f"{project}:{key}"] = value if isinstance(value, str) else json.dumps(value)
mocks = run_program(stack, config, secret_keys)
result = {"objects": redact_secrets(mocks.objects()), "others": [r.type for r in mocks.others()]}
print("\n" + json.dumps(result))
"""


def render(stack: str, **overrides: Any) -> list[dict[str, Any]]:
    """The stack's Kubernetes objects as the program declares them (the real program under the SDK's mocks,
    `infra.render`), with config overrides; run in a subprocess so each render gets a fresh Pulumi runtime."""
    proc = subprocess.run(
        [sys.executable, "-c", RENDER, stack, json.dumps(overrides)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"rendering {stack} with {overrides} failed:\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return list(result["objects"])


INGRESS_CLASSES = {"traefik": "traefik.io/ingress-controller", "nginx": "k8s.io/ingress-nginx"}
"""The IngressClasses of the dev stack's controller (kind/traefik.yaml) and the gpu stack's (ingress-nginx)."""


@pytest.fixture(scope="session")
def ingress_classes(cluster: LocalCluster) -> None:
    """What a cluster with an ingress controller has: its IngressClass (kwok runs no controller; the classes are
    what the stacks read before they declare an Ingress)."""
    for name, controller in INGRESS_CLASSES.items():
        cluster.api.apply({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": name},
                           "spec": {"controller": controller}})  # fmt: skip


@pytest.fixture(scope="session")
def monitoring_crds(cluster: LocalCluster) -> None:
    """The Prometheus Operator's real PodMonitor/ServiceMonitor/PrometheusRule CRDs (tests/observability/
    toolchain.sh takes them from the operator's Go module), Established: the gpu stack declares PodMonitors and a
    PrometheusRule, which the API server then validates against the operator's own schemas."""
    directory = promtools.toolchain_dir()
    lacks = promtools.missing(directory, *promtools.MONITORING_CRDS)
    if lacks:
        pytest.fail(promtools.how_to_build(directory, lacks))
    names = []
    for name in promtools.MONITORING_CRDS:
        crd = yaml.safe_load((directory / name).read_text())
        cluster.api.apply(crd)
        names.append(crd["metadata"]["name"])
    for name in names:
        eventually(
            f"CRD {name} Established",
            lambda name=name: condition(cluster.api.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name),
                                        "Established") == "True",
            timeout_s=60,
        )  # fmt: skip
