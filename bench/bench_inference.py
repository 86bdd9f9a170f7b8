"""Inference benchmark: the served model under closed-loop load, against raw in-process batched generation.

1. Trains a model of the demo shape (4 layers, 4 heads, 128 wide, block 64) for a few steps; only its speed
   matters, not its text.
2. Raw generate: `inference.decoding.generate` in this process at batch sizes 1, 4, 16, 64 (64 new tokens),
   the limit this machine allows.
3. Starts `python -m inference serve` and drives it with `bench/loadgen.py` (its own process) at concurrency
   1, 4, 16, 64, 64 new tokens per request.
4. Overload: a server with a small queue under more clients than batch slots plus queue, to show 429s instead
   of timeouts.

    .venv/bin/python bench/bench_inference.py [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import httpx
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from inference.decoding import BatchDecoder, SamplingParams, generate  # noqa: E402
from inference.loading import load_directory  # noqa: E402
from tinygpt import saved  # noqa: E402
from tinygpt.config import GPTConfig  # noqa: E402
from tinygpt.model import GPT  # noqa: E402
from tinygpt.saved import COMPLETE_FILE  # noqa: E402
from tinygpt.tokenizer import CharTokenizer  # noqa: E402

DEMO_SHAPE = {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128}
NEW_TOKENS = 64
PROMPT = "def main():\n    "
LEVELS = (1, 4, 16, 64)
DOCS = REPO_ROOT / "docs" / "benchmarks.md"


def train_demo_model(root: Path, steps: int) -> Path:
    torch.manual_seed(0)
    corpus = "\n".join(topics[k] for k in sorted(topics))
    tokenizer = CharTokenizer.from_text(corpus)
    data = torch.tensor(tokenizer.encode(corpus))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **DEMO_SHAPE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    block = DEMO_SHAPE["block_size"]
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (16,))
        x = torch.stack([data[s : s + block] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + block] for s in starts])
        _, loss = model(x, y)
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    directory = root / f"step-{steps:08d}"
    saved.save(model, tokenizer, directory)
    (directory / COMPLETE_FILE).write_text("")
    return directory


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_raw(model_dir: Path, repeats: int, levels: tuple[int, ...] = LEVELS) -> list[dict[str, float]]:
    loaded = load_directory(model_dir, "demo", "raw", torch.device("cpu"))
    prompt = loaded.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0)
    rows = []
    for batch in levels:
        decoder = BatchDecoder(loaded.model, loaded.tokenizer, batch)
        generate(decoder, [prompt] * batch, params)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            generate(decoder, [prompt] * batch, params)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        rows.append({"batch": batch, "latency_s": median, "tokens_per_s": batch * NEW_TOKENS / median})
        print(f"raw batch={batch}: {median * 1000:.1f} ms per batch, {batch * NEW_TOKENS / median:.0f} tok/s")
    return rows


class Server:
    def __init__(self, model_root: Path, port: int, **env: str) -> None:
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "INFERENCE_MODEL_URI": str(model_root),
            "INFERENCE_PORT": str(port),
            "INFERENCE_HOST": "127.0.0.1",
            **env,
        }
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference", "serve", "--log-level", "warning"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("inference server did not become ready")
            time.sleep(0.2)
        self.model = httpx.get(f"{self.url}/v1/models").json()["data"][0]["id"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def loadgen(server: Server, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "loadgen.py"),
            "--url",
            server.url,
            "--model",
            server.model,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--max-tokens",
            str(NEW_TOKENS),
            "--prompt",
            PROMPT,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for run in runs:
        for key, count in run["statuses"].items():
            statuses[key] = statuses.get(key, 0) + count
    return {
        "concurrency": runs[0]["concurrency"],
        "wall_s": sum(r["wall_s"] for r in runs),
        "latencies_s": [x for r in runs for x in r["latencies_s"]],
        "rejected_latencies_s": [x for r in runs for x in r["rejected_latencies_s"]],
        "statuses": statuses,
        "completion_tokens": sum(r["completion_tokens"] for r in runs),
        "timeouts": sum(r["timeouts"] for r in runs),
        "connection_errors": sum(r["connection_errors"] for r in runs),
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    lat = result["latencies_s"]
    ok = len(lat)
    errors = sum(v for k, v in result["statuses"].items() if k not in ("200", "429"))
    return {
        "concurrency": result["concurrency"],
        "requests": ok,
        "p50_ms": percentile(lat, 50) * 1000 if lat else float("nan"),
        "p95_ms": percentile(lat, 95) * 1000 if lat else float("nan"),
        "p99_ms": percentile(lat, 99) * 1000 if lat else float("nan"),
        "req_per_s": ok / result["wall_s"],
        "tokens_per_s": result["completion_tokens"] / result["wall_s"],
        "errors": errors + result["timeouts"] + result["connection_errors"],
        "rejected_429": result["statuses"].get("429", 0),
        "timeouts": result["timeouts"],
        "p99_429_ms": percentile(result["rejected_latencies_s"], 99) * 1000 if result["rejected_latencies_s"] else None,
    }


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def render(
    raw: list[dict[str, float]],
    raw1_interleaved: float,
    served: list[dict[str, Any]],
    overload: dict[str, Any],
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
    command: str,
) -> str:
    c1 = served[0]
    c16 = next(s for s in served if s["concurrency"] == 16)
    raw1 = raw1_interleaved * 1000
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}.",
        f"Command: `{command}`. Model: demo shape ({DEMO_SHAPE['n_layer']} layers, {DEMO_SHAPE['n_head']} heads, "
        f"{DEMO_SHAPE['n_embd']} wide, block {DEMO_SHAPE['block_size']}), CPU, 1 torch thread; prompt of "
        f"{len(PROMPT)} characters, {NEW_TOKENS} new tokens per request (so every request slides its window once).",
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, after: "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}; the 2 cores were shared with other work, so figures are noisy.",
        "",
        "Raw in-process batched generation (`inference.decoding.generate`, no HTTP, no queue):",
        "",
        "| batch | latency per batch (ms) | tokens/s |",
        "|---:|---:|---:|",
        *(f"| {r['batch']} | {r['latency_s'] * 1000:.1f} | {r['tokens_per_s']:.0f} |" for r in raw),
        "",
        "Served (`python -m inference serve`, closed-loop `bench/loadgen.py` in its own process):",
        "",
        "| concurrency | requests | p50 (ms) | p95 (ms) | p99 (ms) | req/s | tokens/s | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {s['concurrency']} | {s['requests']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | "
            f"{s['req_per_s']:.1f} | {s['tokens_per_s']:.0f} | {s['errors']} |"
            for s in served
        ),
        "",
        "Targets:",
        f"- concurrency 1, p50 vs raw batch-1 generate measured in turns with it: {c1['p50_ms']:.1f} / "
        f"{raw1:.1f} ms = **{c1['p50_ms'] / raw1:.2f}x** (target <= 1.15x).",
        f"- concurrency 16 vs 1, tokens/s: {c16['tokens_per_s']:.0f} / {c1['tokens_per_s']:.0f} = "
        f"**{c16['tokens_per_s'] / c1['tokens_per_s']:.1f}x** (target >= 6x; raw batch 16 vs 1 allows "
        f"{raw[2]['tokens_per_s'] / raw[0]['tokens_per_s']:.1f}x here).",
        f"- errors at every level: **{sum(s['errors'] for s in served)}** (target 0).",
        f"- overload ({overload['concurrency']} clients, server with max_batch_size=16, max_queue_depth=16): "
        f"{overload['requests']} served, **{overload['rejected_429']} answered 429** (p99 "
        f"{overload['p99_429_ms'] or float('nan'):.1f} ms to the 429), **{overload['timeouts']} timeouts**, "
        f"{overload['errors']} other errors; served p99 {overload['p99_ms']:.1f} ms.",
        "",
    ]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    text = DOCS.read_text()
    head, marker, tail = text.partition("## Inference")
    if not marker:
        raise SystemExit(f"{DOCS} has no '## Inference' section")
    rest = tail.split("\n## ", 1)
    after = "\n## " + rest[1] if len(rest) > 1 else ""
    DOCS.write_text(f"{head}## Inference\n\n{section}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--raw-repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="turns of raw batch-1 and concurrency-1 runs")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--write-docs", action="store_true", help="replace the Inference section of benchmarks.md")
    args = parser.parse_args()
    command = "python bench/bench_inference.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()
    torch.set_num_threads(1)  # as the server (INFERENCE_TORCH_THREADS default), for training the demo too
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        model_dir = train_demo_model(root, args.train_steps)
        raw = bench_raw(model_dir, args.raw_repeats)
        server = Server(root, args.port)
        try:
            # The machine is shared, so its speed drifts: interleave raw batch-1 runs with the concurrency-1
            # runs, and compare the two over the same stretch of time.
            raw1_times, c1_runs = [], []
            for _ in range(args.rounds):
                raw1_times.append(bench_raw(model_dir, args.raw_repeats, (1,))[0]["latency_s"])
                c1_runs.append(loadgen(server, 1, args.duration / args.rounds, args.warmup))
            raw1 = statistics.median(raw1_times)
            served = [summarize(merge(c1_runs))]
            print(json.dumps(served[0]))
            for concurrency in LEVELS[1:]:
                summary = summarize(loadgen(server, concurrency, args.duration, args.warmup))
                print(json.dumps(summary))
                served.append(summary)
        finally:
            server.stop()
        small = Server(root, args.port + 1, INFERENCE_MAX_BATCH_SIZE="16", INFERENCE_MAX_QUEUE_DEPTH="16")
        try:
            overload = summarize(loadgen(small, 64, args.duration, args.warmup))
            print(json.dumps(overload))
        finally:
            small.stop()
    section = render(raw, raw1, served, overload, load_before, os.getloadavg(), command)
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
