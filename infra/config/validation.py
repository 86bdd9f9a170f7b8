"""Typed getters over a stack's raw config that collect every problem instead of stopping at the first.

Each getter names the key, the bad value and what is allowed, and returns a harmless value so validation can go
on; `ConfigError` reports them all at once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from workloads.pod import Resources, Toleration
from workloads.quantity import parse_quantity
from workloads.train_yaml import SECTIONS as TRAIN_SECTIONS
from workloads.train_yaml import owned_key_problem

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
# A registry path without a tag: quay.io/jetstack, localhost/jetstack.
IMAGE_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([-a-z0-9._]*[a-z0-9])?)*$")
# Domains an ACME CA refuses for the account e-mail (Let's Encrypt answers "invalidContact ... forbidden domain"):
# the RFC 2606 example domains and the special-use TLDs of RFC 6761.
ACME_FORBIDDEN_DOMAINS = ("example.com", "example.net", "example.org")
ACME_FORBIDDEN_TLDS = ("example", "invalid", "localhost", "test", "local")
_EMAIL = re.compile(r"^[^@\s]+@([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$")


def acme_email_problem(email: str) -> str | None:
    """Why an ACME CA would refuse `email` as the account's contact, or None."""
    match = _EMAIL.match(email)
    if not match:
        return "must be an e-mail address (the ACME account's contact) with tlsIssuer acme"
    domain = match.group(1).lower()
    if domain in ACME_FORBIDDEN_DOMAINS or domain.endswith(tuple(f".{d}" for d in ACME_FORBIDDEN_DOMAINS)):
        return f"{domain} is a reserved example domain, which Let's Encrypt refuses as a contact"
    if domain.rsplit(".", 1)[-1] in ACME_FORBIDDEN_TLDS:
        return f"{domain} is under a special-use top-level domain, which Let's Encrypt refuses as a contact"
    return None


CHART_SOURCES = {
    "cert-manager": "deploy/charts/cert-manager of the github.com/cert-manager/cert-manager Go module or what "
    "`helm pull jetstack/cert-manager --untar` wrote",
    "kueue": "charts/kueue of the sigs.k8s.io/kueue Go module (tests/toolchain/kueue.sh copies it) or what "
    "`helm pull oci://registry.k8s.io/kueue/charts/kueue --untar` wrote",
}


def chart_dir_problem(path: str, chart_name: str) -> str | None:
    """Why `path` is not a local copy of the Helm chart `chart_name` (a key of CHART_SOURCES), or None."""
    from pathlib import Path

    import yaml

    chart = Path(path)
    if not chart.is_absolute():
        return f"must be an absolute path (a directory holding {chart_name}'s Chart.yaml)"
    if not (chart / "Chart.yaml").is_file():
        return f"has no Chart.yaml: point it at {chart_name}'s chart directory, e.g. {CHART_SOURCES[chart_name]}"
    try:
        name = (yaml.safe_load((chart / "Chart.yaml").read_text()) or {}).get("name")
    except (OSError, yaml.YAMLError) as err:
        return f"Chart.yaml cannot be read: {err}"
    if name != chart_name:
        return f"holds the chart {name!r}, not {chart_name}"
    return None


def cert_manager_chart_problem(path: str) -> str | None:
    """Why `path` is not a local copy of cert-manager's Helm chart, or None."""
    return chart_dir_problem(path, "cert-manager")


class ConfigError(ValueError):
    """Every problem found in a stack's configuration, one per line."""

    def __init__(self, stack: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"stack {stack!r} has {len(problems)} configuration problem(s); fix them with "
            f"`pulumi config set <key> <value> -s {stack}` or in Pulumi.{stack}.yaml:\n{lines}"
        )


class Validator:
    """Collects every problem; the caller builds its dataclasses from the getters' results and raises ConfigError
    if `problems` is not empty."""

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

    def cidrs(self, key: str) -> tuple[str, ...]:
        """IPv4 or IPv6 networks in CIDR form (10.0.0.0/8, fd00::/64, 0.0.0.0/0, ::/0), host bits zero."""
        result = []
        for item in self.string_list(key):
            try:
                result.append(str(ipaddress.ip_network(item, strict=True)))
            except ValueError:
                self.problems.append(
                    f"{key}: entry {item!r} must be a network in CIDR form with its host bits zero, such as "
                    "10.96.0.0/12, 172.18.0.2/32, fd00::/64, 0.0.0.0/0 or ::/0"
                )
        return tuple(result)

    def ports(self, key: str) -> tuple[int, ...]:
        """A non-empty list of TCP port numbers."""
        value = self.raw.get(key)
        if isinstance(value, list) and value and all(type(p) is int and 1 <= p <= 65535 for p in value):
            return tuple(value)
        self.problem(key, "must be a non-empty list of port numbers between 1 and 65535, such as [443, 6443]")
        return ()

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
        if not DNS_LABEL.match(value):
            self.problem(key, f"must be {what}: lowercase letters, digits and '-', at most 63 characters")
        return value

    def dns_subdomain(self, key: str, what: str = "a DNS-1123 subdomain") -> str:
        value = self.string(key)
        if not DNS_SUBDOMAIN.match(value):
            self.problem(key, f"must be {what}: lowercase letters, digits, '-' and '.', at most 253 characters")
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
            elif problem := owned_key_problem(path, "stack"):
                self.problems.append(f"{key}: entry {item!r}: {problem}")
            else:
                result.append((path, value))
        return tuple(result)
