"""train.yaml of a training run, built once for both of its creators: the stack's own run (infra/program.py, from
stack config) and each attempt of a TrainingJob (workloads/trainingjob.py, created by the operator).

A run's train.yaml is three layers, later ones winning:
1. the platform's defaults, which the user may change: the device (from the GPUs per rank) and torch threads per
   rank (from the cpu limit);
2. the user's sections (`trainSettings` on the stack, `spec.train` of a TrainingJob);
3. what the platform decides (`Decisions`): the keys of `OWNED_KEYS`. A user who sets one of them is refused with
   the field to set instead (`owned_key_problem`), on the stack before anything is declared and on a TrainingJob
   as InvalidSpec.

The tracking URI is never written here: every pod gets MLFLOW_TRACKING_URI from its environment (the trainer reads
it when `tracking.uri` is empty), so the URI is defined once, by whoever builds the pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from workloads.pod import Resources
from workloads.training import threads_per_rank

SECTIONS = ("data", "model", "train", "checkpoint", "tracking", "distributed")
"""The train.yaml sections a user may write (docs/trainer.md); `metrics` is the pod builder's."""

Surface = Literal["stack", "trainingjob"]
SURFACE_FIELD = {"stack": "trainSettings", "trainingjob": "spec.train"}
"""Where each surface takes the user's own train.yaml keys."""


@dataclass(frozen=True)
class Owner:
    """Where a user sets a train.yaml key the platform decides, on each surface; None where the user's own
    sections may set it."""

    stack: str | None
    trainingjob: str | None


_MLFLOW = "nothing: the platform's MLflow Service is given to every pod as MLFLOW_TRACKING_URI"
OWNED_KEYS: dict[str, Owner] = {
    "checkpoint.dir": Owner("runName", "spec.checkpointDir"),
    "checkpoint.every": Owner("checkpointEvery", None),
    "train.max_steps": Owner("trainMaxSteps", None),
    "train.batch_size": Owner("trainBatchSize", None),
    "tracking.uri": Owner(_MLFLOW, _MLFLOW),
    "tracking.experiment": Owner("runName", "spec.tracking.experiment"),
    "tracking.model_name": Owner("modelName", "spec.tracking.modelName"),
    "tracking.alias": Owner("modelAlias", "spec.tracking.alias"),
    "tracking.tags": Owner(None, "nothing: the operator tags the run with the resource's uid"),
    "distributed.backend": Owner("trainBackend", "spec.backend"),
    "distributed.discovery": Owner("rankDiscovery", "nothing: the operator's runs find rank 0 by its DNS name"),
}
"""Every train.yaml key the platform decides on some surface: one table for the stack and the operator."""


def owner_field(path: str, surface: Surface) -> str | None:
    """The field that sets `path` ("section.key") on `surface`, or None when the user's sections may set it."""
    owner = OWNED_KEYS.get(path)
    return None if owner is None else getattr(owner, surface)


def owned_key_problem(path: str, surface: Surface) -> str | None:
    """The problem of a user's section setting `path` on `surface` (None when the user may set it)."""
    where = owner_field(path, surface)
    return None if where is None else f"{path} is the platform's; set {where} instead"


def user_sections(sections: Mapping[str, Any], surface: Surface) -> dict[str, Any]:
    """The user's sections without the keys the platform decides on `surface` (for reading a run's shape from a
    spec that may still carry them)."""
    return {
        section: (
            {k: v for k, v in values.items() if owner_field(f"{section}.{k}", surface) is None}
            if isinstance(values, Mapping)
            else values
        )
        for section, values in sections.items()
    }


@dataclass(frozen=True, kw_only=True)
class Decisions:
    """What the platform decides in a run's train.yaml (each a key of OWNED_KEYS); None leaves the trainer's
    default (or the user's value where the surface lets the user set it)."""

    checkpoint_dir: str
    backend: str
    discovery: str
    experiment: str | None = None
    model_name: str | None = None
    alias: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    max_steps: int | None = None
    batch_size: int | None = None
    checkpoint_every: int | None = None

    def values(self) -> dict[str, object]:
        """The decided keys as "section.key" paths, None left out."""
        values: dict[str, object | None] = {
            "checkpoint.dir": self.checkpoint_dir,
            "checkpoint.every": self.checkpoint_every,
            "train.max_steps": self.max_steps,
            "train.batch_size": self.batch_size,
            "tracking.uri": "",
            "tracking.experiment": self.experiment,
            "tracking.model_name": self.model_name,
            "tracking.alias": self.alias,
            "tracking.tags": dict(self.tags) or None,
            "distributed.backend": self.backend,
            "distributed.discovery": self.discovery,
        }
        unknown = set(values) - set(OWNED_KEYS)
        assert not unknown, f"decided keys missing from OWNED_KEYS: {unknown}"
        return {path: value for path, value in values.items() if value is not None}


def defaults(resources: Resources) -> dict[str, object]:
    """The platform's defaults a user may change: one rank per GPU (else cpu) and one torch thread per whole cpu
    of the limit each rank gets."""
    ranks = max(1, resources.gpus)
    return {
        "train.device": "cuda" if resources.gpus else "cpu",
        "train.threads_per_rank": threads_per_rank(resources.cpu_limit, ranks),
    }


def train_yaml(
    user: Mapping[str, Mapping[str, object]], decisions: Decisions, resources: Resources
) -> dict[str, dict[str, object]]:
    """train.yaml of a run: the defaults, then the user's sections, then the decisions (which always win: the
    callers refuse a user's owned key before they get here)."""
    sections: dict[str, dict[str, object]] = {}

    def put(path: str, value: object) -> None:
        section, key = path.split(".", 1)
        sections.setdefault(section, {})[key] = value

    for path, value in defaults(resources).items():
        put(path, value)
    for section, values in user.items():
        for key, value in (values or {}).items():
            put(f"{section}.{key}", value)
    for path, value in decisions.values().items():
        put(path, value)
    return sections
