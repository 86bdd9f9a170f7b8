"""Cluster tier: a real single-node Kubernetes cluster (tests/cluster/realcluster.py) running real containers.

Every test here carries the `cluster` marker and runs only when selected with `-m cluster` (the hook below
deselects them otherwise, so neither a bare `pytest` nor `make test` needs root, containerd or an hour of image
builds). They never skip: without the toolchains or without root the fixture fails and says what to run.

Toolchains: ML_PLATFORM_TOOLCHAIN (control plane, tests/engine/toolchain.sh) and ML_PLATFORM_CLUSTER_TOOLCHAIN
(node binaries, tests/cluster/toolchain.sh), else the directories those scripts print with --print-dir.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import images
from tests.cluster.realcluster import NODE_TOOLS, ImageSpec, RealCluster, toolchain_dir
from tests.harness.containerd import default_image_store
from tests.harness.controlplane import CONTROL_PLANE_TOOLS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: needs root and a real single-node cluster (tests/cluster; toolchains from `make toolchain` and "
        "tests/cluster/toolchain.sh); runs only when selected: `pytest -m cluster tests/cluster`",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "cluster" in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("cluster")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("cluster")]


def _toolchains() -> tuple[Path, Path]:
    control_plane = toolchain_dir("tests/engine/toolchain.sh", "ML_PLATFORM_TOOLCHAIN")
    node_tools = toolchain_dir("tests/cluster/toolchain.sh", "ML_PLATFORM_CLUSTER_TOOLCHAIN")
    missing = [str(control_plane / t) for t in CONTROL_PLANE_TOOLS if not (control_plane / t).is_file()]
    missing += [str(node_tools / t) for t in NODE_TOOLS if not (node_tools / t).is_file()]
    if missing:
        pytest.fail(
            f"the cluster toolchains are not built ({', '.join(missing)} missing): run `make toolchain` and "
            "`bash tests/cluster/toolchain.sh` (as root), or deselect with -m 'not cluster'",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the cluster tier needs root (network namespaces, mounts, cgroups, containers)", pytrace=False)
    return control_plane, node_tools


@pytest.fixture(scope="session")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Python base image (podman), built once per machine: debootstrap + podman import."""
    log = tmp_path_factory.mktemp("images") / "base-build.log"
    try:
        return images.base_image(log=log)
    except images.ImageError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Iterator[RealCluster]:
    """One cluster for the session, with the base image imported; stopped and wiped at the end, whatever
    happened. Its component logs are copied to `<pytest tmp>/real-cluster-logs*`."""
    control_plane, node_tools = _toolchains()
    logs = tmp_path_factory.mktemp("real-cluster-logs")
    cluster = RealCluster(
        control_plane, node_tools, images=[ImageSpec(base_image)], keep_logs=logs, image_store=default_image_store()
    )
    try:
        cluster.start()
        print(f"\nreal cluster {cluster.name} up; logs: {cluster.logs} (kept in {logs})", file=sys.stderr)
        yield cluster
    finally:
        problems = cluster.stop()
    if problems:
        pytest.fail(f"the real cluster did not stop cleanly: {problems}", pytrace=False)


def _role_image(real_cluster: RealCluster, role: images.Role, logs: Path) -> str:
    """Build (once per content key) or reuse `role`'s image and import it into the session's cluster under the
    name the dev stack's manifests use."""
    try:
        result = images.role_image(role, log=logs / f"{role.target}-build.log")
    except images.ImageError as err:
        pytest.fail(str(err), pytrace=False)
    seconds = real_cluster.import_podman_image(result.ref, (role.tag,))
    word = "built" if result.built else "reused"
    print(f"\n{role.target} image {result.ref} {word} ({result.seconds:.0f} s), imported ({seconds:.0f} s)",
          file=sys.stderr)  # fmt: skip
    return role.tag


@pytest.fixture(scope="session")
def platform_image(real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The platform image (torch: trainer, inference; cold: PyPI's torch, minutes), as ml-platform:dev."""
    return _role_image(real_cluster, images.PLATFORM, tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def services_image(real_cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The services image (the Dockerfile's `services` stage: MLflow, the operator, the launcher, no torch), as
    ml-platform-services:dev."""
    return _role_image(real_cluster, images.SERVICES, tmp_path_factory.mktemp("images"))
