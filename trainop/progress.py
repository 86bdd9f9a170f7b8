"""Training progress from MLflow's REST API, never in the way of reconciliation.

The trainer tags its MLflow run with the TrainingJob's uid (train.yaml's tracking.tags) and, at every checkpoint,
with the checkpoint's path and step. `ProgressCache.get(uid, ...)` returns the last progress it has and, at most
once per `refresh_s`, starts a background fetch (`runs/search` by the uid tag, short timeouts): a missing, slow
or failing MLflow only means older (or no) progress in the status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx

from workloads.contracts import CHECKPOINT_PATH_TAG, CHECKPOINT_STEP_TAG, MODEL_VERSION_TAG, UID_TAG

log = logging.getLogger(__name__)


def progress_from_run(run: Mapping[str, Any], shape: tuple[int, int] | None, now: dt.datetime) -> dict[str, Any]:
    """The status fields one MLflow run (a `runs/search` item) gives: progress, latestCheckpoint, mlflowRunId,
    modelVersion. `shape` is (train.max_steps, tokens per step) of the run's train.yaml; the ETA comes from the
    latest tokens/s."""
    max_steps, tokens_per_step = shape or (None, None)
    data = run.get("data") or {}
    metrics = {m["key"]: m for m in data.get("metrics") or []}
    tags = {t["key"]: t["value"] for t in data.get("tags") or []}
    progress: dict[str, Any] = {}
    steps = [int(m.get("step", 0)) for m in metrics.values()]
    if steps:
        progress["step"] = max(steps)
    for key, field in (("train_loss", "trainLoss"), ("val_loss", "valLoss"), ("tokens_per_s", "tokensPerSecond")):
        if key in metrics:
            progress[field] = round(float(metrics[key]["value"]), 6)
    if max_steps:
        progress["maxSteps"] = max_steps
        if "step" in progress:
            progress["percent"] = min(100, int(100 * progress["step"] / max_steps))
            tps = progress.get("tokensPerSecond")
            if tps and tokens_per_step and progress["step"] < max_steps:
                eta = now + dt.timedelta(seconds=(max_steps - progress["step"]) * tokens_per_step / tps)
                progress["eta"] = eta.strftime("%Y-%m-%dT%H:%M:%SZ")
    out: dict[str, Any] = {"mlflowRunId": (run.get("info") or {}).get("run_id", "")}
    if progress:
        out["progress"] = progress
    if CHECKPOINT_PATH_TAG in tags:
        checkpoint: dict[str, Any] = {"path": tags[CHECKPOINT_PATH_TAG]}
        if tags.get(CHECKPOINT_STEP_TAG, "").isdigit():
            checkpoint["step"] = int(tags[CHECKPOINT_STEP_TAG])
        out["latestCheckpoint"] = checkpoint
    if MODEL_VERSION_TAG in tags:
        out["modelVersion"] = tags[MODEL_VERSION_TAG]
    return out


async def search_run(client: httpx.AsyncClient, base: str, uid: str) -> Mapping[str, Any] | None:
    """The newest MLflow run tagged with `uid`, in any experiment (None when there is none)."""
    experiments = await client.post(f"{base}/api/2.0/mlflow/experiments/search", json={"max_results": 1000})
    experiments.raise_for_status()
    ids = [e["experiment_id"] for e in experiments.json().get("experiments", [])]
    if not ids:
        return None
    runs = await client.post(
        f"{base}/api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": ids,
            "filter": f"tags.`{UID_TAG}` = '{uid}'",
            "max_results": 1,
            "order_by": ["attributes.start_time DESC"],
        },
    )
    runs.raise_for_status()
    found = runs.json().get("runs") or []
    return found[0] if found else None


class ProgressCache:
    """Last known MLflow fields per TrainingJob uid, refreshed in the background."""

    def __init__(self, tracking_uri: str, *, refresh_s: float = 10.0, timeout_s: float = 3.0) -> None:
        self.base = tracking_uri.rstrip("/")
        self.refresh_s = refresh_s
        self.timeout = httpx.Timeout(timeout_s)
        self._known: dict[str, dict[str, Any]] = {}
        self._fetched_at: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def get(self, uid: str, shape: tuple[int, int] | None) -> dict[str, Any]:
        """What is known now (maybe nothing); starts a refresh when the last one is older than refresh_s."""
        stale = time.monotonic() - self._fetched_at.get(uid, -1e9) >= self.refresh_s
        if self.base.startswith("http") and uid not in self._tasks and stale:
            self._fetched_at[uid] = time.monotonic()
            self._tasks[uid] = asyncio.create_task(self._refresh(uid, shape))
        return dict(self._known.get(uid, {}))

    def forget(self, uid: str) -> None:
        self._known.pop(uid, None)
        self._fetched_at.pop(uid, None)

    async def _refresh(self, uid: str, shape: tuple[int, int] | None) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                run = await asyncio.wait_for(search_run(client, self.base, uid), self.timeout.read or 3.0)
            if run is not None:
                self._known[uid] = progress_from_run(run, shape, dt.datetime.now(dt.UTC))
        except (httpx.HTTPError, TimeoutError, ValueError, KeyError) as err:
            log.info("MLflow progress of %s unavailable: %r", uid, err)
        finally:
            self._tasks.pop(uid, None)
