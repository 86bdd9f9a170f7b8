"""The operator's settings, from its environment (names in workloads.trainingjob, so the Pulumi program sets the
same ones). See docs/operator.md for each."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from workloads.monitoring.scrape import TRAINER_TARGET, scrape_annotations
from workloads.trainingjob import (
    CHECKPOINT_ACCESS_MODES,
    ENV_CHECKPOINT_ACCESS_MODE,
    ENV_CHECKPOINT_CLAIM,
    ENV_CHECKPOINT_SUB_PATH,
    ENV_GPUS_AVAILABLE,
    ENV_HEALTH_PORT,
    ENV_IMAGE_PULL_POLICY,
    ENV_METRICS_PORT,
    ENV_MLFLOW_TRACKING_URI,
    ENV_PLATFORM_IMAGE,
    ENV_RECONCILE_INTERVAL_S,
    ENV_SCRAPE_ANNOTATIONS,
    ENV_TRAINER_SERVICE_ACCOUNT,
    ENV_WATCH_NAMESPACE,
    HEALTH_PORT,
    METRICS_PORT,
    Platform,
)

ENV_RESTART_BACKOFF_S = "RESTART_BACKOFF_S"
ENV_FINISHED_FOLLOW_S = "FINISHED_FOLLOW_S"
"""How long a finished TrainingJob is still reconciled on the timer (its last metrics may land in MLflow after the
Job completes); after that only a change of the resource, or its ttlSecondsAfterFinished, reconciles it."""
# The container port named `metrics` of every training pod (workloads.training), as infra/program.py's target.


class SettingsError(ValueError):
    """A missing or malformed setting; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    platform: Platform
    """What every TrainingJob's children get from the platform (namespace, image, MLflow, checkpoint claim)."""
    gpus_available: bool
    """Whether the cluster has nvidia.com/gpu nodes; without them a GPU request is an InvalidSpec."""
    health_port: int
    """Port of the liveness endpoint (/healthz)."""
    metrics_port: int
    """Port of the Prometheus metrics (/metrics)."""
    listen_host: str = "0.0.0.0"
    """Address the health and metrics endpoints bind (LISTEN_HOST): every interface in a pod, where the kubelet
    probes the pod IP; 127.0.0.1 when the operator runs on a developer's machine or in the tests."""
    interval_s: float
    """How often each TrainingJob is reconciled besides on its own changes (its children are polled)."""
    restart_backoff_s: float
    """First whole-gang restart delay; doubles with each restart, at most 300 s."""
    finished_follow_s: float = 60.0
    """How long after it finished a TrainingJob is still reconciled on the timer (FINISHED_FOLLOW_S)."""
    trainer_pod_annotations: tuple[tuple[str, str], ...] = ()
    """Annotations of every training pod, under the TrainingJob's own spec.podAnnotations (which win): the
    prometheus.io/* scrape annotations with SCRAPE_ANNOTATIONS=true, else none."""


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    problems = [
        f"{k} is required" for k in (ENV_WATCH_NAMESPACE, ENV_PLATFORM_IMAGE, ENV_CHECKPOINT_CLAIM) if not env.get(k)
    ]

    def number(key: str, default: float) -> float:
        try:
            value = float(env.get(key) or default)
        except ValueError:
            value = -1
        if value <= 0:
            problems.append(f"{key}={env.get(key)!r}: must be a number > 0")
        return value

    def flag(key: str) -> bool:
        value = (env.get(key) or "false").lower()
        if value not in ("true", "false"):
            problems.append(f"{key}={value!r}: true or false")
        return value == "true"

    access_mode = env.get(ENV_CHECKPOINT_ACCESS_MODE) or "ReadWriteOnce"
    if access_mode not in CHECKPOINT_ACCESS_MODES:
        problems.append(f"{ENV_CHECKPOINT_ACCESS_MODE}={access_mode!r}: one of {', '.join(CHECKPOINT_ACCESS_MODES)}")
    settings = Settings(
        platform=Platform(
            namespace=env.get(ENV_WATCH_NAMESPACE, ""),
            image=env.get(ENV_PLATFORM_IMAGE, ""),
            image_pull_policy=env.get(ENV_IMAGE_PULL_POLICY) or "IfNotPresent",
            tracking_uri=env.get(ENV_MLFLOW_TRACKING_URI, ""),
            checkpoint_claim=env.get(ENV_CHECKPOINT_CLAIM, ""),
            checkpoint_sub_path=env.get(ENV_CHECKPOINT_SUB_PATH) or None,
            service_account_name=env.get(ENV_TRAINER_SERVICE_ACCOUNT) or "default",
            checkpoint_access_mode=access_mode,
        ),
        gpus_available=flag(ENV_GPUS_AVAILABLE),
        health_port=int(number(ENV_HEALTH_PORT, HEALTH_PORT)),
        metrics_port=int(number(ENV_METRICS_PORT, METRICS_PORT)),
        listen_host=env.get("LISTEN_HOST") or "0.0.0.0",
        interval_s=number(ENV_RECONCILE_INTERVAL_S, 5.0),
        restart_backoff_s=number(ENV_RESTART_BACKOFF_S, 10.0),
        finished_follow_s=number(ENV_FINISHED_FOLLOW_S, 60.0),
        trainer_pod_annotations=(
            tuple(scrape_annotations(TRAINER_TARGET).items()) if flag(ENV_SCRAPE_ANNOTATIONS) else ()
        ),
    )
    if problems:
        raise SettingsError("; ".join(problems))
    return settings
