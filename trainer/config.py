"""The training configuration (train.yaml): typed sections, loading, `--set` overrides and validation.

Every problem is a `ConfigError` naming the key and what is allowed; the CLI turns it into exit code 2 so that a
Kubernetes Job does not retry a run that can never succeed. This module does not import torch, so the launcher
can validate a config before it spawns any rank.

The sections are pydantic models; `build_config` turns pydantic's errors into `section.key=value: why`.
"""

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Self, get_type_hints

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError, PydanticKnownError

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


# Field types. Type errors carry pydantic's error type (mapped to words in _WHY); a rule's error carries the
# converted value, so `timeout_s: 0` is reported as `distributed.timeout_s=0.0` and `--set train.batch_size=-1`
# as `train.batch_size=-1`.
def _rule(why: str, ok: Callable[[Any], bool]) -> AfterValidator:
    def check(value: Any) -> Any:
        if not ok(value):
            raise PydanticCustomError("rule", why, {"value": value})
        return value

    return AfterValidator(check)


def _not_bool(error_type: str) -> BeforeValidator:
    """YAML's `true` is not the number 1 here."""

    def check(value: object) -> object:
        if isinstance(value, bool):
            raise PydanticKnownError(error_type)  # type: ignore[arg-type]
        return value

    return BeforeValidator(check)


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise PydanticKnownError("bool_parsing")


def _tag_value(value: object) -> object:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _choice(choices: tuple[str, ...]) -> AfterValidator:
    return _rule(f"allowed: {', '.join(choices)}", lambda value: value in choices)


Int = Annotated[int, _not_bool("int_type")]
Float = Annotated[float, _not_bool("float_type")]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str, BeforeValidator(lambda value: "" if value is None else value)]
AtLeast1 = Annotated[Int, _rule("must be an integer >= 1", lambda value: value >= 1)]
AtLeast0 = Annotated[Int, _rule("must be an integer >= 0", lambda value: value >= 0)]
Positive = Annotated[Float, _rule("must be > 0", lambda value: value > 0)]
Beta = Annotated[Float, _rule("must be in [0, 1)", lambda value: 0 <= value < 1)]
_WHY = {
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false", "string_type": "must be a string",
    "dict_type": "must be a mapping of names to strings (in the config file)",
}  # fmt: skip


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)


class DataConfig(_Section):
    """Where the text comes from and how it is split."""

    source: Annotated[Text, _rule(f"'{PYTHON_DOCS}' or a file path", bool)] = PYTHON_DOCS
    """`python-docs` (the help texts that ship with Python in `pydoc_data.topics`) or a path to a UTF-8 file."""
    val_fraction: Annotated[Float, _rule("in (0, 0.5]", lambda value: 0 < value <= 0.5)] = 0.1
    """Fraction of the corpus, taken from its end, held out for validation; in (0, 0.5]."""


