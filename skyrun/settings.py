"""Server settings: every knob has a default and a `SKYRUN_` environment variable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workloads.task import LAUNCHER_HTTP_PORT, LAUNCHER_METRICS_PORT

ANY_USER = "*"


class Team(BaseModel):
    """One team of a shared cluster: its users' tasks, volumes, records and logs live in its own namespace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=63)
    """The team's name (shown; the stack's `teams` key)."""
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """The team's namespace (the stack creates it, with the anchor ConfigMap and the launcher's RoleBinding)."""
    users: tuple[str, ...] = Field(min_length=1)
    """Exact user names (`system:serviceaccount:ns:sa`, OIDC names); `*`: every user listed in no other team."""
    queue: str = ""
    """The Kueue LocalQueue of the team's tasks in its namespace; empty: no Kueue (tasks start at once)."""


class Settings(BaseSettings):
    """Configuration of one API server process (environment variables are `SKYRUN_<FIELD>`)."""

    model_config = SettingsConfigDict(env_prefix="SKYRUN_", extra="ignore", frozen=True)

    namespace: str = "ml-platform"
    """The platform namespace. Without `teams`, every task, record and volume lives there (local development and a
    single-team cluster); with `teams`, nothing of the users' does, and the launcher needs no rights in it."""
    teams: tuple[Team, ...] = ()
    """JSON list of `{name, namespace, users, queue}`: a user's tasks go to their team's namespace; a user in no
    team is refused (403). A user in two teams, two `*` teams or two teams in one namespace: refused at start."""
    anchor: str = "skyrun-anchor"
    """With `teams`: the ConfigMap in each team namespace (the stack creates it) that owns every task object there,
    so `pulumi destroy` (which deletes it) makes the garbage collector delete the tasks; while it is missing,
    submissions to that team are refused (503). An ownerReference cannot cross namespaces, so the Deployment
    (`deployment`) owns tasks only without `teams`."""
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
    cap_lock_wait_s: float = Field(default=20.0, gt=0)
    """Longest a submission waits for its user's cap lock (skyrun/cap_lock.py) before answering 503."""
    port: int = Field(default=LAUNCHER_HTTP_PORT, ge=1, le=65535)
    """TCP port to listen on."""
    metrics_port: int = Field(default=LAUNCHER_METRICS_PORT, ge=1, le=65535)
    """TCP port of the Prometheus metrics (`/metrics`, no token), on `host` too; apart from the API's port so a
    NetworkPolicy can admit Prometheus to this port alone."""

    @model_validator(mode="after")
    def _one_team_per_user(self) -> Settings:
        problems = []
        seen: dict[str, str] = {}
        for team in self.teams:
            for user in team.users:
                if user in seen and seen[user] != team.name:
                    who = "every other user (`*`)" if user == ANY_USER else f"user {user!r}"
                    problems.append(f"{who} is in teams {seen[user]!r} and {team.name!r}: a user has one team")
                seen.setdefault(user, team.name)
        for key in ("name", "namespace"):
            values = [getattr(t, key) for t in self.teams]
            problems += [f"two teams have {key} {v!r}" for v in sorted({v for v in values if values.count(v) > 1})]
        if problems:
            raise ValueError(f"SKYRUN_TEAMS: {'; '.join(problems)}")
        return self

    def team_of(self, user: str) -> Team | None:
        """The user's team: the one that lists them, else the `*` team, else none. Without `teams`, one implicit
        team in the platform namespace, without a queue."""
        if not self.teams:
            return Team(name="default", namespace=self.namespace, users=(ANY_USER,))
        named = [t for t in self.teams if user in t.users]
        return next(iter(named), None) or next((t for t in self.teams if ANY_USER in t.users), None)

    def namespaces(self) -> list[str]:
        """Every namespace that holds tasks: the teams' (the platform namespace without teams)."""
        return [t.namespace for t in self.teams] or [self.namespace]
