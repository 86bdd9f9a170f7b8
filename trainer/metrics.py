"""Prometheus metrics of one training rank, served over HTTP on `metrics.host`:`metrics.port` + the rank's slot.

Every series carries a `rank` label. Updating them costs a few microseconds per step (no host sync: the loss
gauges move only on logging steps, when the loop has the loss on the host anyway). The names follow
docs/observability.md: `trainer_` prefix, units in the name, counters ending in `_total`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
PHASES = ("data", "forward_backward", "optimizer", "sync")
"""Where a step's time goes: batch sampling, forward + backward (DDP's gradient all-reduce runs inside backward),
clipping + optimizer step, and the per-step collective that shares the loss and the stop vote."""


def metrics_port(base: int, rank: int, local_world_size: int) -> int:
    """The port of this rank: `base` plus its slot on the machine (rank % ranks per machine), so the ranks of one
    pod, or of `launch --nproc N` on one machine, do not collide; 0 stays 0 (metrics off)."""
    return base + rank % max(1, local_world_size) if base else 0


class TrainerMetrics:
    """The rank's metric families in a registry of their own (several trainers can live in one test process)."""

    def __init__(self, rank: int) -> None:
        self.registry = CollectorRegistry()
        self.rank = str(rank)
        registry = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["rank"], registry=registry)

        self.step = gauge("trainer_step", "Last completed training step.")
        self.max_steps = gauge("trainer_max_steps", "Steps the run trains to (train.max_steps).")
        self.world_size = gauge("trainer_world_size", "Ranks in the process group.")
        self.resumed_from_step = gauge(
            "trainer_resumed_from_step", "Step of the checkpoint this process resumed from (0: a fresh start)."
        )
        self.train_loss = gauge("trainer_train_loss", "Training loss of the last logging step, mean over ranks.")
        self.val_loss = gauge("trainer_val_loss", "Validation loss of the last evaluation.")
        self.tokens_per_second = gauge(
            "trainer_tokens_per_second", "Global training tokens per second over the last logging window."
        )
        self.last_step_timestamp = gauge(
            "trainer_last_step_timestamp_seconds", "Unix time at which the last training step completed."
        )
        self.checkpoint_size = gauge("trainer_checkpoint_size_bytes", "Size of the last checkpoint written.")
        self.steps = Counter("trainer_steps", "Training steps completed by this process.", ["rank"], registry=registry)
        self.checkpoints = Counter(
            "trainer_checkpoints", "Checkpoints written by this process.", ["rank"], registry=registry
        )
        self.phase_seconds = Counter(
            "trainer_step_phase_seconds", "Training-step time by phase: " + ", ".join(PHASES) + ".",
            ["rank", "phase"], registry=registry,
        )
        self.step_duration = Histogram(
            "trainer_step_duration_seconds", "Wall time of one training step.", ["rank"],
            buckets=STEP_BUCKETS, registry=registry,
        )
        self.checkpoint_duration = Histogram(
            "trainer_checkpoint_save_duration_seconds", "Time to write one checkpoint (rank 0).", ["rank"],
            buckets=CHECKPOINT_BUCKETS, registry=registry,
        )
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        # Bind the label once: `.labels()` on every step would cost a dict lookup and a lock per call.
        self._step = self.step.labels(self.rank)
        self._steps = self.steps.labels(self.rank)
        self._last_step = self.last_step_timestamp.labels(self.rank)
        self._duration = self.step_duration.labels(self.rank)
        self._phases = {phase: self.phase_seconds.labels(self.rank, phase) for phase in PHASES}
        self._server: object | None = None

    def serve(self, host: str, port: int, stream: TextIO | None = None) -> str | None:
        """Serve /metrics on host:port and return its URL; None when `port` is 0. A port already in use is
        reported on `stream` and training goes on without the endpoint (metrics must never stop a run)."""
        if not port:
            return None
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            print(
                f"rank {self.rank}: metrics endpoint {host}:{port} not started ({exc.strerror}); set metrics.port "
                "to a free port, or 0 to turn metrics off", file=stream or sys.stderr, flush=True,
            )
            return None
        self._server = server
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/metrics"

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]

    def started(self, *, max_steps: int, world_size: int, resumed_from_step: int) -> None:
        self.max_steps.labels(self.rank).set(max_steps)
        self.world_size.labels(self.rank).set(world_size)
        self.resumed_from_step.labels(self.rank).set(resumed_from_step)
        self._step.set(resumed_from_step)
        # The stall alert measures from here until the first step: 0 would read as "stalled since 1970".
        self._last_step.set(time.time())

    def step_done(self, step: int, seconds: float, phases: Mapping[str, float]) -> None:
        self._step.set(step)
        self._steps.inc()
        self._last_step.set(time.time())
        self._duration.observe(seconds)
        for phase, spent in phases.items():
            self._phases[phase].inc(spent)

    def logged(self, *, train_loss: float, tokens_per_s: float) -> None:
        self.train_loss.labels(self.rank).set(train_loss)
        self.tokens_per_second.labels(self.rank).set(tokens_per_s)

    def evaluated(self, val_loss: float) -> None:
        self.val_loss.labels(self.rank).set(val_loss)

    def checkpoint_saved(self, path: Path, seconds: float) -> None:
        self.checkpoints.labels(self.rank).inc()
        self.checkpoint_duration.labels(self.rank).observe(seconds)
        self.checkpoint_size.labels(self.rank).set(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()))
