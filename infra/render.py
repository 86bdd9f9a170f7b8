"""`python -m infra.render STACK [--out FILE]`: every Kubernetes object a stack declares, as multi-document YAML,
with no cluster and no pulumi CLI.

The real program runs under the SDK's mocks with the stack's own config (Pulumi.yaml defaults, then
Pulumi.<stack>.yaml). Secret config values become placeholders; so does every value of a Kubernetes Secret.
Resources that are not Kubernetes objects (components, Helm releases) are listed in a leading comment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor

from infra.config import PROJECT_FILE, SECRET_KEYS, ConfigError, project_name

SECRET_PLACEHOLDER = "<secret:{key}>"
# How the engine protocol marks a secret value: {_SIG_KEY: _SECRET_SIG, "value": ...}.
_SIG_KEY = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
# Order of kinds in the rendered YAML: what a reader (and `kubectl apply -f`) wants first comes first.
KIND_ORDER = (
    "Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy", "PersistentVolume", "PersistentVolumeClaim", "Secret",
    "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "StatefulSet", "Deployment", "Job",
    "HorizontalPodAutoscaler", "PodDisruptionBudget", "Issuer", "Certificate", "Ingress",
)  # fmt: skip
# Kubernetes objects come from the provider package `kubernetes`; its own provider resources and Helm
# charts/releases are not objects a cluster stores.
_NOT_OBJECTS = ("pulumi:providers:", "kubernetes:helm.sh/")


@dataclass
class RecordedResource:
    type: str
    """Pulumi type token, e.g. kubernetes:apps/v1:Deployment."""
    name: str
    """Pulumi logical name."""
    inputs: dict[str, Any]
    """Inputs as the engine would receive them (camelCase Kubernetes fields)."""


@dataclass(frozen=True)
class RecordedOptions:
    """The resource options of one resource, as the engine receives them (what `pulumi up` acts on)."""

    parent: str
    """Logical name of the parent ("" for the stack itself)."""
    dependencies: frozenset[str]
    """Logical names of every resource it waits for: `dependsOn`, and those whose outputs its inputs use."""
    protect: bool
    """`protect`: destroy and replace stop with an error."""
    delete_before_replace: bool
    """`deleteBeforeReplace`."""
    custom_timeouts: dict[str, str]
    """`customTimeouts` that are set (create, update, delete)."""
    ignore_changes: tuple[str, ...]
    """`ignoreChanges`."""
    replace_on_changes: tuple[str, ...]
    """`replaceOnChanges`."""
    retain_on_delete: bool
    """`retainOnDelete`."""


def _logical_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource and echoes its inputs back as outputs; with `RecordingMonitor`, also the options."""

    def __init__(self) -> None:
        self.resources: list[RecordedResource] = []
        self.reads: list[RecordedResource] = []
        """Existing objects the program reads (`Resource.get`: the IngressClass, cert-manager's CRD); `pulumi
        up` creates none of them, so they are neither objects nor others."""
        self.options: dict[tuple[str, str], RecordedOptions] = {}
        """(type token, logical name) -> the resource's options."""

    def new_resource(self, args: Any) -> tuple[str, dict[str, Any]]:
        recorded = RecordedResource(args.typ, args.name, dict(args.inputs))
        (self.reads if args.resource_id else self.resources).append(recorded)
        return args.resource_id or f"{args.name}-id", dict(args.inputs)

    def call(self, args: Any) -> tuple[dict[str, Any], None]:
        return {}, None

    def objects(self) -> list[dict[str, Any]]:
        """The recorded Kubernetes objects, numbers normalized (the mocks deliver every number as a float)."""
        objects = [_ordered(normalize(r.inputs)) for r in self.resources if is_kubernetes_object(r.type)]
        return sorted(objects, key=_sort_key)

    def others(self) -> list[RecordedResource]:
        return [r for r in self.resources if not is_kubernetes_object(r.type)]

    def options_of(self, type_token: str, name: str) -> RecordedOptions:
        return self.options[(type_token, name)]


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, which also records the options of every resource registration into the mocks (the
    mocks alone see only inputs)."""

    mocks: RecordingMocks

    def RegisterResource(self, request: Any) -> Any:
        if request.type != "pulumi:pulumi:Stack":
            timeouts = request.customTimeouts
            self.mocks.options[(request.type, request.name)] = RecordedOptions(
                parent=_logical_name(request.parent) if request.parent else "",
                dependencies=frozenset(_logical_name(urn) for urn in request.dependencies),
                protect=bool(request.protect),
                delete_before_replace=request.deleteBeforeReplace,
                custom_timeouts={
                    key: getattr(timeouts, key) for key in ("create", "update", "delete") if getattr(timeouts, key)
                },
                ignore_changes=tuple(request.ignoreChanges),
                replace_on_changes=tuple(request.replaceOnChanges),
                retain_on_delete=bool(request.retainOnDelete),
            )
        return super().RegisterResource(request)


def use_mocks(mocks: RecordingMocks, project: str, stack: str) -> None:
    """Make `mocks` (and a monitor recording every resource's options) the runtime of the next program."""
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=RecordingMonitor(mocks))


