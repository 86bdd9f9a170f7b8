"""Request and response bodies of the API, shared by the server and the CLI."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    FAILED_SETUP = "failed_setup"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (TaskStatus.PENDING, TaskStatus.RUNNING)


class SubmitRequest(BaseModel):
    task_yaml: str = Field(min_length=1, max_length=65536)
    """The task YAML's text."""
    envs: dict[str, str] = Field(default_factory=dict)
    """Overrides of the task's `envs` (the CLI's --env K=V)."""


class SubmitResponse(BaseModel):
    task_id: str
    status: TaskStatus
    message: str
    ignored: list[str] = Field(default_factory=list)
    """Accepted fields the cluster cannot honour (e.g. resources.use_spot)."""


class NodeInfo(BaseModel):
    index: int
    pod: str
    phase: str


class TaskInfo(BaseModel):
    task_id: str
    name: str
    user: str
    status: TaskStatus
    message: str = ""
    """Why a task is pending or failed."""
    num_nodes: int
    submitted_at: str
    finished_at: str = ""
    cpus: str = ""
    memory: str = ""
    accelerators: str = ""
    image: str = ""
    volumes: dict[str, str] = Field(default_factory=dict)
    """Mount path -> volume name."""
    ignored: list[str] = Field(default_factory=list)
    nodes: list[NodeInfo] = Field(default_factory=list)
    namespace: str = ""
    """The namespace of the task's objects (its user's team's)."""
    queue: str = ""
    """The Kueue LocalQueue the task was submitted to; empty: none."""
    queue_position: int | None = None
    """1-based place in that queue while Kueue holds the task; null when not queued or Kueue's visibility API does
    not answer."""
    waiting_reason: str = ""
    """Why Kueue holds the task (its Workload's QuotaReserved reason and message)."""


class TaskList(BaseModel):
    tasks: list[TaskInfo]


class QueueView(BaseModel):
    """The caller's tasks that Kueue holds, first in line first."""

    team: str
    namespace: str
    queue: str
    """The team's LocalQueue; empty: the team has none and tasks never wait in a queue."""
    tasks: list[TaskInfo]


class StopResponse(BaseModel):
    stopped: list[str]
    """Task ids that were pending or running and are now cancelled."""


class VolumeCreate(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
    size: str = Field(min_length=1, max_length=32)
    """A Kubernetes quantity (`10Gi`) or a number of GiB."""
    storage_class: str | None = Field(default=None, max_length=253)
    access_modes: list[str] = Field(default_factory=lambda: ["ReadWriteOnce"], min_length=1, max_length=3)


class VolumeInfo(BaseModel):
    volume_id: str
    name: str
    user: str
    size: str
    storage_class: str = ""
    access_modes: list[str]
    phase: str = ""
    in_use_by: list[str] = Field(default_factory=list)
    """Ids of active tasks that mount it."""


class VolumeList(BaseModel):
    volumes: list[VolumeInfo]


class WhoAmI(BaseModel):
    user: str
    groups: list[str] = Field(default_factory=list)
    all_users_allowed: bool = False
    team: str = ""
    """The caller's team (empty: none; every task request is then refused with 403)."""
    namespace: str = ""
    """Where the caller's tasks and volumes live."""
    queue: str = ""


class FieldProblem(BaseModel):
    field: str
    message: str