class TrainConfig(_Section):
    """Optimisation, evaluation and per-process settings."""

    batch_size: AtLeast1 = 12
    """GLOBAL batch size in sequences per step, split evenly across ranks (must divide by the world size)."""
    max_steps: AtLeast1 = 2000
    """Optimizer steps to train for (>= 1); a resumed run continues up to this step."""
    lr: Positive = 1e-3
    """Peak learning rate, reached after train.warmup_steps (> 0)."""
    min_lr: Float = 1e-4
    """Learning rate at train.max_steps after cosine decay; in [0, train.lr]."""
    warmup_steps: AtLeast0 = 100
    """Steps of linear warmup from 0 to train.lr (>= 0)."""
    weight_decay: Annotated[Float, _rule("must be >= 0", lambda value: value >= 0)] = 0.1
    """AdamW weight decay, applied to matrices and embeddings only (>= 0)."""
    beta1: Beta = 0.9
    """AdamW beta1, in [0, 1)."""
    beta2: Beta = 0.99
    """AdamW beta2, in [0, 1); 0.99 suits the small batches of character models."""
    grad_clip: Annotated[Float, _rule("must be >= 0 (0 = off)", lambda value: value >= 0)] = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    eval_every: AtLeast0 = 500
    """Estimate the validation loss every this many steps (and always at the end); 0 = only at the end."""
    eval_iters: AtLeast1 = 20
    """Global batches the validation loss is averaged over (>= 1); the same batches every time."""
    seed: AtLeast0 = 1337
    """Seed of the initial weights, the data sampling and dropout (>= 0)."""
    threads_per_rank: AtLeast0 = 0
    """torch intra-op threads per rank; 0 = the CPUs this process may use divided by the ranks on the node."""
    pin_cpus: Bool = True
    """When a machine runs several ranks, every CPU it sees is the job's (no smaller CPU quota) and there are
    enough, each rank (its threads, gloo's included) runs on CPUs of its own, as pods with whole CPUs do under the
    kubelet's static CPU manager."""
    device: Annotated[Text, _choice(DEVICES)] = "auto"
    """`auto` (CUDA when available, else CPU), `cpu` or `cuda`."""
    log_every: AtLeast1 = 10
    """Log training metrics every this many steps (>= 1); the loss reaches the host only on these steps."""
    precision: Annotated[Text, _choice(PRECISIONS)] = "auto"
    """Compute precision: `auto` (bf16 autocast on a GPU that supports it, else fp32), `fp32` or `bf16` (autocast;
    master weights and optimizer state stay fp32)."""
    compile: Annotated[Text, _choice(COMPILE_MODES)] = "auto"
    """`torch.compile` the model: `auto` (on CUDA only: on a CPU its compile time exceeds what it saves in a short
    run, docs/benchmarks.md), `on` or `off`."""

    @model_validator(mode="after")
    def _min_lr_at_most_lr(self) -> Self:
        if not 0 <= self.min_lr <= self.lr:
            context = {"key": "min_lr", "value": self.min_lr, "lr": self.lr}
            raise PydanticCustomError("rule", "must be in [0, {lr}]", context)
        return self


class CheckpointConfig(_Section):
    """Where and how often rank 0 writes `step-NNNNNNNN` checkpoints."""

    dir: Annotated[Text, _rule("must be a directory path", bool)] = "checkpoints"
    """Directory holding the `step-*` checkpoints; training resumes from the newest complete one."""
    every: AtLeast0 = 500
    """Write a checkpoint every this many steps (and always at the end and on SIGTERM); 0 = only then."""
    keep: AtLeast1 = 2
    """How many of the newest complete checkpoints to keep (>= 1)."""


class TrackingConfig(_Section):
    """MLflow tracking and model registry (rank 0 only)."""

    uri: Text = ""
    """MLflow tracking URI; empty = tracking off, unless MLFLOW_TRACKING_URI is set in the environment."""
    experiment: Annotated[Text, _rule("must not be empty", bool)] = "ml-platform"
    """MLflow experiment the run is logged under (created if missing)."""
    model_name: Annotated[Text, _rule("must not be empty", bool)] = "tiny-gpt"
    """Registered model that each finished run adds a version to."""
    alias: Annotated[
        Text,
        _rule(
            "letters, digits, '_' and '-', not starting with a digit or '-', not 'latest' or 'v<number>'",
            lambda value: bool(_ALIAS.match(value)) and not _VERSION_LIKE.match(value) and value != "latest",
        ),
    ] = "champion"
    """Alias moved to the new version when its val_loss is no worse than the current holder's."""
    tags: dict[str, Annotated[str, BeforeValidator(_tag_value)]] = Field(default_factory=dict)
    """Extra tags on the MLflow run (the TrainingJob operator finds its runs by one)."""


class DistributedConfig(_Section):
    """How ranks find each other and talk (see docs/trainer.md for the environment contract)."""

    backend: Annotated[Text, _choice(BACKENDS)] = "auto"
    """Process-group backend: `auto` (nccl on CUDA, else gloo), `gloo` or `nccl`."""
    timeout_s: Positive = 600.0
    """Timeout of every collective; a rank stuck longer than this fails instead of hanging (> 0)."""
    rendezvous_timeout_s: Positive = 900.0
    """How long a non-zero rank waits for rank 0's address to resolve and its port to accept (> 0)."""
    discovery: Annotated[Text, _choice(DISCOVERY)] = "dns"
    """How an Indexed Job pod finds rank 0 when MASTER_ADDR is unset: `dns` or `kubernetes-api`."""
    bucket_cap_mb: Positive = 25.0
    """Size of DDP's gradient buckets: a bucket is all-reduced as soon as its gradients are ready, so smaller
    buckets overlap more communication with the rest of the backward pass (> 0)."""


