"""Run the real Pulumi program (or one component) under the SDK's mocks and hand tests the objects it declares."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pulumi
import pytest

from infra.config import project_name
from infra.render import RecordingMocks, ensure_event_loop, redact_secrets, run_program, stack_config, use_mocks

PROJECT = project_name()


@pytest.fixture(autouse=True)
def event_loop_for_the_sdk() -> None:
    """Component tests use the SDK's mocks directly: the same event loop run_program makes sure of."""
    ensure_event_loop()


def render_stack(stack: str, **overrides: Any) -> RecordingMocks:
    """Run the whole program for `stack`, with config keys overridden (Python values, as in a stack file)."""
    config, secret_keys = stack_config(stack)
    for key, value in overrides.items():
        config[f"{PROJECT}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    return run_program(stack, config, secret_keys)


def objects_of(mocks: RecordingMocks) -> list[dict[str, Any]]:
    return redact_secrets(mocks.objects())


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template spec) for every object that runs pods."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield obj, obj["spec"]["template"]["spec"]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


@pytest.fixture(scope="module")
def dev_objects() -> list[dict[str, Any]]:
    return objects_of(render_stack("dev"))


@pytest.fixture(scope="module")
def gpu_objects() -> list[dict[str, Any]]:
    return objects_of(render_stack("gpu"))


@pytest.fixture(params=["dev", "gpu"])
def stack_objects(request: pytest.FixtureRequest, dev_objects: Any, gpu_objects: Any) -> list[dict[str, Any]]:
    return dev_objects if request.param == "dev" else gpu_objects


@pytest.fixture
def component() -> Callable[[Callable[[], Any]], RecordingMocks]:
    """Declare resources with `build()` under fresh mocks; returns the mocks once every output resolved."""

    def run(build: Callable[[], Any]) -> RecordingMocks:
        mocks = RecordingMocks()
        use_mocks(mocks, PROJECT, "test")

        @pulumi.runtime.test
        def program() -> Any:
            return build()

        program()
        return mocks

    return run
