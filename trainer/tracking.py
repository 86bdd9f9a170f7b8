"""Experiment tracking behind a small interface: `NullLogger` (tracking off) and `MlflowLogger`.

Only rank 0 logs. `MlflowLogger` resumes the run whose id the checkpoint recorded, logs metrics with explicit
steps, and at the end logs the saved model as an MLflow pyfunc model (`tinygpt.pyfunc`) under artifact path
`model`, registers it as a new version of `tracking.model_name` and moves `tracking.alias` to it when its
validation loss is no worse than the current holder's. mlflow is imported only when tracking is on.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from tinygpt.pyfunc import save_pyfunc
from trainer.config import TrackingConfig
from workloads.contracts import CHECKPOINT_PATH_TAG, CHECKPOINT_STEP_TAG, MODEL_VERSION_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODEL_ARTIFACT_PATH = "model"
# Run tags written by publish_model; they also make publishing idempotent when a finished run is relaunched.
TAG_VERSION = MODEL_VERSION_TAG  # the operator reads it
TAG_STEP = "registered_model_step"
TAG_DECISION = "alias_decision"
TAG_REASON = "alias_decision_reason"
VAL_LOSS_TAG = "val_loss"


@dataclass(frozen=True, kw_only=True, slots=True)
class Published:
    """Where the final model went."""

    version: str
    """New model version of `tracking.model_name`."""
    model_uri: str
    """`models:/<name>/<version>`."""
    alias_moved: bool
    """Whether `tracking.alias` now points at this version."""
    reason: str
    """Why the alias moved or stayed."""


class RunLogger(Protocol):
    """What the training loop needs from a tracker."""

    @property
    def run_id(self) -> str | None: ...

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def publish_model(self, model_dir: Path, *, step: int, val_loss: float) -> Published | None: ...

    def log_checkpoint(self, path: Path, step: int) -> None: ...

    def finish(self, status: str) -> None: ...


class NullLogger:
    """Tracking off: every call does nothing."""

    @property
    def run_id(self) -> str | None:
        return None

    def log_params(self, params: Mapping[str, object]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def publish_model(self, model_dir: Path, *, step: int, val_loss: float) -> Published | None:
        return None

    def log_checkpoint(self, path: Path, step: int) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


def _is_error(exc: Exception, *codes: str) -> bool:
    return getattr(exc, "error_code", None) in codes


class MlflowLogger:
    """Logs one MLflow run; resumes `resume_run_id` unless that run already published a different model."""

    def __init__(self, config: TrackingConfig, resume_run_id: str | None = None) -> None:
        from mlflow import MlflowClient

        self.config = config
        self.client: MlflowClient = MlflowClient(tracking_uri=config.uri, registry_uri=config.uri)
        self.resumed = False
        run_id = self._resumable(resume_run_id)
        if run_id is None:
            experiment_id = self._experiment_id()
            tags = {"mlflow.source.name": "trainer", "mlflow.source.type": "JOB", **config.tags}
            if resume_run_id:
                tags["continues_run"] = resume_run_id
            run_id = self.client.create_run(experiment_id, tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            for key, value in config.tags.items():
                self.client.set_tag(run_id, key, value)
            self.resumed = True
        self._run_id: str = run_id

    def _resumable(self, run_id: str | None) -> str | None:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if _is_error(exc, "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # a different tracking server, or the run was deleted: start afresh
            raise
        if run.info.lifecycle_stage != "active":
            return None
        return run_id

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.config.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self.client.create_experiment(self.config.experiment))
        except MlflowException as exc:  # created by a concurrent run in between
            if not _is_error(exc, "RESOURCE_ALREADY_EXISTS"):
                raise
            found = self.client.get_experiment_by_name(self.config.experiment)
            assert found is not None
            return str(found.experiment_id)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log params on a new run; a resumed run keeps the params it started with."""
        from mlflow.entities import Param

        if self.resumed:
            return
        self.client.log_batch(self._run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self._run_id, metrics=batch)

    def publish_model(self, model_dir: Path, *, step: int, val_loss: float) -> Published:
        """Log the saved model, register a new version and decide whether the alias moves to it."""
        name, alias = self.config.model_name, self.config.alias
        tags = self.client.get_run(self._run_id).data.tags
        if tags.get(TAG_STEP) == str(step) and TAG_VERSION in tags:
            version = tags[TAG_VERSION]  # this run already published this model (a relaunch after the end)
            return Published(
                version=version, model_uri=f"models:/{name}/{version}",
                alias_moved=tags.get(TAG_DECISION) == "promoted", reason=tags.get(TAG_REASON, ""),
            )
        with tempfile.TemporaryDirectory(prefix="pyfunc-") as staging:
            local = save_pyfunc(model_dir, Path(staging) / MODEL_ARTIFACT_PATH)
            self.client.log_artifacts(self._run_id, str(local), MODEL_ARTIFACT_PATH)
        self._ensure_registered_model(name)
        artifact_uri = self.client.get_run(self._run_id).info.artifact_uri
        version = self.client.create_model_version(
            name,
            source=f"{artifact_uri}/{MODEL_ARTIFACT_PATH}",
            run_id=self._run_id,
            tags={VAL_LOSS_TAG: repr(val_loss), "step": str(step)},
        ).version
        self._wait_until_ready(name, str(version))
        moved, reason = self._decide_alias(name, alias, str(version), val_loss)
        if moved:
            self.client.set_registered_model_alias(name, alias, str(version))
        decision = {
            TAG_VERSION: str(version), TAG_STEP: str(step),
            TAG_DECISION: "promoted" if moved else "kept", TAG_REASON: reason,
        }
        for key, value in decision.items():
            self.client.set_tag(self._run_id, key, value)
        return Published(version=str(version), model_uri=f"models:/{name}/{version}", alias_moved=moved,
                         reason=reason)

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if not _is_error(exc, "RESOURCE_ALREADY_EXISTS"):
                raise

    def _wait_until_ready(self, name: str, version: str, timeout_s: float = 120.0) -> None:
        poll = Retrying(
            retry=retry_if_result(lambda status: status == "PENDING_REGISTRATION"),
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(0.5),
        )
        try:
            status = poll(lambda: self.client.get_model_version(name, version).status)
        except RetryError:
            raise RuntimeError(f"model version {name}/{version} still pending after {timeout_s:.0f} s") from None
        if status != "READY":
            raise RuntimeError(f"model version {name}/{version} failed to register: {status}")

    def _decide_alias(self, name: str, alias: str, version: str, val_loss: float) -> tuple[bool, str]:
        from mlflow.exceptions import MlflowException

        try:
            current = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if not _is_error(exc, "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            return True, f"no version held alias '{alias}'"
        held = current.tags.get(VAL_LOSS_TAG)
        if held is None:
            return True, f"version {current.version} holding '{alias}' has no {VAL_LOSS_TAG} tag"
        if val_loss <= float(held):
            return True, f"val_loss {val_loss:.4f} <= {float(held):.4f} of version {current.version}"
        return False, f"val_loss {val_loss:.4f} > {float(held):.4f} of version {current.version}, which keeps '{alias}'"

    def log_checkpoint(self, path: Path, step: int) -> None:
        """The newest checkpoint, as run tags (what the TrainingJob operator shows as latestCheckpoint)."""
        self.client.set_tag(self._run_id, CHECKPOINT_PATH_TAG, str(path))
        self.client.set_tag(self._run_id, CHECKPOINT_STEP_TAG, str(step))

    def finish(self, status: str) -> None:
        self.client.set_terminated(self._run_id, status=status)


def make_logger(config: TrackingConfig, resume_run_id: str | None) -> RunLogger:
    """MlflowLogger when `tracking.uri` is set, else NullLogger."""
    return MlflowLogger(config, resume_run_id) if config.uri else NullLogger()
