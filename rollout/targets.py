"""Where the inference replicas are. A provider answers the base URLs to scrape now; the static one reads them from
the settings. A Kubernetes EndpointSlice provider (the ready addresses of the inference Service) can implement the
same protocol later without the gate changing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class TargetProvider(Protocol):
    def targets(self) -> Sequence[str]:
        """Base URLs (`http://host:port`) of the replicas to scrape now; the list may change between calls."""
        ...


@dataclass(frozen=True, slots=True)
class StaticTargets:
    """A fixed list (ROLLOUT_TARGETS)."""

    urls: tuple[str, ...]

    def targets(self) -> Sequence[str]:
        return self.urls
