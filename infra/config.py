"""Stack configuration: read once, validated once, into frozen dataclasses.

The schema (type, default, description of every key) lives in Pulumi.yaml. The CLI applies its defaults; the
SDK's mocks do not, so `load_schema` reads them from the same file and `read_raw_config` applies them the same
way. `validate` reports every problem at once, each naming the key, the bad value and what is allowed, before
the program declares any resource.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PROJECT_FILE = Path(__file__).resolve().parent.parent / "Pulumi.yaml"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$")
_SUFFIX = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
    "E": Decimal(10**18), "": Decimal(1),
}  # fmt: skip
# Keys whose values must come from `pulumi config set --secret`; the program reads them with require_secret.
SECRET_KEYS = ("postgresPassword",)
# Sections of train.yaml a `trainSettings` entry may address (see docs/trainer.md).
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")
TRAIN_SECTIONS = ("data", "model", "train", "checkpoint", "tracking", "distributed")
# train.yaml keys the platform itself sets from typed stack config; `trainSettings` must not fight them.
TRAIN_KEYS_OWNED = {
    "train.max_steps": "trainMaxSteps",
    "train.batch_size": "trainBatchSize",
    "checkpoint.every": "checkpointEvery",
    "checkpoint.dir": "runName",
    "tracking.uri": "(the MLflow Service)",
    "tracking.model_name": "modelName",
    "tracking.alias": "modelAlias",
    "distributed.backend": "trainBackend",
    "distributed.discovery": "rankDiscovery",
}


class ConfigError(ValueError):
    """Every problem found in a stack's configuration, one per line."""

    def __init__(self, stack: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"stack {stack!r} has {len(problems)} configuration problem(s); fix them with "
            f"`pulumi config set <key> <value> -s {stack}` or in Pulumi.{stack}.yaml:\n{lines}"
        )


def parse_quantity(text: str) -> Decimal:
    """Value of a Kubernetes quantity (`500m` -> 0.5, `4Gi` -> 4294967296); ValueError if it does not parse."""
    match = _QUANTITY.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number, suffix = match.group(1), match.group(3) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIX[suffix]
    except InvalidOperation as err:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from err


@cache
def load_schema(path: Path = PROJECT_FILE) -> dict[str, dict[str, Any]]:
    """The `config:` block of Pulumi.yaml: key -> {type, default?, description, secret?}."""
    project = yaml.safe_load(path.read_text())
    return dict(project["config"])


def project_name(path: Path = PROJECT_FILE) -> str:
    return str(yaml.safe_load(path.read_text())["name"])


# --- the typed result -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container, as Kubernetes quantities."""

    cpu_request: str
    """cpu request (e.g. `250m`)."""
    cpu_limit: str
    """cpu limit; never below the request."""
    memory_request: str
    """memory request (e.g. `512Mi`)."""
    memory_limit: str
    """memory limit; never below the request."""
    gpus: int = 0
    """nvidia.com/gpu request and limit (0 = none)."""


# Sizes of the supporting servers (not tunable per stack; the quota check counts them).
MLFLOW_RESOURCES = Resources(cpu_request="250m", cpu_limit="1", memory_request="512Mi", memory_limit="1Gi")
POSTGRES_RESOURCES = Resources(cpu_request="250m", cpu_limit="1", memory_request="256Mi", memory_limit="1Gi")


@dataclass(frozen=True)
class Toleration:
    """One taint the training pods tolerate (`key[=value]:Effect`)."""

    key: str
    """Taint key."""
    value: str | None
    """Taint value; None tolerates any value (operator Exists)."""
    effect: str
    """NoSchedule, PreferNoSchedule or NoExecute."""


@dataclass(frozen=True)
class NamespaceSettings:
    name: str
    """The namespace itself."""
    quota_cpu: str
    """Sum of cpu limits allowed."""
    quota_memory: str
    """Sum of memory limits allowed."""
    quota_pods: int
    """Pods allowed."""
    quota_gpus: int
    """nvidia.com/gpu requests allowed (0: no GPU quota line)."""
    defaults: Resources
    """LimitRange defaults for containers that declare nothing."""


