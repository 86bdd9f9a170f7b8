"""The operator's settings, from its environment (names in workloads.trainingjob, so the Pulumi program sets the
same ones). See docs/operator.md for each.

`Settings` is a pydantic model whose fields are read from the variables their validation aliases name; an empty
variable counts as unset. `from_env` turns pydantic's errors into `SettingsError` naming each variable."""

import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

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
ENV_LISTEN_HOST = "LISTEN_HOST"


class SettingsError(ValueError):
    """A missing or malformed setting; the message names the variable."""


def _flag(value: object) -> object:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise PydanticCustomError("setting", "true or false")


def _access_mode(value: str) -> str:
    if value not in CHECKPOINT_ACCESS_MODES:
        raise PydanticCustomError("setting", f"one of {', '.join(CHECKPOINT_ACCESS_MODES)}")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
Seconds = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(gt=0)]
_WHY = {"int_parsing": "must be an integer > 0", "int_from_float": "must be an integer > 0"}


class Settings(BaseModel):
    """What the operator reads from its environment, and what it derives from that."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    namespace: str = Field(validation_alias=ENV_WATCH_NAMESPACE)
    """The namespace the operator watches and creates every TrainingJob's children in."""
    image: str = Field(validation_alias=ENV_PLATFORM_IMAGE)
    """The platform image training pods run when the TrainingJob names none."""
    checkpoint_claim: str = Field(validation_alias=ENV_CHECKPOINT_CLAIM)
    """The PersistentVolumeClaim of the checkpoint volume."""
    image_pull_policy: str = Field("IfNotPresent", validation_alias=ENV_IMAGE_PULL_POLICY)
    """imagePullPolicy of the training pods."""
    tracking_uri: str = Field("", validation_alias=ENV_MLFLOW_TRACKING_URI)
    """MLflow, for the training pods and for the operator's progress reads; empty = none."""
    checkpoint_sub_path: str | None = Field(None, validation_alias=ENV_CHECKPOINT_SUB_PATH)
    """Directory of the checkpoint volume mounted into training pods; None = its root."""
    service_account_name: str = Field("default", validation_alias=ENV_TRAINER_SERVICE_ACCOUNT)
    """Service account of the training pods."""
    checkpoint_access_mode: Annotated[str, AfterValidator(_access_mode)] = Field(
        "ReadWriteOnce", validation_alias=ENV_CHECKPOINT_ACCESS_MODE
    )
    """Access mode of the checkpoint claim (ReadWriteOnce: a multi-node run's pods must share a node)."""
    gpus_available: Flag = Field(False, validation_alias=ENV_GPUS_AVAILABLE)
    """Whether the cluster has nvidia.com/gpu nodes; without them a GPU request is an InvalidSpec."""
    health_port: Port = Field(HEALTH_PORT, validation_alias=ENV_HEALTH_PORT)
    """Port of the liveness endpoint (/healthz)."""
    metrics_port: Port = Field(METRICS_PORT, validation_alias=ENV_METRICS_PORT)
    """Port of the Prometheus metrics (/metrics)."""
    listen_host: str = Field("0.0.0.0", validation_alias=ENV_LISTEN_HOST)
    """Address the health and metrics endpoints bind: every interface in a pod, where the kubelet probes the pod
    IP; 127.0.0.1 when the operator runs on a developer's machine or in the tests."""
    interval_s: Seconds = Field(5.0, validation_alias=ENV_RECONCILE_INTERVAL_S)
    """How often each TrainingJob is reconciled besides on its own changes (its children are polled)."""
    restart_backoff_s: Seconds = Field(10.0, validation_alias=ENV_RESTART_BACKOFF_S)
    """First whole-gang restart delay; doubles with each restart, at most 300 s."""
    finished_follow_s: Seconds = Field(60.0, validation_alias=ENV_FINISHED_FOLLOW_S)
    """How long after it finished a TrainingJob is still reconciled on the timer."""
    scrape_annotations: Flag = Field(False, validation_alias=ENV_SCRAPE_ANNOTATIONS)
    """Whether training pods get the prometheus.io/* scrape annotations (see trainer_pod_annotations)."""

    @property
    def platform(self) -> Platform:
        """What every TrainingJob's children get from the platform (namespace, image, MLflow, checkpoint claim)."""
        return Platform(
            namespace=self.namespace,
            image=self.image,
            image_pull_policy=self.image_pull_policy,
            tracking_uri=self.tracking_uri,
            checkpoint_claim=self.checkpoint_claim,
            checkpoint_sub_path=self.checkpoint_sub_path,
            service_account_name=self.service_account_name,
            checkpoint_access_mode=self.checkpoint_access_mode,
        )

    @property
    def trainer_pod_annotations(self) -> tuple[tuple[str, str], ...]:
        """Annotations of every training pod, under the TrainingJob's own spec.podAnnotations (which win): the
        prometheus.io/* scrape annotations with SCRAPE_ANNOTATIONS=true, else none."""
        return tuple(scrape_annotations(TRAINER_TARGET).items()) if self.scrape_annotations else ()


def _describe(error: ErrorDetails) -> str:
    variable = str(error["loc"][0])
    if error["type"] == "missing":
        return f"{variable} is required"
    if error["type"] == "setting":
        return f"{variable}={error['input']!r}: {error['msg']}"
    return f"{variable}={error['input']!r}: {_WHY.get(error['type'], 'must be a number > 0')}"


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from `env` (default: this process's environment); SettingsError lists every problem."""
    variables: dict[str, Any] = {key: value for key, value in (os.environ if env is None else env).items() if value}
    try:
        return Settings.model_validate(variables)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(error) for error in exc.errors())) from None
