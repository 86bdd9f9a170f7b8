"""Server settings: every knob has a default and a `SKYRUN_` environment variable."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workloads.task import LAUNCHER_HTTP_PORT, LAUNCHER_METRICS_PORT


class Settings(BaseSettings):
    """Configuration of one API server process (environment variables are `SKYRUN_<FIELD>`)."""

    model_config = SettingsConfigDict(env_prefix="SKYRUN_", extra="ignore", frozen=True)

    namespace: str = "ml-platform"
    """The platform namespace: every task, record and volume lives there."""
    deployment: str = "skyrun"
    """The launcher's own Deployment in the namespace (infra/launcher.py sets it): every object of a task is owned
    by it, so deleting the launcher deletes every task; while it is missing, submissions are refused (503). Empty:
    tasks are owned by nothing (local development only: they outlive the server)."""
    image: str = "ml-platform:latest"
    """The platform image: a task's image when it names none."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of tasks' images."""
    default_cpus: str = "1"
    """cpu per node of a task that gives none (request = limit)."""
    default_memory: str = "2Gi"
    """memory per node of a task that gives none (request = limit)."""
    max_active_tasks_per_user: int = Field(default=4, ge=1)
    """Most pending or running tasks one user may have; one more is refused with 409."""
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    """Seconds a finished task's Job and pods stay (logs readable); its record and status stay for good."""
    task_service_account: str = "default"
    """ServiceAccount of the tasks' pods (no token is mounted)."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations added to every task pod (JSON in the environment)."""
    audience: str = "skyrun"
    """Audience a bearer token must be bound to (TokenRequest `audiences`); checked by TokenReview."""
    admin_group: str = "skyrun.ml-platform.dev"
    """API group of the SubjectAccessReview that allows --all-users: verb list (or delete) on `tasks` in the
    namespace (grant it with a Role on that group)."""
    dev_trusted_user_header: bool = False
    """LOCAL DEVELOPMENT ONLY: trust the `X-Skyrun-User` header instead of checking a bearer token."""
    reconcile_interval_s: float = Field(default=15.0, gt=0)
    """How often finished tasks' final statuses are written to their records (before the Job's TTL ends)."""
    token_cache_s: float = Field(default=10.0, ge=0)
    """How long one token's TokenReview answer is reused."""
    host: str = "127.0.0.1"
    """Address to bind (`0.0.0.0` in a pod)."""
    port: int = Field(default=LAUNCHER_HTTP_PORT, ge=1, le=65535)
    """TCP port to listen on."""
    metrics_port: int = Field(default=LAUNCHER_METRICS_PORT, ge=1, le=65535)
    """TCP port of the Prometheus metrics (`/metrics`, no token), on `host` too; apart from the API's port so a
    NetworkPolicy can admit Prometheus to this port alone."""
