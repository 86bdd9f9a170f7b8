"""The training configuration (train.yaml): typed sections, loading, `--set` overrides and validation.

Every problem is a `ConfigError` naming the key and what is allowed; the CLI turns it into exit code 2 so that a
Kubernetes Job does not retry a run that can never succeed. This module does not import torch, so the launcher
can validate a config before it spawns any rank.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tinygpt.config import VOCAB_FROM_TOKENIZER, GPTConfig
from workloads.contracts import TRAINER_METRICS_PORT

PYTHON_DOCS = "python-docs"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("auto", "on", "off")
BACKENDS = ("auto", "gloo", "nccl")
DISCOVERY = ("dns", "kubernetes-api")
# MLflow rejects aliases that look like version references ("v3") or the reserved "latest".
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_VERSION_LIKE = re.compile(r"^[vV]\d+$")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class ConfigError(ValueError):
    """A configuration problem that no retry can fix; the message names the key(s) and what is allowed."""


def _check(problems: list[str], ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        problems.append(f"{key}={value!r}: {allowed}")


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """Where the text comes from and how it is split."""

    source: str = PYTHON_DOCS
    """`python-docs` (the help texts that ship with Python in `pydoc_data.topics`) or a path to a UTF-8 file."""
    val_fraction: float = 0.1
    """Fraction of the corpus, taken from its end, held out for validation; in (0, 0.5]."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(problems, bool(self.source), "data.source", self.source, f"'{PYTHON_DOCS}' or a file path")
        _check(problems, 0.0 < self.val_fraction <= 0.5, "data.val_fraction", self.val_fraction, "in (0, 0.5]")
        _raise(problems)


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Optimisation, evaluation and per-process settings."""

    batch_size: int = 12
    """GLOBAL batch size in sequences per step, split evenly across ranks (must divide by the world size)."""
    max_steps: int = 2000
    """Optimizer steps to train for (>= 1); a resumed run continues up to this step."""
    lr: float = 1e-3
    """Peak learning rate, reached after train.warmup_steps (> 0)."""
    min_lr: float = 1e-4
    """Learning rate at train.max_steps after cosine decay; in [0, train.lr]."""
    warmup_steps: int = 100
    """Steps of linear warmup from 0 to train.lr (>= 0)."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices and embeddings only (>= 0)."""
    beta1: float = 0.9
    """AdamW beta1, in [0, 1)."""
    beta2: float = 0.99
    """AdamW beta2, in [0, 1); 0.99 suits the small batches of character models."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    eval_every: int = 500
    """Estimate the validation loss every this many steps (and always at the end); 0 = only at the end."""
    eval_iters: int = 20
    """Global batches the validation loss is averaged over (>= 1); the same batches every time."""
    seed: int = 1337
    """Seed of the initial weights, the data sampling and dropout (>= 0)."""
    threads_per_rank: int = 0
    """torch intra-op threads per rank; 0 = the CPUs this process may use divided by the ranks on the node."""
    pin_cpus: bool = True
    """When a machine runs several ranks, every CPU it sees is the job's (no smaller CPU quota) and there are
    enough, each rank (its threads, gloo's included) runs on CPUs of its own, as pods with whole CPUs do under the
    kubelet's static CPU manager."""
    device: str = "auto"
    """`auto` (CUDA when available, else CPU), `cpu` or `cuda`."""
    log_every: int = 10
    """Log training metrics every this many steps (>= 1); the loss reaches the host only on these steps."""
    precision: str = "auto"
    """Compute precision: `auto` (bf16 autocast on a GPU that supports it, else fp32), `fp32` or `bf16` (autocast;
    master weights and optimizer state stay fp32)."""
    compile: str = "auto"
    """`torch.compile` the model: `auto` (on CUDA only: on a CPU its compile time exceeds what it saves in a short
    run, docs/benchmarks.md), `on` or `off`."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        for key in ("batch_size", "max_steps", "eval_iters", "log_every"):
            value = getattr(self, key)
            _check(problems, value >= 1, f"train.{key}", value, "must be an integer >= 1")
        for key in ("warmup_steps", "eval_every", "seed", "threads_per_rank"):
            value = getattr(self, key)
            _check(problems, value >= 0, f"train.{key}", value, "must be an integer >= 0")
        _check(problems, self.lr > 0, "train.lr", self.lr, "must be > 0")
        _check(problems, 0 <= self.min_lr <= self.lr, "train.min_lr", self.min_lr, f"must be in [0, {self.lr}]")
        _check(problems, self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            _check(problems, 0 <= value < 1, f"train.{key}", value, "must be in [0, 1)")
        _check(problems, self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "must be >= 0 (0 = off)")
        _check(problems, self.device in DEVICES, "train.device", self.device, f"allowed: {', '.join(DEVICES)}")
        _check(
            problems, self.precision in PRECISIONS, "train.precision", self.precision,
            f"allowed: {', '.join(PRECISIONS)}",
        )
        _check(
            problems, self.compile in COMPILE_MODES, "train.compile", self.compile,
            f"allowed: {', '.join(COMPILE_MODES)}",
        )
        _raise(problems)


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """Where and how often rank 0 writes `step-NNNNNNNN` checkpoints."""

    dir: str = "checkpoints"
    """Directory holding the `step-*` checkpoints; training resumes from the newest complete one."""
    every: int = 500
    """Write a checkpoint every this many steps (and always at the end and on SIGTERM); 0 = only then."""
    keep: int = 2
    """How many of the newest complete checkpoints to keep (>= 1)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(problems, bool(self.dir), "checkpoint.dir", self.dir, "must be a directory path")
        _check(problems, self.every >= 0, "checkpoint.every", self.every, "must be an integer >= 0")
        _check(problems, self.keep >= 1, "checkpoint.keep", self.keep, "must be an integer >= 1")
        _raise(problems)


@dataclass(kw_only=True, slots=True)
class TrackingConfig:
    """MLflow tracking and model registry (rank 0 only)."""

    uri: str = ""
    """MLflow tracking URI; empty = tracking off, unless MLFLOW_TRACKING_URI is set in the environment."""
    experiment: str = "ml-platform"
    """MLflow experiment the run is logged under (created if missing)."""
    model_name: str = "tiny-gpt"
    """Registered model that each finished run adds a version to."""
    alias: str = "champion"
    """Alias moved to the new version when its val_loss is no worse than the current holder's."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra tags on the MLflow run (the TrainingJob operator finds its runs by one)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(problems, bool(self.experiment), "tracking.experiment", self.experiment, "must not be empty")
        _check(problems, bool(self.model_name), "tracking.model_name", self.model_name, "must not be empty")
        ok = bool(_ALIAS.match(self.alias)) and not _VERSION_LIKE.match(self.alias) and self.alias != "latest"
        _check(
            problems, ok, "tracking.alias", self.alias,
            "letters, digits, '_' and '-', not starting with a digit or '-', not 'latest' or 'v<number>'",
        )
        _raise(problems)


@dataclass(kw_only=True, slots=True)
class DistributedConfig:
    """How ranks find each other and talk (see docs/trainer.md for the environment contract)."""

    backend: str = "auto"
    """Process-group backend: `auto` (nccl on CUDA, else gloo), `gloo` or `nccl`."""
    timeout_s: float = 600.0
    """Timeout of every collective; a rank stuck longer than this fails instead of hanging (> 0)."""
    rendezvous_timeout_s: float = 900.0
    """How long a non-zero rank waits for rank 0's address to resolve and its port to accept (> 0)."""
    discovery: str = "dns"
    """How an Indexed Job pod finds rank 0 when MASTER_ADDR is unset: `dns` or `kubernetes-api`."""
    bucket_cap_mb: float = 25.0
    """Size of DDP's gradient buckets: a bucket is all-reduced as soon as its gradients are ready, so smaller
    buckets overlap more communication with the rest of the backward pass (> 0)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(
            problems, self.backend in BACKENDS, "distributed.backend", self.backend,
            f"allowed: {', '.join(BACKENDS)}",
        )
        _check(problems, self.timeout_s > 0, "distributed.timeout_s", self.timeout_s, "must be > 0")
        _check(problems, self.bucket_cap_mb > 0, "distributed.bucket_cap_mb", self.bucket_cap_mb, "must be > 0")
        _check(
            problems, self.rendezvous_timeout_s > 0, "distributed.rendezvous_timeout_s",
            self.rendezvous_timeout_s, "must be > 0",
        )
        _check(
            problems, self.discovery in DISCOVERY, "distributed.discovery", self.discovery,
            f"allowed: {', '.join(DISCOVERY)}",
        )
        _raise(problems)


@dataclass(kw_only=True, slots=True)
class MetricsConfig:
    """The rank's Prometheus endpoint (docs/observability.md)."""

    port: int = TRAINER_METRICS_PORT
    """Port of rank 0's /metrics; rank r listens on port + r % (ranks per machine); 0 = no endpoint."""
    host: str = "127.0.0.1"
    """Address the endpoint binds: loopback for local runs; the stack sets 0.0.0.0 so Prometheus can scrape pods."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check(problems, 0 <= self.port <= 65535, "metrics.port", self.port, "must be in [0, 65535] (0 = off)")
        _check(problems, bool(self.host), "metrics.host", self.host, "an address to bind, e.g. 127.0.0.1 or 0.0.0.0")
        _raise(problems)


@dataclass(kw_only=True, slots=True)
class TrainerConfig:
    """The whole train.yaml: one mapping per section."""

    data: DataConfig = field(default_factory=DataConfig)
    """Corpus and split."""
    model: GPTConfig = field(default_factory=GPTConfig)
    """Network shape (the model package's own config; its vocab_size comes from the tokenizer, not from here)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and evaluation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint location and cadence."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Process group and rank-0 discovery."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus endpoint."""

    def to_flat_dict(self) -> dict[str, Any]:
        """`{"section.key": value}` for every key; what is logged as MLflow params."""
        return {
            f"{section.name}.{key}": value
            for section in dataclasses.fields(self)
            for key, value in dataclasses.asdict(getattr(self, section.name)).items()
            if key in _field_types(type(getattr(self, section.name)))
        }


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": GPTConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "tracking": TrackingConfig,
    "distributed": DistributedConfig,
    "metrics": MetricsConfig,
}


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


def _field_types(section_cls: type) -> dict[str, type]:
    """The keys a config file may set in a section, with their types."""
    return {
        f.name: {"int": int, "float": float, "str": str, "bool": bool, "dict[str, str]": dict}[str(f.type)]
        for f in dataclasses.fields(section_cls)
        if not (section_cls is GPTConfig and f.name == VOCAB_FROM_TOKENIZER)
    }


def _coerce(key: str, value: object, kind: type) -> object:
    """Convert a YAML or `--set` value to the field's type, or raise ConfigError naming `key`."""
    if kind is dict:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in value.items()
        ):
            raise ConfigError(f"{key}={value!r}: must be a mapping of names to strings (in the config file)")
        return {k: str(v) for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise ConfigError(f"{key}={value!r}: must be true or false")
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r}: must be a string")
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{key}={value!r}: must be {'an integer' if kind is int else 'a number'}")
    if kind is float:
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: must be a number") from None
    # int: YAML may hand us 12.0 (numbers pass through Pulumi as floats); accept integral values only.
    number: object = value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(f"{key}={value!r}: must be an integer") from None
    if isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(f"{key}={value!r}: must be an integer")
        return int(number)
    if isinstance(number, int):
        return number
    raise ConfigError(f"{key}={value!r}: must be an integer")