def is_kubernetes_object(type_token: str) -> bool:
    return type_token.startswith("kubernetes:") and not type_token.startswith(_NOT_OBJECTS)


def normalize(value: Any, key: str = "value") -> Any:
    """Integral floats back to ints; every scalar inside a secret-wrapped value to a placeholder."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        if value.get(_SIG_KEY) == _SECRET_SIG:
            return _placeholders(value.get("value"), key)
        return {k: normalize(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def _placeholders(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return {k: _placeholders(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_placeholders(v, key) for v in value]
    return SECRET_PLACEHOLDER.format(key=key)


def _ordered(obj: dict[str, Any]) -> dict[str, Any]:
    head: dict[str, Any] = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    return {**head, **{k: v for k, v in obj.items() if k not in head}}


def _sort_key(obj: dict[str, Any]) -> tuple[int, str, str]:
    kind = obj.get("kind", "")
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    meta = obj.get("metadata") or {}
    return rank, meta.get("namespace", ""), meta.get("name", "")


# Keys a stack file may leave for its user (Pulumi.gpu.yaml: acmeEmail), with what a rendering uses instead.
USER_VALUE_STANDINS = {"acmeEmail": "platform-team@ml-platform.dev"}


def stack_config(stack: str, root: Path = PROJECT_FILE.parent) -> tuple[dict[str, str], list[str]]:
    """The config map the CLI would hand the program for `stack` (values as strings, structured ones as JSON),
    with placeholders for secrets, and the list of secret keys."""
    project = project_name()
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        stacks = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
        raise FileNotFoundError(f"no stack file {path.name}; stacks here: {', '.join(stacks)}")
    values: dict[str, Any] = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    config: dict[str, str] = {}
    secret: list[str] = []
    for full_key, value in values.items():
        namespace, _, key = full_key.rpartition(":")
        if namespace != project:
            continue  # provider config (kubernetes:context, ...) is not the program's
        if isinstance(value, Mapping) and "secure" in value:
            config[f"{project}:{key}"] = SECRET_PLACEHOLDER.format(key=key)
            secret.append(f"{project}:{key}")
        elif isinstance(value, str):
            config[f"{project}:{key}"] = value
        else:
            config[f"{project}:{key}"] = json.dumps(value)
    # A rendered stack shows what a real deploy creates: values the stack file leaves for the user to set (their
    # ACME account e-mail) get a stand-in,
    for key, standin in USER_VALUE_STANDINS.items():
        config.setdefault(f"{project}:{key}", standin)
    # and secrets the stack file leaves for `pulumi config set --secret` get placeholders.
    for key in SECRET_KEYS:
        if f"{project}:{key}" not in config:
            config[f"{project}:{key}"] = SECRET_PLACEHOLDER.format(key=key)
            secret.append(f"{project}:{key}")
    return config, secret


def ensure_event_loop() -> None:
    """The SDK's mocks run the program on the current thread's event loop; an asyncio.run() before (another caller,
    or a test) leaves none set, and the SDK would fail with "There is no current event loop"."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(stack: str, config: dict[str, str], secret_keys: list[str]) -> RecordingMocks:
    """Run the real program under mocks with `config`; ConfigError propagates before any resource exists."""
    from infra.config import StackConfig
    from infra.program import build

    ensure_event_loop()
    mocks = RecordingMocks()
    use_mocks(mocks, project_name(), stack)
    pulumi.runtime.set_all_config(config, secret_keys)

    @pulumi.runtime.test
    def program() -> pulumi.Output[list[object]]:
        return pulumi.Output.all(*build(StackConfig.load()).values())

    program()
    return mocks


def redact_secrets(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for obj in objects:
        if obj.get("kind") == "Secret":
            for section in ("data", "stringData"):
                if obj.get(section):
                    obj[section] = {k: SECRET_PLACEHOLDER.format(key=k) for k in obj[section]}
    return objects


def render(stack: str) -> tuple[list[dict[str, Any]], list[RecordedResource]]:
    """(Kubernetes objects, other resources) the stack declares."""
    config, secret_keys = stack_config(stack)
    mocks = run_program(stack, config, secret_keys)
    return redact_secrets(mocks.objects()), mocks.others()


def to_yaml(stack: str, objects: list[dict[str, Any]], others: list[RecordedResource]) -> str:
    header = [f"# Rendered by `python -m infra.render {stack}`: {len(objects)} Kubernetes objects."]
    header.append("# Other resources declared (not Kubernetes objects):")
    header += [f"#   {r.type} {r.name}" for r in others]
    body = yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", help="stack name (Pulumi.<stack>.yaml), e.g. dev or gpu")
    parser.add_argument("--out", type=Path, help="write the YAML here instead of stdout")
    args = parser.parse_args(argv)
    try:
        objects, others = render(args.stack)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = to_yaml(args.stack, objects, others)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {len(objects)} objects to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