@dataclass(frozen=True)
class StorageSettings:
    mode: str
    """hostPath or storageClass."""
    host_path: str
    """Directory on the kind node (hostPath mode)."""
    storage_class: str
    """StorageClass of the PVCs ("" = cluster default)."""
    access_mode: str
    """Access mode of the checkpoint volume."""
    checkpoint_size: str
    """Checkpoint volume size."""
    mlflow_size: str
    """MLflow volume size."""
    protect_data: bool
    """Protect the data claims from `pulumi destroy` and replacement."""


@dataclass(frozen=True)
class MlflowSettings:
    backend: str
    """sqlite or postgresql."""
    node_port: int
    """NodePort of the MLflow Service (when service_type is NodePort)."""
    postgres_image: str
    """PostgreSQL image (postgresql backend)."""
    postgres_size: str
    """PostgreSQL volume size."""


@dataclass(frozen=True)
class TlsSettings:
    enabled: bool
    """Whether the Ingress terminates TLS with a cert-manager Certificate."""
    install_cert_manager: bool
    """Install cert-manager itself."""
    cert_manager_namespace: str
    """Where cert-manager runs."""
    issuer: str
    """selfSigned or acme."""
    acme_email: str
    """ACME account e-mail."""
    acme_server: str
    """ACME directory URL."""


@dataclass(frozen=True)
class TrainingSettings:
    run_name: str
    """Run name; the Job is `<run_name>-train`."""
    workers: int
    """Pods = WORLD_SIZE."""
    backend: str
    """gloo or nccl."""
    master_port: int
    """MASTER_PORT."""
    discovery: str
    """dns or kubernetes-api."""
    backoff_limit: int
    """Retriable failures before the Job fails."""
    max_steps: int
    """train.max_steps."""
    batch_size: int
    """train.batch_size (global)."""
    checkpoint_every: int
    """checkpoint.every."""
    settings: tuple[tuple[str, str], ...]
    """Extra train.yaml settings as (section.key, raw value)."""
    resources: Resources
    """Per-worker requests and limits."""
    shm_size: str
    """/dev/shm size limit."""
    node_selector: tuple[tuple[str, str], ...]
    """Required node labels."""
    tolerations: tuple[Toleration, ...]
    """Tolerated taints."""
    wait: bool
    """Whether `pulumi up` waits for the Job."""
    timeout_minutes: int
    """How long it waits."""
    kueue_queue: str
    """Kueue LocalQueue ("" = none)."""


@dataclass(frozen=True)
class InferenceSettings:
    model_name: str
    """Registered model served."""
    model_alias: str
    """Alias followed."""
    node_port: int
    """NodePort of the inference Service (NodePort mode)."""
    resources: Resources
    """Per-pod requests and limits."""
    min_replicas: int
    """HPA minimum."""
    max_replicas: int
    """HPA maximum."""
    cpu_utilization: int
    """HPA target, percent of the cpu request."""
    scale_up_window_s: int
    """HPA scale-up stabilization window."""
    scale_down_window_s: int
    """HPA scale-down stabilization window."""
    ingress_enabled: bool
    """Create an Ingress."""
    ingress_host: str
    """Ingress host name."""
    ingress_class: str
    """IngressClass name."""
    ingress_controller_namespace: str
    """Namespace of the ingress controller (NetworkPolicy source)."""