def parse_override(text: str) -> tuple[str, str, str]:
    """Split `section.key=value` into its parts; raises ConfigError for anything else."""
    dotted, sep, value = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.max_steps=100")
    return section, key, value


def build_config(
    document: Mapping[str, Any] | None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> TrainerConfig:
    """Validate a parsed train.yaml mapping plus `--set` overrides; reports every problem at once."""
    environ = os.environ if environ is None else environ
    document = {} if document is None else document
    if not isinstance(document, Mapping):
        raise ConfigError(f"the config file must be a mapping of sections ({', '.join(SECTIONS)})")
    problems: list[str] = []
    raw: dict[str, dict[str, object]] = {name: {} for name in SECTIONS}
    for section, values in document.items():
        if section not in SECTIONS:
            problems.append(f"{section}: unknown section; allowed: {', '.join(SECTIONS)}")
            continue
        if values is None:
            continue
        if not isinstance(values, Mapping):
            problems.append(f"{section}: must be a mapping of keys")
            continue
        raw[section].update(values)
    for text in overrides:
        try:
            section, key, value = parse_override(text)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if section not in SECTIONS:
            problems.append(f"{section}.{key}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
            continue
        raw[section][key] = value

    sections: dict[str, object] = {}
    for name, cls in SECTIONS.items():
        types = _field_types(cls)
        kwargs: dict[str, object] = {}
        for field_name, field_value in raw[name].items():
            if field_name not in types:
                problems.append(f"{name}.{field_name}: unknown key; allowed: {', '.join(types)}")
                continue
            try:
                kwargs[field_name] = _coerce(f"{name}.{field_name}", field_value, types[field_name])
            except ConfigError as exc:
                problems.append(str(exc))
        if name == "tracking" and not kwargs.get("uri"):
            kwargs["uri"] = environ.get("MLFLOW_TRACKING_URI", "")
        try:
            sections[name] = cls(**kwargs)
        except ValueError as exc:  # ConfigError, or GPTConfig's ValueError that names its model.* keys too
            problems.append(str(exc))
    _raise(problems)
    return TrainerConfig(**sections)  # type: ignore[arg-type]


def load_config(
    path: Path | None, overrides: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> TrainerConfig:
    """Read train.yaml at `path` (None = all defaults) and apply `--set` overrides."""
    document = None
    if path is not None:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    return build_config(document, overrides, environ)
