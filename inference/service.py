"""Keeps the serving engine current: the first load (retried until it works), polling, and atomic swaps."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from inference.engine import Engine
from inference.loading import LoadedModel, ModelLoadError, ModelSource, load_directory, make_source, resolve_device
from inference.metrics import Metrics
from inference.settings import Settings

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5


class ModelManager:
    """Owns the engine serving new requests and the engines still finishing requests of older versions.

    A swap is one assignment on the event loop: requests that already hold the old engine finish there, new
    requests go to the new one, and the old engine is closed once its queue and batch are empty. So no request
    fails because of a swap.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine: Engine | None = None
        self.last_error: str | None = "the model is still loading"
        self._retired: set[asyncio.Task[bool]] = set()
        self._task: asyncio.Task[None] | None = None
        self._device = resolve_device(settings.device)
        self.source: ModelSource | None = None

    @property
    def served_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return self.source.name if self.source is not None else ""

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_current(), name="model-manager")

    async def stop(self) -> None:
        """Stop polling; let every engine finish its queued and running sequences, then end its thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        engines = [self.engine] if self.engine is not None else []
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        for engine in engines:
            await asyncio.to_thread(engine.close, self.settings.request_timeout_s)
        self.engine = None

    async def _keep_current(self) -> None:
        # Polling must outlive any failure: the current version keeps serving, and the next try waits twice as
        # long as the last (from FIRST_RETRY_S up to the poll interval) until one succeeds.
        while True:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential(multiplier=FIRST_RETRY_S, max=self.settings.poll_interval_s),
                before_sleep=self._record_failure,
            ):
                with attempt:
                    if self.source is None:
                        self.source = make_source(self.settings)
                    await self._refresh(self.source)
            assert self.source is not None  # set by the attempt that succeeded
            if not self.source.pollable:
                return
            await asyncio.sleep(self.settings.poll_interval_s)

    def _record_failure(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is None:
            return
        self.metrics.model_load_failures.inc()
        self.last_error = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        trace = None if isinstance(exc, ModelLoadError) else exc  # an unexpected error gets its traceback logged
        log.warning("%s; retrying in %.1fs", self.last_error, delay, exc_info=trace)

    async def _refresh(self, source: ModelSource) -> None:
        version = await asyncio.to_thread(source.current_version)
        if self.engine is not None and self.engine.loaded.version == version:
            return
        loaded = await asyncio.to_thread(self._load, source, version)
        engine = Engine(
            loaded,
            max_batch_size=self.settings.max_batch_size,
            max_queue_depth=self.settings.max_queue_depth,
            metrics=self.metrics,
        )
        previous, self.engine = self.engine, engine
        self.last_error = None
        self.metrics.set_model(loaded.name, loaded.version)
        if previous is None:
            log.info("serving %s version %s", loaded.name, loaded.version)
        else:
            self.metrics.model_swaps.inc()
            log.info("swapped %s from version %s to %s", loaded.name, previous.loaded.version, loaded.version)
            retire = asyncio.create_task(asyncio.to_thread(previous.close))
            self._retired.add(retire)
            retire.add_done_callback(self._retired.discard)
        # Engines hold their weights in memory, so only the served version's files need stay; without this every
        # swap would leave a version behind in the (size-limited) cache. The first load clears what an earlier
        # process left. A failure here must not undo the swap: the next one tries again.
        try:
            await asyncio.to_thread(source.prune, loaded.version)
        except OSError as exc:
            log.warning("could not prune the model cache: %s", exc)

    def _load(self, source: ModelSource, version: str) -> LoadedModel:
        directory = source.fetch(version)
        return load_directory(directory, source.name, version, self._device)