@dataclass(frozen=True)
class StackConfig:
    """Everything the program needs, validated. Build it with `StackConfig.load()` or `from_raw`."""

    stack: str
    """Stack name."""
    project: str
    """Project name (Pulumi.yaml)."""
    image: str
    """Platform image."""
    image_pull_policy: str
    """Pull policy of the platform image."""
    accelerator: str
    """cpu or nvidia."""
    service_type: str
    """NodePort or ClusterIP for the inference and MLflow Services."""
    namespace: NamespaceSettings
    """Namespace, quota and defaults."""
    storage: StorageSettings
    """Volumes."""
    mlflow: MlflowSettings
    """Tracking server."""
    tls: TlsSettings
    """TLS."""
    training: TrainingSettings
    """The training run."""
    inference: InferenceSettings
    """The inference service."""

    @classmethod
    def load(cls) -> StackConfig:
        """Read the current stack's config through the Pulumi SDK and validate it (raises ConfigError)."""
        import pulumi
        from pulumi.runtime.config import is_config_secret

        cfg = pulumi.Config()
        raw = read_raw_config(cfg.get)
        is_set = {key for key in SECRET_KEYS if cfg.get(key)}
        secret = {key for key in is_set if is_config_secret(f"{cfg.name}:{key}")}
        return cls.from_raw(pulumi.get_stack(), raw, secret, plain_secrets=is_set - secret)

    @classmethod
    def from_raw(
        cls,
        stack: str,
        raw: Mapping[str, Any],
        secrets_set: set[str] | None = None,
        plain_secrets: set[str] | None = None,
    ) -> StackConfig:
        """Validate typed raw values (as `read_raw_config` returns them) into a StackConfig. `secrets_set`: the
        SECRET_KEYS set as secrets; `plain_secrets`: those set in plain text (an error)."""
        return _Validator(stack, raw, secrets_set or set(), plain_secrets or set()).build()


def secret_keys() -> list[str]:
    return list(SECRET_KEYS)


def read_raw_config(get: Callable[[str], str | None]) -> dict[str, Any]:
    """Every non-secret schema key, typed, with Pulumi.yaml defaults applied; values that do not parse are
    kept as strings so validation can name them."""
    raw: dict[str, Any] = {}
    for key, spec in load_schema().items():
        if key in SECRET_KEYS:
            continue
        text = get(key)
        if text is None:
            raw[key] = spec.get("default")
            continue
        raw[key] = _coerce(text, spec["type"])
    return raw


def _coerce(text: str, kind: str) -> Any:
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return text
    if kind == "boolean":
        return {"true": True, "false": False}.get(text.strip().lower(), text)
    if kind == "array":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        return value
    return text


