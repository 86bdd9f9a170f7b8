"""The gate's settings (environment variables `ROLLOUT_<FIELD>`), validated once at start: every problem is reported
together, each naming the variable and how to fix it."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rollout.decide import Thresholds


class SettingsError(ValueError):
    """Invalid settings; the message lists every problem."""


class Settings(BaseSettings):
    """Configuration of the one gate process."""

    model_config = SettingsConfigDict(env_prefix="ROLLOUT_", extra="ignore", frozen=True)

    # Required, but checked with the others (a missing field would stop pydantic before the other checks run).
    model_name: str = ""
    """The registered model whose aliases the gate watches (required)."""
    tracking_uri: str = ""
    """MLflow tracking (and registry) server (required), e.g. `http://mlflow:5000`."""
    champion_alias: str = "champion"
    """The alias the inference replicas serve as champion (their model URI's alias)."""
    challenger_alias: str = "challenger"
    """The alias of the version served beside it (their INFERENCE_CHALLENGER_ALIAS)."""
    targets: Annotated[tuple[str, ...], NoDecode] = ()
    """Base URLs of the inference replicas, comma-separated (`http://a:8000,http://b:8000`); `/metrics` is scraped."""
    interval_s: float = 10.0
    """Seconds between two scrapes (and two looks at the aliases)."""
    window_s: float = 300.0
    """Seconds a challenger is watched before it may be promoted; at least two intervals."""
    min_requests: int = 200
    """Challenger requests needed in the window before a verdict (promotion or rollback)."""
    max_error_rate_increase: float = 0.01
    """Largest allowed challenger 5xx share minus the champion's, absolute: 0 (no increase at all) to below 1."""
    max_latency_ratio: float = 1.2
    """Largest allowed challenger p95 latency / champion p95: 1.0 or more."""
    max_ttft_ratio: float = 1.2
    """Largest allowed challenger p95 time to first token / champion p95 (streams): 1.0 or more."""
    scrape_timeout_s: float = 5.0
    """Timeout of one scrape; a target that does not answer is skipped for that interval."""
    host: str = "0.0.0.0"
    """Address of the gate's own `/metrics` and `/healthz` (all interfaces: Prometheus and the kubelet's probe
come from outside the pod)."""
    port: int = 9100
    """Port of the gate's own `/metrics` and `/healthz`."""

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        problems = []

        def number(name: str, value: float, ok: bool, fix: str) -> None:
            if math.isnan(value) or math.isinf(value) or not ok:
                problems.append(f"ROLLOUT_{name.upper()}={value}: {fix}")

        if not self.model_name.strip():
            problems.append("ROLLOUT_MODEL_NAME is empty: set the registered model's name")
        if not self.tracking_uri.strip():
            problems.append("ROLLOUT_TRACKING_URI is empty: set the MLflow server's URL (http://mlflow:5000)")
        if self.champion_alias == self.challenger_alias:
            problems.append(
                f"ROLLOUT_CHALLENGER_ALIAS={self.challenger_alias!r} equals ROLLOUT_CHAMPION_ALIAS: use two aliases"
            )
        if not self.targets:
            problems.append("ROLLOUT_TARGETS is empty: give the replicas' base URLs, comma-separated")
        for target in self.targets:
            if not target.startswith(("http://", "https://")):
                problems.append(f"ROLLOUT_TARGETS: {target!r} is not an http(s) URL (e.g. http://10.0.0.5:8000)")
        number("interval_s", self.interval_s, self.interval_s > 0, "must be a number of seconds above 0")
        number("scrape_timeout_s", self.scrape_timeout_s, self.scrape_timeout_s > 0, "must be seconds above 0")
        number(
            "window_s",
            self.window_s,
            self.window_s >= 2 * self.interval_s,
            f"must be at least two intervals ({2 * self.interval_s:g} s with ROLLOUT_INTERVAL_S={self.interval_s:g}): "
            "a window of one scrape measures nothing",
        )
        if self.min_requests < 1:
            problems.append(
                f"ROLLOUT_MIN_REQUESTS={self.min_requests}: must be 1 or more; a verdict on no request is a guess"
            )
        number(
            "max_error_rate_increase",
            self.max_error_rate_increase,
            0 <= self.max_error_rate_increase < 1,
            "must be a share from 0 to below 1 (0.01 = one point more 5xx than the champion); "
            "1 or more could never be exceeded",
        )
        for name, value in (("max_latency_ratio", self.max_latency_ratio), ("max_ttft_ratio", self.max_ttft_ratio)):
            number(
                name,
                value,
                value >= 1.0,
                "must be 1.0 or more (1.2 = at most 20% slower than the champion); below 1 a challenger exactly as "
                "fast as the champion would be rolled back",
            )
        number("port", self.port, 0 <= self.port <= 65535, "must be a TCP port (0 to 65535)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            window_s=self.window_s,
            min_requests=self.min_requests,
            max_error_rate_increase=self.max_error_rate_increase,
            max_latency_ratio=self.max_latency_ratio,
            max_ttft_ratio=self.max_ttft_ratio,
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `overrides`, or SettingsError naming every problem."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        lines = []
        for error in err.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"ROLLOUT_{where.upper()}: {message}" if where else message)
        raise SettingsError("invalid rollout settings: " + "; ".join(lines)) from None
