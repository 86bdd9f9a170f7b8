"""The operator's SCRAPE_ANNOTATIONS setting: with it, the training pods it creates carry the prometheus.io/*
annotations of the trainer's metrics port (a Prometheus without the Operator finds them); without it, none (the
trainer PodMonitor selects them by label). The resource's own spec.podAnnotations win over the platform's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.operator.harness import training_job
from trainop.handlers import Reconciler, attempt_objects
from trainop.progress import ProgressCache
from trainop.settings import ENV_SCRAPE_ANNOTATIONS, Settings, SettingsError, from_env
from workloads.training import CONFIG_CHECKSUM_ANNOTATION

BASE_ENV = {"WATCH_NAMESPACE": "ml", "PLATFORM_IMAGE": "platform:1", "CHECKPOINT_CLAIM": "ckpt"}
SCRAPE = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")


def settings(**env: str) -> Settings:
    return from_env({**BASE_ENV, **env})


def tj(**spec: Any) -> dict[str, Any]:
    obj = training_job("run", "ml", **spec)
    obj["metadata"].update(uid="u-1", generation=1)
    return obj


def pod_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    job = next(o for o in objects if o["kind"] == "Job")
    return dict(job["spec"]["template"])


def metrics_port(template: dict[str, Any]) -> int:
    (container,) = template["spec"]["containers"]
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics"))


def test_with_the_setting_training_pods_are_annotated_for_their_metrics_port() -> None:
    template = pod_template(attempt_objects(tj(), 0, settings(**{ENV_SCRAPE_ANNOTATIONS: "true"}), suspend=False))
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == metrics_port(template) == 9400
    assert CONFIG_CHECKSUM_ANNOTATION in annotations  # the builder's own annotation stays


@pytest.mark.parametrize("value", [None, "false", "FALSE"])
def test_without_it_there_are_none(value: str | None) -> None:
    env = {} if value is None else {ENV_SCRAPE_ANNOTATIONS: value}
    assert settings(**env).trainer_pod_annotations == ()
    annotations = pod_template(attempt_objects(tj(), 0, settings(**env), suspend=False))["metadata"]["annotations"]
    assert not set(SCRAPE) & set(annotations)


def test_the_resources_own_pod_annotations_win() -> None:
    own = {"prometheus.io/scrape": "false", "team": "nlp"}
    objects = attempt_objects(tj(podAnnotations=own), 0, settings(**{ENV_SCRAPE_ANNOTATIONS: "true"}), suspend=False)
    annotations = pod_template(objects)["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false" and annotations["team"] == "nlp"
    assert annotations["prometheus.io/port"] == "9400"  # what the user left alone still comes from the platform


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=f"{ENV_SCRAPE_ANNOTATIONS}='yes': true or false"):
        settings(**{ENV_SCRAPE_ANNOTATIONS: "yes"})


class RecordingKube:
    """What `Reconciler` calls on a fresh TrainingJob with no children yet; records what it creates."""

    def __init__(self, training_job: dict[str, Any]) -> None:
        self.tj = training_job
        self.created: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    async def training_job(self, name: str) -> dict[str, Any]:
        return self.tj

    async def job(self, name: str) -> None:
        return None

    async def create_or_adopt(self, obj: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        self.created.append(obj)
        return obj

    async def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    async def resource_quotas(self) -> list[dict[str, Any]]:
        return []

    async def post_event(self, tj: Any, kind: str, reason: str, message: str) -> None:
        self.events.append((kind, reason))


@pytest.mark.parametrize("enabled", [True, False])
def test_the_reconciler_creates_the_job_with_them(enabled: bool) -> None:
    kube = RecordingKube(tj())
    reconciler = Reconciler(kube, settings(**{ENV_SCRAPE_ANNOTATIONS: str(enabled).lower()}), ProgressCache(""))  # type: ignore[arg-type]
    asyncio.run(reconciler.reconcile("run"))
    assert [o["kind"] for o in kube.created] == ["ConfigMap", "Service", "NetworkPolicy", "Job"]
    assert kube.statuses[-1]["phase"] == "Pending"
    annotations = pod_template(kube.created)["metadata"]["annotations"]
    assert (annotations.get("prometheus.io/port") == "9400") is enabled
    assert ("prometheus.io/scrape" in annotations) is enabled
