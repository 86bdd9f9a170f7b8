"""`make test`'s pytest: the whole suite as two pytest processes side by side, so that the cluster tier's waits
(pods starting, images importing, `pulumi up` against a real API server) overlap with the other tiers' work on a
2-core machine.

    python -m tests.tiers                 # both, side by side; exit code 0 only when both pass
    python -m tests.tiers --serial        # one after the other (what a loaded or 1-core machine may prefer)

The two processes select exactly what one `pytest -m "engine or cluster or prometheus or not engine"` selects,
split by file so that each has about half of a warm run's work:
  clusters  tests/cluster: the real single-node cluster (root)
  rest      everything else: units, infra, trainer, inference, the control plane's, the Pulumi engine's
            (tests/engine/test_pulumi_engine.py, on the same local control plane as test_control_plane.py), the
            TrainingJob operator's and the launcher's tests
(Swapped at issue 24: with cert-manager and Traefik the cluster tier grew by ~4 minutes, and the Pulumi engine
file, ~630 s warm, moved to `rest` for the operator's, ~375 s. Moved back at issue 27: with Kueue installed apart
from the stack and the engine file's teardown no longer destroying its stacks, `rest` ended at ~1,470 s while
`clusters` still had the operator's ~340 s to run after its ~1,800 s; docs/benchmarks.md.)
Each has a base temporary directory of its own ($TMPDIR/ml-platform-pytest/<name>, emptied by pytest at the next
run, so a failed run's cluster logs stay there to read). Their output is printed as it comes, each line prefixed with
the process's name. Extra arguments go to both pytest commands (e.g. `-x`, `-k expr`).

Environment: ML_PLATFORM_JUNIT_DIR  when set, each process writes its junit report there (<name>.xml); the CI
budget script (bench/ci_budget.py) reads them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
EVERY_TIER = "engine or cluster or prometheus or not engine"
CLUSTER_PATHS = ("tests/cluster",)
GROUPS: dict[str, list[str]] = {
    "clusters": ["-m", EVERY_TIER, *CLUSTER_PATHS],
    "rest": ["-m", EVERY_TIER, *(f"--ignore={d}" for d in CLUSTER_PATHS)],
}


def command(name: str, extra: list[str], basetemp: Path) -> list[str]:
    # --durations: the slowest tests of each process at the end of its output, to see where the time goes.
    cmd = [sys.executable, "-m", "pytest", *GROUPS[name], f"--basetemp={basetemp}", "--durations=15", *extra]
    junit_dir = os.environ.get("ML_PLATFORM_JUNIT_DIR")
    if junit_dir:
        Path(junit_dir).mkdir(parents=True, exist_ok=True)
        cmd.append(f"--junitxml={Path(junit_dir) / f'{name}.xml'}")
    return cmd


def pump(name: str, stream: IO[str], lock: threading.Lock) -> None:
    width = max(len(n) for n in GROUPS)
    for line in stream:
        with lock:
            sys.stdout.write(f"[{name:<{width}}] {line}")
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tiers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serial", action="store_true", help="run the two processes one after the other")
    args, extra = parser.parse_known_args(argv)
    work = Path(tempfile.gettempdir()) / "ml-platform-pytest"
    work.mkdir(exist_ok=True)
    lock = threading.Lock()
    results: dict[str, int] = {}
    procs: dict[str, subprocess.Popen[str]] = {}
    pumps: list[threading.Thread] = []
    try:
        for name in GROUPS:
            proc = subprocess.Popen(
                command(name, extra, work / name),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
            )
            procs[name] = proc
            assert proc.stdout is not None
            thread = threading.Thread(target=pump, args=(name, proc.stdout, lock), daemon=True)
            thread.start()
            pumps.append(thread)
            if args.serial:
                results[name] = proc.wait()
                thread.join()
        for name, proc in procs.items():
            results[name] = proc.wait()
        for thread in pumps:
            thread.join()
    except KeyboardInterrupt:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    # Exit code 5 is "no tests selected": fine for one process when extra arguments (-k ...) narrowed the run.
    ok = {name: rc == 0 or (rc == 5 and bool(extra)) for name, rc in results.items()}
    for name, rc in results.items():
        word = ("passed" if rc == 0 else "no tests selected") if ok[name] else f"FAILED (pytest exit code {rc})"
        print(f"tests.tiers: {name}: {word}", flush=True)
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
