"""Keeps the serving engines current: the first load (retried until it works), polling, atomic swaps, and the
canary's challenger beside the champion (loaded, refused, promoted or drained as the aliases move)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from inference.canary import CHALLENGER, CHAMPION, REFUSED_LOAD, Role, Router, incompatibility
from inference.engine import Engine
from inference.faults import fault_from_tags
from inference.loading import (
    Current,
    LoadedModel,
    ModelLoadError,
    ModelSource,
    load_directory,
    make_source,
    resolve_device,
)
from inference.metrics import Metrics
from inference.schemas import CanaryState, CanaryStatus
from inference.settings import Settings

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5


@dataclass(frozen=True, slots=True)
class Served:
    """The engine chosen for one request, the role its version plays, and the `model` id its responses carry."""

    engine: Engine
    role: Role
    model_id: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A challenger version that is not served, and why; kept until the challenger or the champion version changes
    (a failed version is tried again only then, not at every poll)."""

    version: str
    champion: str
    """The champion version it was checked against."""
    reason: str
    """The metric label (`inference.canary.REFUSED_*`)."""
    message: str


class ModelManager:
    """Owns the engines serving new requests (the champion's, and the challenger's while a canary runs) and the
    engines still finishing the requests of versions that no longer serve.

    Every change is an assignment on the event loop: requests that already hold an engine finish there, new
    requests go to the engines now assigned, and an engine that no longer serves is closed once its queue and batch
    are empty. So no request fails, and no stream is cut, because of a swap, a promotion or a rollback.

    Each version gets its own `Engine` (its own queue, batch and thread) rather than one scheduler for both: a batch
    runs one model's weights and key/value cache, so two versions could not share decoding steps anyway, and
    separate engines keep a slow or failing challenger from holding up the champion's batch and drain exactly as a
    swapped-out version always has.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.champion: Engine | None = None
        self.challenger: Engine | None = None
        self.refusal: Refusal | None = None
        self.last_error: str | None = "the model is still loading"
        self.router = Router(settings.canary_percent, settings.canary_sticky)
        self._no_challenger = "the champion is not loaded yet"
        self._draining: dict[Engine, asyncio.Task[bool]] = {}
        self._task: asyncio.Task[None] | None = None
        self._device = resolve_device(settings.device)
        self.source: ModelSource | None = None
        # Computed at each scrape over every engine, so that engines running side by side do not overwrite each other.
        metrics.queue_depth.set_function(lambda: sum(engine.queue_depth for engine in self._engines()))
        metrics.active_sequences.set_function(lambda: sum(engine.active_sequences for engine in self._engines()))

    @property
    def served_name(self) -> str:
        if self.settings.served_model_name:
            return self.settings.served_model_name
        return self.source.name if self.source is not None else ""

    @property
    def challenger_id(self) -> str:
        """The `model` id of the challenger's responses, which a client may also send to be served by it alone."""
        return f"{self.served_name}@{self.settings.challenger_alias}"

    def route(self, user: str | None) -> Served:
        """The engine for a request to the served model id (the champion must be loaded)."""
        assert self.champion is not None
        challenger = self.challenger
        if challenger is not None and self.router.to_challenger(user, challenger.loaded.version):
            return Served(challenger, CHALLENGER, self.challenger_id)
        return Served(self.champion, CHAMPION, self.served_name)

    def canary_status(self) -> CanaryStatus:
        champion, challenger, refusal = self.champion, self.challenger, self.refusal
        state: CanaryState
        if self.settings.canary_alias is None:
            state, reason = "off", self._why_off()
        elif challenger is not None:
            state, reason = "serving", None
        elif refusal is not None:
            state, reason = "refused", refusal.message
        else:
            state, reason = "no_challenger", self._no_challenger
        return CanaryStatus(
            state=state,
            challenger_alias=self.settings.canary_alias,
            champion=champion.loaded.version if champion is not None else None,
            challenger=challenger.loaded.version if challenger is not None else None,
            percent=self.settings.canary_percent if challenger is not None else 0.0,
            configured_percent=self.settings.canary_percent,
            sticky=self.settings.canary_sticky,
            refused=refusal.version if refusal is not None else None,
            reason=reason,
            draining=sorted(engine.loaded.version for engine in self._draining),
        )

    def _why_off(self) -> str:
        if not self.settings.challenger_alias:
            return "challenger_alias is empty"
        if not self.settings.canary_percent:
            return "canary_percent is 0"
        return "only a models:/<name>@<alias> model URI has a canary"

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_current(), name="model-manager")

    async def stop(self) -> None:
        """Stop polling; let every engine finish its queued and running sequences, then end its thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        engines = [engine for engine in (self.champion, self.challenger) if engine is not None]
        if self._draining:
            await asyncio.gather(*self._draining.values(), return_exceptions=True)
        for engine in engines:
            await asyncio.to_thread(engine.close, self.settings.request_timeout_s)
        self.champion = self.challenger = None

    def _engines(self) -> list[Engine]:
        serving = [engine for engine in (self.champion, self.challenger) if engine is not None]
        return serving + list(self._draining)

    async def _keep_current(self) -> None:
        # Polling must outlive any failure: the current versions keep serving, and the next try waits twice as
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
        self.metrics.model_polls.inc()
        current = await asyncio.to_thread(source.current)
        await self._follow_champion(source, current.champion)
        await self._follow_challenger(source, current)
        self.last_error = None
        assert self.champion is not None
        serving = {CHAMPION: self.champion.loaded}
        if self.challenger is not None:
            serving[CHALLENGER] = self.challenger.loaded
        self.metrics.set_models(self.champion.loaded.name, {role: loaded.version for role, loaded in serving.items()})
        # Engines hold their weights in memory, so only the served versions' files need stay; without this every
        # swap would leave a version behind in the (size-limited) cache. The first load clears what an earlier
        # process left. A failure here must not undo the swap: the next one tries again.
        try:
            await asyncio.to_thread(source.prune, {loaded.version for loaded in serving.values()})
        except OSError as exc:
            log.warning("could not prune the model cache: %s", exc)

    async def _follow_champion(self, source: ModelSource, version: str) -> None:
        if self.champion is not None and self.champion.loaded.version == version:
            return
        previous, challenger = self.champion, self.challenger
        promoted = challenger is not None and challenger.loaded.version == version
        if challenger is not None and promoted:
            # The challenger's engine already serves that version, warm, and keeps its in-flight work.
            self.champion, self.challenger = challenger, None
        else:
            self.champion = self._engine(await asyncio.to_thread(self._load, source, version))
        name = self.champion.loaded.name
        if previous is None:
            log.info("serving %s version %s", name, version)
            return
        self.metrics.model_swaps.inc()
        how = "promoted the challenger" if promoted else "swapped"
        log.info("%s: %s from version %s to %s", how, name, previous.loaded.version, version)
        self._retire(previous)

    async def _follow_challenger(self, source: ModelSource, current: Current) -> None:
        champion = self.champion
        assert champion is not None  # _follow_champion set it or raised
        alias = self.settings.canary_alias
        wanted = current.challenger
        if alias is None or wanted is None or wanted == current.champion:
            if alias is not None:
                self._no_challenger = (
                    f"the alias {alias!r} is not set" if wanted is None
                    else f"the alias {alias!r} points to the champion's version {wanted}"
                )  # fmt: skip
            self.refusal = None
            self._drop_challenger("its alias no longer points to it")
            return
        if self.challenger is not None and self.challenger.loaded.version == wanted:
            problem = incompatibility(champion.loaded, self.challenger.loaded)
            if problem is not None:  # the champion changed under it
                self._refuse(wanted, champion.loaded.version, *problem)
            return
        refused = self.refusal
        if refused is not None and (refused.version, refused.champion) == (wanted, champion.loaded.version):
            return
        try:
            loaded = await asyncio.to_thread(self._load, source, wanted)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            self._refuse(wanted, champion.loaded.version, REFUSED_LOAD, f"it cannot be loaded: {message}")
            return
        problem = incompatibility(champion.loaded, loaded)
        if problem is not None:
            self._refuse(wanted, champion.loaded.version, *problem)
            return
        self._drop_challenger(f"the alias {alias!r} moved to version {wanted}")
        self.refusal = None
        self.challenger = self._engine(loaded)
        log.info(
            "canary: version %s serves %g%% of the requests beside champion version %s",
            wanted, self.settings.canary_percent, champion.loaded.version,
        )  # fmt: skip

    def _refuse(self, version: str, champion: str, reason: str, message: str) -> None:
        """Serve the champion alone: never the refused version, nor a challenger its alias has moved away from."""
        self.refusal = Refusal(version, champion, reason, message)
        self.metrics.challenger_refusals.labels(reason=reason).inc()
        log.warning("canary: challenger version %s refused, the champion serves every request: %s", version, message)
        self._drop_challenger("it was refused")

    def _drop_challenger(self, why: str) -> None:
        if self.challenger is None:
            return
        dropped, self.challenger = self.challenger, None
        log.info("canary: draining challenger version %s: %s", dropped.loaded.version, why)
        self._retire(dropped)

    def _retire(self, engine: Engine) -> None:
        """Close `engine` in a worker thread once its queue and batch are empty (new requests no longer reach it)."""
        retire = asyncio.create_task(asyncio.to_thread(engine.close))
        self._draining[engine] = retire
        retire.add_done_callback(lambda _: self._draining.pop(engine, None))

    def _engine(self, loaded: LoadedModel) -> Engine:
        return Engine(
            loaded,
            max_batch_size=self.settings.max_batch_size,
            max_queue_depth=self.settings.max_queue_depth,
            metrics=self.metrics,
        )

    def _load(self, source: ModelSource, version: str) -> LoadedModel:
        directory = source.fetch(version)
        fault = fault_from_tags(
            source.version_tags(version), allowed=self.settings.test_faults == "allow", version=version
        )
        loaded = load_directory(directory, source.name, version, self._device)
        return loaded if fault is None else dataclasses.replace(loaded, fault=fault)