class _Validator:
    """Collects every problem, then builds the dataclasses only if there were none."""

    def __init__(self, stack: str, raw: Mapping[str, Any], secrets_set: set[str], plain_secrets: set[str]) -> None:
        self.stack = stack
        self.raw = raw
        self.secrets_set = secrets_set
        self.problems: list[str] = [
            f"{key}: is set in plain text; it must be a secret: `pulumi config set --secret {key} <value> -s {stack}`"
            for key in sorted(plain_secrets)
        ]

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}={self.raw.get(key)!r}: {message}")

    # typed getters: each records a problem and returns a harmless value when the input is wrong

    def string(self, key: str) -> str:
        value = self.raw.get(key)
        if not isinstance(value, str):
            self.problem(key, "must be a string")
            return ""
        return value

    def integer(self, key: str, low: int | None = None, high: int | None = None) -> int:
        value = self.raw.get(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, "must be an integer")
            return low or 0
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            self.problem(key, f"must be {bounds}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw.get(key)
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return False
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.raw.get(key)
        if value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)}")
            return allowed[0]
        return str(value)

    def quantity(self, key: str, *, positive: bool = True) -> str:
        value = self.string(key)
        if not value:
            return "0"
        try:
            amount = parse_quantity(value)
        except ValueError:
            self.problem(key, "is not a Kubernetes quantity; use forms like 500m, 2, 512Mi, 4Gi")
            return "0"
        if positive and amount <= 0:
            self.problem(key, "must be greater than zero")
        return value

    def string_list(self, key: str) -> list[str]:
        value = self.raw.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "must be a list of strings")
            return []
        return value

    def resources(self, prefix: str, gpus: int = 0) -> Resources:
        res = Resources(
            cpu_request=self.quantity(f"{prefix}CpuRequest"),
            cpu_limit=self.quantity(f"{prefix}CpuLimit"),
            memory_request=self.quantity(f"{prefix}MemoryRequest"),
            memory_limit=self.quantity(f"{prefix}MemoryLimit"),
            gpus=gpus,
        )
        for kind in ("Cpu", "Memory"):
            request_key, limit_key = f"{prefix}{kind}Request", f"{prefix}{kind}Limit"
            try:
                request = parse_quantity(self.raw[request_key])
                limit = parse_quantity(self.raw[limit_key])
            except (ValueError, KeyError):
                continue  # already reported
            if request > limit:
                self.problem(request_key, f"must not exceed {limit_key}={self.raw[limit_key]!r}")
        return res

    def image(self, key: str) -> str:
        value = self.string(key)
        if not _IMAGE.match(value):
            self.problem(key, "must be an image reference like registry/repo:tag or repo@sha256:...")
        return value

    def dns_label(self, key: str, what: str = "a DNS-1123 label") -> str:
        value = self.string(key)
        if not _DNS_LABEL.match(value):
            self.problem(key, f"must be {what}: lowercase letters, digits and '-', at most 63 characters")
        return value

    def key_values(self, key: str) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in self.string_list(key):
            name, sep, value = item.partition("=")
            if not sep or not _LABEL_KEY.match(name) or not _LABEL_VALUE.match(value):
                self.problems.append(f"{key}: entry {item!r} must be label-key=label-value")
                continue
            pairs.append((name, value))
        return tuple(pairs)

    def tolerations(self, key: str) -> tuple[Toleration, ...]:
        result = []
        for item in self.string_list(key):
            head, sep, effect = item.rpartition(":")
            name, eq, value = head.partition("=")
            if (
                not sep
                or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute")
                or not _LABEL_KEY.match(name)
                or (eq and not _LABEL_VALUE.match(value))
            ):
                self.problems.append(
                    f"{key}: entry {item!r} must be key[=value]:Effect with Effect one of "
                    "NoSchedule, PreferNoSchedule, NoExecute"
                )
                continue
            result.append(Toleration(key=name, value=value if eq else None, effect=effect))
        return tuple(result)

    def train_settings(self, key: str) -> tuple[tuple[str, str], ...]:
        result = []
        for item in self.string_list(key):
            path, sep, value = item.partition("=")
            section, dot, field = path.partition(".")
            if not sep or not dot or section not in TRAIN_SECTIONS or not re.match(r"^[a-z_]+$", field):
                self.problems.append(
                    f"{key}: entry {item!r} must be section.key=value with section one of " + ", ".join(TRAIN_SECTIONS)
                )
            elif path in TRAIN_KEYS_OWNED:
                self.problems.append(f"{key}: entry {item!r} sets {path}; set {TRAIN_KEYS_OWNED[path]} instead")
            else:
                result.append((path, value))
        return tuple(result)

    def check_quota(self, config: StackConfig) -> None:
        """The quota must admit everything at full scale: every worker, MLflow (and PostgreSQL), and inference at
        hpaMaxReplicas plus the one extra pod of a rolling update; otherwise pods are refused at admission."""
        t, inf = config.training, config.inference
        surge_replicas = inf.max_replicas + 1
        postgres = [POSTGRES_RESOURCES] if config.mlflow.backend == "postgresql" else []
        pods = [*([t.resources] * t.workers), MLFLOW_RESOURCES, *postgres, *([inf.resources] * surge_replicas)]
        what = (
            f"{t.workers} workers + MLflow{' + PostgreSQL' if postgres else ''} + "
            f"{surge_replicas} inference pods (hpaMaxReplicas + 1 rolling-update surge)"
        )
        for key, quota, field_ in (
            ("quotaCpu", config.namespace.quota_cpu, "cpu_limit"),
            ("quotaMemory", config.namespace.quota_memory, "memory_limit"),
        ):
            try:
                needed = sum((parse_quantity(getattr(r, field_)) for r in pods), Decimal(0))
                too_small = parse_quantity(quota) < needed
            except ValueError:
                continue  # a quantity that does not parse is already reported
            if too_small:
                self.problem(key, f"must cover the limits of {what} = {needed.normalize():f}")
        if config.namespace.quota_pods < len(pods):
            self.problem("quotaPods", f"must be at least {len(pods)}: {what}")

    def build(self) -> StackConfig:
        accelerator = self.choice("accelerator", ("cpu", "nvidia"))
        gpus = self.integer("gpusPerWorker", 0, 16)
        if accelerator == "nvidia" and gpus < 1:
            self.problem("gpusPerWorker", "must be >= 1 with accelerator nvidia (the gpu stack needs a GPU count)")
        if accelerator == "cpu" and gpus:
            self.problem("gpusPerWorker", "must be 0 with accelerator cpu; set accelerator to nvidia to use GPUs")
        backend = self.choice("trainBackend", ("gloo", "nccl"))
        if backend == "nccl" and accelerator != "nvidia":
            self.problem("trainBackend", "nccl needs GPUs; use gloo with accelerator cpu")
        workers = self.integer("workers", 1, 256)
        quota_gpus = self.integer("quotaGpus", 0)
        if accelerator == "nvidia" and quota_gpus < workers * gpus:
            self.problem("quotaGpus", f"must cover workers x gpusPerWorker = {workers * gpus}")
        if accelerator == "cpu" and quota_gpus:
            self.problem("quotaGpus", "must be 0 with accelerator cpu")

        batch_size = self.integer("trainBatchSize", 1)
        if workers >= 1 and batch_size >= 1 and batch_size % workers:
            self.problem("trainBatchSize", f"must be divisible by workers={workers} (it is the global batch)")

        service_type = self.choice("serviceType", ("NodePort", "ClusterIP"))
        inference_port = self.integer("inferenceNodePort", 30000, 32767)
        mlflow_port = self.integer("mlflowNodePort", 30000, 32767)
        if service_type == "NodePort" and inference_port == mlflow_port:
            self.problem("mlflowNodePort", "must differ from inferenceNodePort")

        min_replicas = self.integer("hpaMinReplicas", 1, 100)
        max_replicas = self.integer("hpaMaxReplicas", 1, 100)
        if min_replicas > max_replicas:
            self.problem("hpaMinReplicas", f"must not exceed hpaMaxReplicas={max_replicas}")

        storage_mode = self.choice("storageMode", ("hostPath", "storageClass"))
        host_path = self.string("storageHostPath")
        if storage_mode == "hostPath" and not host_path.startswith("/"):
            self.problem("storageHostPath", "must be an absolute path inside the kind node")
        storage_class = self.string("storageClass")
        if storage_class and not _DNS_SUBDOMAIN.match(storage_class):
            self.problem("storageClass", "must be a StorageClass name (DNS-1123 subdomain) or empty")

        mlflow_backend = self.choice("mlflowBackend", ("sqlite", "postgresql"))
        if mlflow_backend == "postgresql" and "postgresPassword" not in self.secrets_set:
            self.problems.append(
                "postgresPassword: required (as a secret) with mlflowBackend postgresql; "
                f"run `pulumi config set --secret postgresPassword <password> -s {self.stack}`"
            )

        ingress = self.boolean("ingressEnabled")
        ingress_host = self.string("ingressHost")
        if ingress and not _DNS_SUBDOMAIN.match(ingress_host):
            self.problem("ingressHost", "must be a DNS name such as inference.example.com")
        tls_enabled = self.boolean("tlsEnabled")
        if tls_enabled and not ingress:
            self.problem("tlsEnabled", "needs ingressEnabled=true (TLS terminates at the Ingress)")
        issuer = self.choice("tlsIssuer", ("selfSigned", "acme"))
        acme_email = self.string("acmeEmail")
        if tls_enabled and issuer == "acme" and "@" not in acme_email:
            self.problem("acmeEmail", "must be an e-mail address with tlsIssuer acme")
        acme_server = self.string("acmeServer")
        if not acme_server.startswith("https://"):
            self.problem("acmeServer", "must be an https:// ACME directory URL")

        wait = self.boolean("waitForTraining")
        config = StackConfig(
            stack=self.stack,
            project=project_name(),
            image=self.image("image"),
            image_pull_policy=self.choice("imagePullPolicy", ("Always", "IfNotPresent", "Never")),
            accelerator=accelerator,
            service_type=service_type,
            namespace=NamespaceSettings(
                name=self.dns_label("namespace"),
                quota_cpu=self.quantity("quotaCpu"),
                quota_memory=self.quantity("quotaMemory"),
                quota_pods=self.integer("quotaPods", 1),
                quota_gpus=quota_gpus,
                defaults=self.resources("default"),
            ),
            storage=StorageSettings(
                mode=storage_mode,
                host_path=host_path,
                storage_class=storage_class,
                access_mode=self.choice("storageAccessMode", ACCESS_MODES),
                checkpoint_size=self.quantity("checkpointStorageSize"),
                mlflow_size=self.quantity("mlflowStorageSize"),
                protect_data=self.boolean("protectData"),
            ),
            mlflow=MlflowSettings(
                backend=mlflow_backend,
                node_port=mlflow_port,
                postgres_image=self.image("postgresImage"),
                postgres_size=self.quantity("postgresStorageSize"),
            ),
            tls=TlsSettings(
                enabled=tls_enabled,
                install_cert_manager=self.boolean("tlsInstallCertManager"),
                cert_manager_namespace=self.dns_label("tlsCertManagerNamespace"),
                issuer=issuer,
                acme_email=acme_email,
                acme_server=acme_server,
            ),
            training=TrainingSettings(
                run_name=self.dns_label("runName"),
                workers=workers,
                backend=backend,
                master_port=self.integer("masterPort", 1024, 65535),
                discovery=self.choice("rankDiscovery", ("dns", "kubernetes-api")),
                backoff_limit=self.integer("backoffLimit", 0, 100),
                max_steps=self.integer("trainMaxSteps", 1),
                batch_size=batch_size,
                checkpoint_every=self.integer("checkpointEvery", 1),
                settings=self.train_settings("trainSettings"),
                resources=self.resources("train", gpus),
                shm_size=self.quantity("shmSize"),
                node_selector=self.key_values("gpuNodeSelector"),
                tolerations=self.tolerations("gpuTolerations"),
                wait=wait,
                timeout_minutes=self.integer("trainingTimeoutMinutes", 1, 7 * 24 * 60),
                kueue_queue=self.string("kueueQueue"),
            ),
            inference=InferenceSettings(
                model_name=self.string("modelName"),
                model_alias=self.string("modelAlias"),
                node_port=inference_port,
                resources=self.resources("inference"),
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                cpu_utilization=self.integer("hpaCpuUtilization", 1, 100),
                scale_up_window_s=self.integer("hpaScaleUpStabilizationSeconds", 0, 3600),
                scale_down_window_s=self.integer("hpaScaleDownStabilizationSeconds", 0, 3600),
                ingress_enabled=ingress,
                ingress_host=ingress_host,
                ingress_class=self.string("ingressClassName"),
                ingress_controller_namespace=self.dns_label("ingressControllerNamespace"),
            ),
        )
        # The Job name <runName>-train and pod host names <job>-<index> must stay DNS labels.
        if len(config.training.run_name) > 50:
            self.problem("runName", "must be at most 50 characters (the Job and pod names derive from it)")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", config.inference.model_name):
            self.problem("modelName", "must be letters, digits, '.', '_' or '-' (an MLflow registered model name)")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$", config.inference.model_alias):
            self.problem("modelAlias", "must start with a letter and hold letters, digits, '_' or '-'")
        if config.training.kueue_queue and not _DNS_SUBDOMAIN.match(config.training.kueue_queue):
            self.problem("kueueQueue", "must be a LocalQueue name (DNS-1123 subdomain) or empty")
        if config.inference.ingress_class and not _DNS_SUBDOMAIN.match(config.inference.ingress_class):
            self.problem("ingressClassName", "must be an IngressClass name")
        self.check_quota(config)
        if self.problems:
            raise ConfigError(self.stack, self.problems)
        return config
