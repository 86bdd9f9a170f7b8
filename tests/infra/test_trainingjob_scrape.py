"""Training pods the TrainingJob operator creates are scraped like the stack's own: the stack sets the operator's
SCRAPE_ANNOTATIONS from `prometheusOperator`, and the operator (trainop.settings, read from the rendered env)
then annotates its training pods exactly as the stack annotates its own training Job's pods."""

from __future__ import annotations

from typing import Any

import pytest

from trainop import settings as trainop_settings
from trainop.settings import from_env
from workloads.monitoring.scrape import NAME_LABEL
from workloads.trainingjob import ENV_SCRAPE_ANNOTATIONS, ENV_WATCH_NAMESPACE

from .conftest import find, objects_of, render_stack

SCRAPE_PREFIX = "prometheus.io/"


def operator_settings(objects: list[dict[str, Any]]) -> trainop_settings.Settings:
    """The operator's settings as it would read them from its Deployment's environment."""
    deployment = find(objects, "Deployment", "trainop")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert ENV_WATCH_NAMESPACE not in env  # from the downward API: the Deployment's own namespace
    return from_env({**env, ENV_WATCH_NAMESPACE: deployment["metadata"]["namespace"]})


def stack_training_pod_scrape_annotations(objects: list[dict[str, Any]]) -> dict[str, str]:
    (job,) = [o for o in objects if o["kind"] == "Job" and o["metadata"]["labels"][NAME_LABEL] == "trainer"]
    annotations = job["spec"]["template"]["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(SCRAPE_PREFIX)}


@pytest.mark.parametrize(
    ("stack", "overrides", "annotated"),
    [
        ("dev", {}, True),  # dev: prometheusOperator false
        ("gpu", {}, False),  # gpu: prometheusOperator true, PodMonitors
        ("dev", {"prometheusOperator": True}, False),  # the key decides, not the stack
        ("gpu", {"prometheusOperator": False}, True),
    ],
)
def test_operator_training_pods_are_annotated_as_the_stacks_own(
    stack: str, overrides: dict[str, Any], annotated: bool
) -> None:
    objects = objects_of(render_stack(stack, **overrides))
    (container,) = find(objects, "Deployment", "trainop")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[ENV_SCRAPE_ANNOTATIONS] == ("true" if annotated else "false")
    own = stack_training_pod_scrape_annotations(objects)
    assert bool(own) is annotated
    assert dict(operator_settings(objects).trainer_pod_annotations) == own