class MetricsConfig(_Section):
    """The rank's Prometheus endpoint (docs/observability.md)."""

    port: Annotated[Int, _rule("must be in [0, 65535] (0 = off)", lambda value: 0 <= value <= 65535)] = (
        TRAINER_METRICS_PORT
    )
    """Port of rank 0's /metrics; rank r listens on port + r % (ranks per machine); 0 = no endpoint."""
    host: Annotated[Text, _rule("an address to bind, e.g. 127.0.0.1 or 0.0.0.0", bool)] = "127.0.0.1"
    """Address the endpoint binds: loopback for local runs; the stack sets 0.0.0.0 so Prometheus can scrape pods."""


# The model section is tinygpt's GPTConfig (its own rules in __post_init__); its keys, but vocab_size, come
# from that dataclass's fields, with this module's field types.
_MODEL_TYPES: dict[object, object] = {int: Int, float: Float, bool: Bool}
ModelSection: type[_Section] = create_model(  # type: ignore[call-overload]
    "ModelSection",
    __base__=_Section,
    **{
        f.name: (_MODEL_TYPES[get_type_hints(GPTConfig)[f.name]], f.default)
        for f in dataclasses.fields(GPTConfig)
        if f.name != VOCAB_FROM_TOKENIZER
    },
)


def _gpt_config(value: object) -> object:
    if isinstance(value, GPTConfig):
        return value
    return GPTConfig(**ModelSection.model_validate(value).model_dump())  # its ValueError names model.<key>


class TrainerConfig(_Section):
    """The whole train.yaml: one mapping per section."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Corpus and split."""
    model: Annotated[GPTConfig, BeforeValidator(_gpt_config)] = Field(default_factory=GPTConfig)
    """Network shape (the model package's own config; its vocab_size comes from the tokenizer, not from here)."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation and evaluation."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoint location and cadence."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Process group and rank-0 discovery."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus endpoint."""

    def to_flat_dict(self) -> dict[str, Any]:
        """`{"section.key": value}` for every key; what is logged as MLflow params."""
        sections = self.model_dump(exclude={"model": {VOCAB_FROM_TOKENIZER}})
        return {f"{name}.{key}": value for name, section in sections.items() for key, value in section.items()}


SECTIONS: dict[str, type[_Section]] = {
    name: ModelSection if name == "model" else info.annotation  # type: ignore[misc]
    for name, info in TrainerConfig.model_fields.items()
}


def _describe(error: ErrorDetails) -> str:
    """One pydantic error as `section.key=value: why`."""
    ctx = error.get("ctx", {})
    path = ".".join([*map(str, error["loc"]), *([ctx["key"]] if "key" in ctx else [])])
    kind = error["type"]
    if kind == "value_error":  # GPTConfig's own, already `model.key=value: why`
        return str(ctx["error"])
    if kind == "extra_forbidden" and len(error["loc"]) == 1:
        return f"{path}: unknown section; allowed: {', '.join(SECTIONS)}"
    if kind == "extra_forbidden":
        return f"{path}: unknown key; allowed: {', '.join(SECTIONS[str(error['loc'][0])].model_fields)}"
    if kind == "model_type":
        return f"{path}: must be a mapping of keys"
    return f"{path}={ctx.get('value', error['input'])!r}: {_WHY.get(kind, error['msg'])}"


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
    """Validate a parsed train.yaml mapping plus `--set` overrides (strings, converted to each key's type);
    reports every problem at once."""
    environ = os.environ if environ is None else environ
    document = {} if document is None else document
    if not isinstance(document, Mapping):
        raise ConfigError(f"the config file must be a mapping of sections ({', '.join(SECTIONS)})")
    raw: dict[str, Any] = {
        section: dict(values) if isinstance(values, Mapping) else {} if values is None else values
        for section, values in document.items()
    }
    problems: list[str] = []
    for text in overrides:
        try:
            section, key, value = parse_override(text)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if isinstance(values := raw.setdefault(section, {}), dict):
            values[key] = value
    if isinstance(tracking := raw.setdefault("tracking", {}), dict) and not tracking.get("uri"):
        tracking["uri"] = environ.get("MLFLOW_TRACKING_URI", "")
    try:
        config = TrainerConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(error) for error in exc.errors())
    if problems:
        raise ConfigError("; ".join(problems))
    return config


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
