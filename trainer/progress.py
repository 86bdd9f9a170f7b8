"""Rank 0's progress reporting: a tqdm bar on a terminal, plain log lines in pods (no TTY)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from tqdm import tqdm


def format_metrics(metrics: Mapping[str, float]) -> str:
    return " ".join(f"{key} {value:.4g}" for key, value in metrics.items())


class Progress:
    """Reports steps `initial + 1 .. total`; silent when `enabled` is false (ranks other than 0)."""

    def __init__(
        self, *, total: int, initial: int, log_every: int, enabled: bool, stream: TextIO | None = None
    ) -> None:
        self.stream = sys.stdout if stream is None else stream
        self.enabled = enabled
        self.log_every = log_every
        self.total = total
        interactive = enabled and self.stream.isatty()
        self.bar = tqdm(total=total, initial=initial, file=self.stream, unit="step") if interactive else None

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Step `step` finished; `metrics` are shown when it is a logging step (non-empty)."""
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix({key: f"{value:.4g}" for key, value in metrics.items()}, refresh=False)
        elif self.enabled and metrics:
            self.message(f"step {step}/{self.total} {format_metrics(metrics)}")

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
