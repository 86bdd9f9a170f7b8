"""A bounded burst of completions against the real inference server, timed by the client and by the server's own
`/metrics` (read before and after), and the figures the demo draws from it (demo/figures.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from demo import promtext

ROUTE = "/v1/completions"
LATENCY = "inference_request_duration_seconds"
GENERATED = "inference_generated_tokens_total"
QUANTILES = (0.5, 0.95, 0.99)
PROMPTS = ("The ", "def ", "import ", "class ", "In Python, ", "A list ", "To install ", "Return ")
MAX_TOKENS = (8, 16, 24, 32)
"""max_tokens of the requests, in turn: unequal lengths, so tokens/s is not requests/s times a constant."""


@dataclass(frozen=True)
class Request:
    """One request of the burst, as the client saw it."""

    started_s: float
    """When it was sent, in seconds since the burst began."""
    latency_s: float
    """Until the whole response was read."""
    status: int
    """HTTP status; 0: no usable response (timeout, connection refused, a body without `usage`)."""
    tokens: int
    """Completion tokens in the response's usage (0 unless 200)."""

    @property
    def finished_s(self) -> float:
        return self.started_s + self.latency_s


@dataclass(frozen=True)
class Burst:
    """The burst, the client's view and the server's (`/metrics` before and after)."""

    requests: list[Request]
    duration_s: float
    server_latency: promtext.Buckets
    """The increase of the route's latency histogram over the burst."""
    server_tokens: float
    """The increase of inference_generated_tokens_total over the burst."""

    @property
    def ok(self) -> list[Request]:
        return [r for r in self.requests if r.status == 200]

    def server_quantiles(self) -> dict[float, float]:
        """Estimated from the server's histogram, as PromQL would: only as fine as its buckets."""
        return {q: promtext.histogram_quantile(q, self.server_latency) for q in QUANTILES}

    def client_quantiles(self) -> dict[float, float]:
        """Of the successful requests' own latencies (linear interpolation between the closest ranks)."""
        return {q: percentile([r.latency_s for r in self.ok], q) for q in QUANTILES}

    def summary(self) -> str:
        failed = len(self.requests) - len(self.ok)
        server, client = (" ".join(f"p{round(q * 100)} {s:.3g}s" for q, s in found.items())
                          for found in (self.server_quantiles(), self.client_quantiles()))  # fmt: skip
        return (
            f"{len(self.ok)}/{len(self.requests)} ok{f' ({failed} failed)' if failed else ''} in "
            f"{self.duration_s:.1f}s: {len(self.ok) / self.duration_s:.1f} requests/s, "
            f"{self.server_tokens / self.duration_s:.0f} generated tokens/s; latency {server} (server histogram, "
            f"interpolated in its buckets), client {client}"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile of `values` (NaN for none), interpolating linearly between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def scrape(base_url: str, timeout_s: float = 10.0) -> str:
    response = httpx.get(f"{base_url}/metrics", timeout=timeout_s)
    response.raise_for_status()
    return response.text


def burst(base_url: str, model: str, *, requests: int, concurrency: int, timeout_s: float = 60.0) -> Burst:
    """`requests` completions (max_tokens from MAX_TOKENS in turn), `concurrency` at a time, each bounded by
    `timeout_s`; failures are recorded, not raised. The server's metrics are read just before and just after."""
    before = scrape(base_url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        began = time.perf_counter()

        def one(i: int) -> Request:
            body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": MAX_TOKENS[i % len(MAX_TOKENS)],
                    "temperature": 0.8, "seed": i}  # fmt: skip
            sent = time.perf_counter()
            try:
                response = client.post(ROUTE, json=body)
                status = response.status_code
                tokens = int(response.json()["usage"]["completion_tokens"]) if status == 200 else 0
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                status, tokens = 0, 0
            answered = time.perf_counter()
            return Request(started_s=sent - began, latency_s=answered - sent, status=status, tokens=tokens)

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="burst") as pool:
            timed = list(pool.map(one, range(requests)))
        duration = time.perf_counter() - began
    after = scrape(base_url)
    latency = [promtext.buckets(text, LATENCY, {"route": ROUTE}) for text in (before, after)]
    tokens = promtext.value(after, GENERATED) - promtext.value(before, GENERATED)
    return Burst(timed, duration, promtext.bucket_increase(*latency), tokens)


def throughput(requests: Sequence[Request], bin_s: float) -> list[tuple[float, float, float]]:
    """(end of window, requests/s, completion tokens/s) of the successful requests, by when they finished, in
    windows of `bin_s` from the start of the burst."""
    ok = [r for r in requests if r.status == 200]
    if not ok:
        return []
    bins = max(1, math.ceil(max(r.finished_s for r in ok) / bin_s))
    counts, tokens = [0] * bins, [0] * bins
    for r in ok:
        i = min(bins - 1, int(r.finished_s / bin_s))
        counts[i] += 1
        tokens[i] += r.tokens
    return [((i + 1) * bin_s, counts[i] / bin_s, tokens[i] / bin_s) for i in range(bins)]
