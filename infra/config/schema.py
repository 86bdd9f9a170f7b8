"""The config schema in Pulumi.yaml and the raw values of a stack, typed and with the schema's defaults applied.

The CLI applies Pulumi.yaml's defaults; the SDK's mocks do not, so `read_raw_config` applies them itself from the
same file, and the program behaves the same under both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PROJECT_FILE = Path(__file__).resolve().parents[2] / "Pulumi.yaml"
# Keys whose values must come from `pulumi config set --secret`; the program reads them with require_secret.
SECRET_KEYS = ("postgresPassword",)


@cache
def load_schema(path: Path = PROJECT_FILE) -> dict[str, dict[str, Any]]:
    """The `config:` block of Pulumi.yaml: key -> {type, default?, description, secret?}."""
    project = yaml.safe_load(path.read_text())
    return dict(project["config"])


def project_name(path: Path = PROJECT_FILE) -> str:
    return str(yaml.safe_load(path.read_text())["name"])


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
