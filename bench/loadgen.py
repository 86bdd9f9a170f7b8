"""Closed-loop load generator for `POST /v1/completions`, meant to run in its own process.

`concurrency` clients each keep one request in flight on their own keep-alive connection: send, wait for the
whole response, send the next. It speaks just enough HTTP/1.1 over asyncio streams to stay light next to the
server on a small machine (a full HTTP client would take CPU from the server it measures). Prints one JSON
object: latencies of successful requests, counts by status, tokens, and the measured wall time.

    python bench/loadgen.py --url http://127.0.0.1:8080 --model demo --concurrency 16 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Results:
    latencies_s: list[float] = field(default_factory=list)
    """Successful requests that started after warm-up."""
    statuses: dict[str, int] = field(default_factory=dict)
    rejected_latencies_s: list[float] = field(default_factory=list)
    """How fast 429s came back."""
    completion_tokens: int = 0
    timeouts: int = 0
    connection_errors: int = 0


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def client(
    url: str, body: bytes, results: Results, measure_from: float, stop_at: float, timeout_s: float
) -> None:
    parts = urlsplit(url)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while (started := time.perf_counter()) < stop_at:
            writer.write(head + body)
            try:
                status, payload = await asyncio.wait_for(read_response(reader), timeout_s)
            except TimeoutError:
                results.timeouts += 1
                writer.close()
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                continue
            except (ConnectionError, asyncio.IncompleteReadError):
                results.connection_errors += 1
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                continue
            elapsed = time.perf_counter() - started
            if started < measure_from:
                continue
            results.statuses[str(status)] = results.statuses.get(str(status), 0) + 1
            if status == 200:
                results.latencies_s.append(elapsed)
                results.completion_tokens += json.loads(payload)["usage"]["completion_tokens"]
            elif status == 429:
                results.rejected_latencies_s.append(elapsed)
                await asyncio.sleep(0.05)  # a polite client backs off a little before retrying
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = json.dumps(
        {"model": args.model, "prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 1.0}
    ).encode()
    results = Results()
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    await asyncio.gather(
        *(client(args.url, body, results, measure_from, stop_at, args.timeout) for _ in range(args.concurrency))
    )
    # Requests still running at stop_at finish after it; count the window as ending with the last of them.
    wall = time.perf_counter() - measure_from
    return {
        "concurrency": args.concurrency,
        "wall_s": wall,
        "latencies_s": results.latencies_s,
        "rejected_latencies_s": results.rejected_latencies_s,
        "statuses": results.statuses,
        "completion_tokens": results.completion_tokens,
        "timeouts": results.timeouts,
        "connection_errors": results.connection_errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt", default="def main():\n    ")
    parser.add_argument("--timeout", type=float, default=60.0, help="client-side timeout per request")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
