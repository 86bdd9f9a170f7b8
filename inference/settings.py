"""Service settings: every knob has a default and an `INFERENCE_` environment variable."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# `models:/<name>@<alias>` (polled) or `models:/<name>/<version>` (pinned); registered model names may not
# contain `/` or `@` here because they separate the parts.
MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))$")
ALIAS_RE = re.compile(r"^[^/@\s]+$")


class Settings(BaseSettings):
    """Configuration of one inference server process (environment variables are `INFERENCE_<FIELD>`)."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore", frozen=True)

    model_uri: str = ""
    """`models:/<name>@<alias>`, `models:/<name>/<version>`, a saved-model directory, or a trainer checkpoint
    root (the newest `step-*` directory with a `COMPLETE` marker is served). Required to become ready."""
    tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("INFERENCE_TRACKING_URI", "MLFLOW_TRACKING_URI", "tracking_uri")
    )
    """MLflow tracking server for `models:/` URIs; `MLFLOW_TRACKING_URI` is accepted too."""
    served_model_name: str = ""
    """The `model` id clients send and `/v1/models` lists; default: the registered model name, or the
    directory name for local paths."""
    host: str = "127.0.0.1"
    """Address to bind (`0.0.0.0` in a pod)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """TCP port to listen on."""
    poll_interval_s: float = Field(default=30.0, gt=0)
    """How often the alias (or the checkpoint root) is checked for a newer model."""
    cache_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "inference-models")
    """Where MLflow model versions are downloaded (one subdirectory per version); must be writable."""
    device: str = "auto"
    """Torch device to run on: `auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:1`, ..."""
    torch_threads: int = Field(default=1, ge=0)
    """Intra-op threads for torch on CPU; 0 keeps torch's default (one per core). One is fastest for small
    models: each decoding step is many tiny ops, and more threads only add synchronisation, which turns into
    stalls when the cores are shared (a pod's CPU limit, or other processes)."""
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    """Most sequences decoded together in one forward pass."""
    max_queue_depth: int = Field(default=256, ge=1)
    """Most sequences waiting to join the batch; beyond it requests get 429 with Retry-After."""
    max_prompt_tokens: int = Field(default=2048, ge=1)
    """Longest accepted prompt, in tokens (characters); longer prompts get 400. Prompts longer than the
    model's context window are left-truncated to it (see docs/inference.md)."""
    max_completion_tokens: int = Field(default=512, ge=1)
    """Largest accepted `max_tokens`."""
    max_prompts_per_request: int = Field(default=16, ge=1)
    """Most prompts x `n` completions in one request."""
    request_timeout_s: float = Field(default=60.0, gt=0)
    """Time from arrival to the last token; after it the work is cancelled and the client gets 504."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest accepted request body; larger ones get 413."""
    drain_delay_s: float = Field(default=5.0, ge=0)
    """After SIGTERM: how long /readyz answers 503 while requests are still accepted, so that load balancers
    stop routing here before the listener closes. In-flight requests then finish before exit."""
    challenger_alias: str = "challenger"
    """Alias of the same registered model whose version serves `canary_percent` of the requests beside the
    champion (the version of the model URI's alias), in this process. "" turns the canary off. Only an alias URI
    (`models:/<name>@<alias>`) has a canary: a pinned version or a directory is always served alone."""
    canary_percent: float = 10.0
    """Share of the requests, in percent (0 to 100), that the challenger serves while one is loaded; 0 turns the
    canary off (the challenger is not even loaded)."""
    canary_sticky: bool = True
    """Route a request that names a `user` by a stable hash of it, so that a user keeps getting the same version
    while the share and the challenger stay the same; requests without a `user` are routed at random. False:
    every request at random."""
    test_faults: Literal["ignore", "allow"] = "ignore"
    """`allow` honours the `ml-platform.dev/test-fault` tag of a model version (`error:<fraction>` answers that
    share of its requests with 500, `slow:<seconds>` delays each), for end-to-end tests of canary decisions only;
    `ignore` logs a warning and serves the version normally. Never set it in a real deployment."""

    @property
    def canary_alias(self) -> str | None:
        """The challenger alias to poll, or None where there is no canary: turned off (no alias, or a share of 0),
        or a model URI that is not an alias."""
        match = MODEL_URI_RE.match(self.model_uri)
        if match is None or match["alias"] is None or not self.challenger_alias or not self.canary_percent:
            return None
        return self.challenger_alias

    @model_validator(mode="after")
    def _check(self) -> Settings:
        problems = []
        if self.max_queue_depth < self.max_prompts_per_request:
            problems.append(
                f"max_queue_depth={self.max_queue_depth} must be >= max_prompts_per_request="
                f"{self.max_prompts_per_request}, or some valid requests could never be queued"
            )
        if self.model_uri.startswith("models:") and not MODEL_URI_RE.match(self.model_uri):
            problems.append(
                f"model_uri={self.model_uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>"
            )
        if self.model_uri.startswith("models:") and not self.tracking_uri:
            problems.append("model_uri is a models:/ URI, so tracking_uri (or MLFLOW_TRACKING_URI) must be set")
        # Checked here rather than with Field(ge=, le=) so that the message says what the number means.
        if not (math.isfinite(self.canary_percent) and 0 <= self.canary_percent <= 100):
            problems.append(
                f"canary_percent={self.canary_percent:g}: the challenger's share of requests is a percentage; "
                "set it between 0 and 100 (0 turns the canary off)"
            )
        if self.challenger_alias and not ALIAS_RE.match(self.challenger_alias):
            problems.append(
                f"challenger_alias={self.challenger_alias!r}: an MLflow alias has no '/', '@' or spaces; "
                'set an alias name, or "" to turn the canary off'
            )
        match = MODEL_URI_RE.match(self.model_uri)
        if match and self.challenger_alias and match["alias"] == self.challenger_alias:
            problems.append(
                f"challenger_alias={self.challenger_alias!r} is the alias model_uri serves as champion; "
                'choose another alias, or "" to turn the canary off'
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self
