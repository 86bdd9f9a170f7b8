"""Stack configuration: read once, validated once, into frozen dataclasses (`StackConfig.load()`).

- `schema.py`: the config schema in Pulumi.yaml (type, default, description of every key) and the raw values of
  a stack with those defaults applied (the CLI applies them; the SDK's mocks do not, so this does it the same way).
- `validation.py`: typed getters that collect every problem, each naming the key, the bad value and what is
  allowed; `ConfigError` reports them all at once.
- `settings.py`: the frozen dataclasses, one per part of the platform.
- `stack.py`: `StackConfig`, the cross-key rules and the quota check; the one reader of stack config besides the
  entry point.
"""

from infra.config.schema import PROJECT_FILE, SECRET_KEYS, load_schema, project_name, read_raw_config, secret_keys
from infra.config.settings import (
    InferenceSettings,
    MlflowSettings,
    MonitoringSettings,
    NamespaceSettings,
    StorageSettings,
    TlsSettings,
    TrainingSettings,
)
from infra.config.stack import ACCESS_MODES, StackConfig
from infra.config.validation import ConfigError
from workloads.pod import Resources, Toleration
from workloads.quantity import parse_quantity

__all__ = [
    "ACCESS_MODES", "PROJECT_FILE", "SECRET_KEYS", "ConfigError",
    "InferenceSettings", "MlflowSettings", "MonitoringSettings", "NamespaceSettings", "Resources", "StackConfig",
    "StorageSettings", "TlsSettings", "Toleration", "TrainingSettings", "load_schema", "parse_quantity",
    "project_name", "read_raw_config", "secret_keys",
]  # fmt: skip
