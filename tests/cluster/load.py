"""A steady load of OpenAI completions against the inference Service while the platform changes under it, counted
per phase: every request is a new connection (so the Service picks a ready endpoint for each, as a load balancer
does), a share of them streaming. A request fails when it is refused, errors, answers anything but 200, or (a
stream) ends before `data: [DONE]`; nothing is retried."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import httpx2

STREAMING_SHARE = 3  # of every 8 clients


@dataclass
class Phase:
    """What the clients saw between two `Load.phase` calls."""

    name: str
    served: int = 0
    failed: int = 0
    streams_cut: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        top = "; ".join(f"{n} x {why}" for why, n in self.failures.most_common(5))
        return (f"{self.name}: {self.served} served, {self.failed} failed, {self.streams_cut} streams cut in "
                f"{self.seconds:.0f} s{' (' + top + ')' if top else ''}")  # fmt: skip


class Load:
    """`clients` threads sending completions to `url` (the Service, through a forward) until `stop`."""

    def __init__(
        self,
        url: str,
        model: str,
        clients: int = 8,
        max_tokens: int = 24,
        client: Callable[..., httpx.Client | httpx2.Client] = httpx.Client,
    ) -> None:
        self.url = url
        self.client = client
        """Makes each request's client (given timeout and headers): tests/cluster/tls.py https_client for HTTPS."""
        self.model = model
        self.clients = clients
        self.max_tokens = max_tokens
        self.phases: list[Phase] = []
        self._current = Phase("start")
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def phase(self, name: str) -> Phase:
        """End the current phase (returned) and start counting `name`."""
        with self._lock:
            done, self._current = self._current, Phase(name)
            now = time.monotonic()
            done.seconds, self._started = now - self._started, now
        self.phases.append(done)
        return done

    def stop(self) -> Phase:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)
        return self.phase("stopped")

    def _record(self, ok: bool, why: str = "", cut: bool = False) -> None:
        with self._lock:
            phase = self._current
            if ok:
                phase.served += 1
            else:
                phase.failed += 1
                phase.streams_cut += int(cut)
                phase.failures[why[:160]] += 1

    def _client(self, index: int) -> None:
        stream = index % 8 < STREAMING_SHARE
        body = {"model": self.model, "prompt": f"The {index} ", "max_tokens": self.max_tokens, "stream": stream}
        while not self._stop.is_set():
            try:
                # A new connection per request (Connection: close), each routed by the Service afresh.
                with self.client(timeout=90, headers={"Connection": "close"}) as client:
                    if stream:
                        self._stream(client, body)
                    else:
                        response = client.post(f"{self.url}/v1/completions", json=body)
                        if response.status_code != 200:
                            self._record(False, f"HTTP {response.status_code}: {response.text[:100]}")
                        else:
                            self._record(bool(response.json()["choices"][0]["text"]), "an empty completion")
            except (httpx.HTTPError, httpx2.HTTPError) as err:
                self._record(False, f"{type(err).__name__}: {err}", cut=stream)

    def _stream(self, client: httpx.Client | httpx2.Client, body: dict[str, object]) -> None:
        with client.stream("POST", f"{self.url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                self._record(False, f"HTTP {response.status_code}: {response.text[:100]}")
                return
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        if not lines or lines[-1] != "data: [DONE]":
            self._record(False, f"stream ended after {len(lines)} events without [DONE]", cut=True)
        else:
            self._record(True)
