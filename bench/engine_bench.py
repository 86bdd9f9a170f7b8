"""What the control-plane benchmarks (bench_operator.py, bench_launcher.py) share: the engine tier's toolchain, a
description of the machine, percentiles, and their sections at the end of docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import signal
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
TOOLCHAIN_ENV = "ML_PLATFORM_TOOLCHAIN=$(bash tests/engine/toolchain.sh | tail -n1)"


def toolchain_dir() -> Path:
    """ML_PLATFORM_TOOLCHAIN, else the directory tests/engine/toolchain.sh prints (it builds nothing when cached)."""
    env = os.environ.get("ML_PLATFORM_TOOLCHAIN")
    if env:
        return Path(env)
    out = subprocess.run(
        ["bash", str(ROOT / "tests" / "engine" / "toolchain.sh"), "--print-dir"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def exit_on_sigterm() -> None:
    """SIGTERM as SystemExit, so the benchmarks' `finally` blocks stop the control plane and the servers they
    started (those run in sessions of their own and would outlive an interpreter killed outright)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0 < p < 100), linear between the closest ranks (statistics' inclusive method)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(p * 10) - 1]


def summary(values: list[float], digits: int = 3) -> dict[str, float | int]:
    """count, p50, p90, p99, max of `values` (seconds), rounded."""
    return {
        "count": len(values),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits) if values else float("nan"),
    }


def reflow(body: str, width: int = 115) -> str:
    """Paragraphs filled to `width` (the figures interpolated into them have any length); tables left alone."""
    blocks = []
    for block in body.strip().split("\n\n"):
        lines = block.strip().splitlines()
        if any(line.startswith("|") for line in lines):
            blocks.append("\n".join(lines))
        else:
            blocks.append(textwrap.fill(" ".join(lines), width, break_long_words=False, break_on_hyphens=False))
    return "\n\n".join(blocks)


def write_section(heading: str, body: str) -> None:
    """Put `heading` + `body` (reflowed) at the end of docs/benchmarks.md, replacing the section of that heading
    (up to the next heading of its level or above) when it is already there."""
    text = DOC.read_text()
    block = f"{heading}\n\n{reflow(body)}\n"
    if heading in text:
        start = text.index(heading)
        rest = text[start + len(heading) :]
        level = heading.split(" ", 1)[0]
        ends = [i for i in (rest.find("\n## "), rest.find(f"\n{level} ")) if i >= 0]
        tail = rest[min(ends) + 1 :] if ends else ""
        text = text[:start] + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    DOC.write_text(text)
