"""Dynamic batching: a bounded queue in front of a `BatchDecoder` driven by one background thread.

Requests are split into sequences that wait in the queue until a batch slot is free; between decoding steps the
thread admits waiting sequences and drops finished or cancelled ones, so a request never waits for another
request's whole generation, only for one step. The model runs off the event loop, which stays free to accept
connections and stream tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

from inference.decoding import FINISH_CANCELLED, FINISH_ERROR, BatchDecoder, Sequence
from inference.loading import LoadedModel
from inference.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue cannot take the request's sequences now; the client should retry later (429)."""


class EngineClosedError(Exception):
    """The engine no longer accepts work (its model was swapped out, or the server is stopping)."""


class Engine:
    """Serves one loaded model version; `close()` lets in-flight sequences finish, then stops the thread.

    Its queue depth and batch are read by the `ModelManager`, which adds them up over every engine for the gauges
    (several engines run at once: the champion, a canary's challenger, versions still draining)."""

    def __init__(self, loaded: LoadedModel, *, max_batch_size: int, max_queue_depth: int, metrics: Metrics) -> None:
        self.loaded = loaded
        self.created = int(time.time())
        """When this version started serving (Unix seconds), as OpenAI's `created`."""
        self.max_queue_depth = max_queue_depth
        self.metrics = metrics
        self.decoder = BatchDecoder(loaded.model, loaded.tokenizer, max_batch_size)
        self._waiting: deque[Sequence] = deque()
        self._wakeup = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{loaded.name}-{loaded.version}", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active_sequences(self) -> int:
        return len(self.decoder.rows)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self.decoder.rows

    def submit(self, sequences: Iterable[Sequence]) -> None:
        """Queue all of `sequences` or none of them (QueueFullError, EngineClosedError)."""
        batch = list(sequences)
        with self._wakeup:
            if self._closing:
                raise EngineClosedError(f"model version {self.loaded.version} is no longer serving")
            if len(self._waiting) + len(batch) > self.max_queue_depth:
                raise QueueFullError(
                    f"the queue holds {len(self._waiting)} of at most {self.max_queue_depth} waiting sequences"
                )
            self._waiting.extend(batch)
            self._wakeup.notify()

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting work, let queued and running sequences finish; True if the thread ended in time."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        decoder = self.decoder
        while True:
            with self._wakeup:
                while not self._waiting and not decoder.rows and not self._closing:
                    self._wakeup.wait()
                if self._closing and not self._waiting and not decoder.rows:
                    return
                while self._waiting and decoder.free_slots:
                    seq = self._waiting.popleft()
                    if seq.cancelled:
                        self._finish(seq, FINISH_CANCELLED)
                    else:
                        decoder.add(seq)
            self._step()

    def _step(self) -> None:
        decoder = self.decoder
        self._retire()
        batch = len(decoder.rows)
        if not batch:
            return
        self.metrics.batch_size.observe(batch)
        try:
            decoder.step()
        except Exception:
            # A failed step (a bug, or out of memory) must not strand the clients waiting on this batch.
            log.exception("decoding step failed; failing the %d sequences of the batch", batch)
            for seq in decoder.rows:
                seq.finish_reason = FINISH_ERROR
                self._notify(seq)
        else:
            self.metrics.generated_tokens.inc(batch)
            for seq in decoder.rows:
                if seq.stream or seq.finish_reason is not None:
                    self._notify(seq)
        self._retire()

    def _retire(self) -> None:
        """Free the slots of finished rows (already notified) and of cancelled rows (notified here)."""
        cancelled = [seq for seq in self.decoder.rows if seq.cancelled and seq.finish_reason is None]
        self.decoder.remove_finished()
        for seq in cancelled:
            log.debug("cancelled a sequence after %d tokens", seq.completion_tokens)
            self._finish(seq, FINISH_CANCELLED)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self._notify(seq)

    @staticmethod
    def _notify(seq: Sequence) -> None:
        if seq.listener is not None:
            try:
                seq.listener(seq)
            except Exception:
                log.exception("a sequence listener failed")
