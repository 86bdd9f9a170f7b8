"""How long rendering each stack and the infra test suite take (issue targets: render < 3 s, tests < 60 s).

Runs each command several times as a fresh process (what a user or CI pays, interpreter start included), takes
the median, and rewrites the `## Infra` section of docs/benchmarks.md.

    .venv/bin/python bench/bench_infra.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, load average {load:.2f} at start"


def replace_section(text: str, heading: str, body: str) -> str:
    start = text.index(heading)
    rest = text[start + len(heading) :]
    end = rest.find("\n## ")
    tail = rest[end:] if end >= 0 else "\n"
    return text[:start] + heading + "\n\n" + body.strip() + "\n" + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per render (the test suite runs 3 times)")
    args = parser.parse_args()
    py = sys.executable
    rows = []
    for stack in ("dev", "gpu"):
        times = timed([py, "-m", "infra.render", stack, "--out", f"build/rendered/{stack}.yaml"], args.repeat)
        rows.append((f"`python -m infra.render {stack}`", times, 3.0))
    test_times = timed([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/infra"], 3)
    rows.append(("`pytest tests/infra`", test_times, 60.0))

    lines = [
        f"Machine: {machine()}. Command: `{Path(py).name} bench/bench_infra.py --repeat {args.repeat}` "
        f"({time.strftime('%Y-%m-%d')}). Each is a fresh process, interpreter start included; median of the runs.",
        "",
        "| what | median (s) | min (s) | max (s) | runs | target (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, times, target in rows:
        lines.append(
            f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | {len(times)} "
            f"| < {target:.0f} |"
        )
    body = "\n".join(lines)
    print(body)
    DOC.write_text(replace_section(DOC.read_text(), "## Infra", body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
