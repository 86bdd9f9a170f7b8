"""Where `.ci/run` spends its time: run it in a fresh clone, cold (every cache an empty directory) or warm (the
same directories again), and report the time of each phase.

    python3 bench/ci_budget.py run cold --cache-root /tmp/ci-caches      # empty caches: GOCACHE, GOMODCACHE,
                                                                          # GOPATH, pip, the toolchain cache,
                                                                          # podman's storage, containerd's store
    python3 bench/ci_budget.py run warm --cache-root /tmp/ci-caches      # the same caches, now filled
    python3 bench/ci_budget.py run warm --machine-caches                 # the caches CI itself uses
    python3 bench/ci_budget.py report RUN_DIR [RUN_DIR ...] [--write]    # the phases; --write puts them in
                                                                          # docs/benchmarks.md

A run clones the committed HEAD of this checkout into RUN_DIR/ml-platform (../shared linked beside it, as CI
has it), runs `bash .ci/run` there with CI=true, and keeps in RUN_DIR:
  log.txt      every line .ci/run printed, each prefixed with the seconds since the start
  phases.txt   "<name> <start epoch> <end epoch>" lines the build steps append (ML_PLATFORM_PHASE_LOG): each Go
               build, the Debian packages, the vendored sources, each container image, its import
  junit/       pytest's reports (tests/tiers.py writes one per pytest process; per test, setup and teardown
               included), summed by test directory (the tiers)
  run.json     mode, commit, start, end, exit code, the cache settings

Debian packages cannot be "cold" without removing them from the machine: the phase appears only when the run
had to install them (a new machine). Everything else a cold run downloads and builds from nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_infra import cpu_model  # noqa: E402  (a sibling script, not a package)

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## CI budget: `.ci/run` cold and warm, by phase (issue 21)"
SECTION_END = "<!-- end ci budget -->"


def cache_env(cache_root: Path) -> dict[str, str]:
    """Every cache .ci/run fills, pointed under cache_root."""
    storage_conf = cache_root / "containers-storage.conf"
    env = {
        "GOCACHE": str(cache_root / "go-build"),
        "GOMODCACHE": str(cache_root / "go-mod"),
        "GOPATH": str(cache_root / "gopath"),
        "PIP_CACHE_DIR": str(cache_root / "pip"),
        "ML_PLATFORM_TOOLCHAIN_CACHE": str(cache_root / "toolchain"),
        "ML_PLATFORM_IMAGE_STORE": str(cache_root / "image-store"),
        "CONTAINERS_STORAGE_CONF": str(storage_conf),
    }
    return env


def prepare_caches(cache_root: Path, cold: bool) -> None:
    if cold and cache_root.exists():
        # podman's overlay storage may hold read-only dirs and mounts: let podman itself wipe it first.
        conf = cache_root / "containers-storage.conf"
        if conf.exists():
            subprocess.run(
                ["podman", "system", "reset", "--force"],
                env={**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)},
                capture_output=True,
                timeout=600,
                check=False,
            )
        subprocess.run(["chmod", "-R", "u+w", str(cache_root)], capture_output=True, check=False)
        shutil.rmtree(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    conf = cache_root / "containers-storage.conf"
    conf.write_text(
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{cache_root / "podman" / "storage"}"\n'
        f'runroot = "{cache_root / "podman" / "run"}"\n'
    )


def run(args: argparse.Namespace) -> int:
    mode = args.mode
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir or f"/tmp/ci-budget/{mode}-{stamp}").resolve()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    clone = run_dir / "ml-platform"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
    shared = (ROOT.parent / "shared").resolve()
    if shared.is_dir():
        (run_dir / "shared").symlink_to(shared)

    env = dict(os.environ)
    env["CI"] = "true"
    for name in ("VIRTUAL_ENV", "ML_PLATFORM_TOOLCHAIN", "ML_PLATFORM_CLUSTER_TOOLCHAIN", "ML_PLATFORM_OBS_TOOLCHAIN"):
        env.pop(name, None)
    caches: dict[str, str] = {}
    if args.machine_caches and mode == "cold":
        filled = [str(p) for p in machine_cache_dirs() if p.exists() and any(p.iterdir())]
        if filled:
            print(
                f"ci_budget: a cold run needs empty caches; these are not: {', '.join(filled)} "
                "(use --cache-root DIR instead)",
                file=sys.stderr,
            )
            return 2
    if not args.machine_caches:
        if not args.cache_root:
            print("ci_budget: give --cache-root DIR (or --machine-caches)", file=sys.stderr)
            return 2
        cache_root = Path(args.cache_root).resolve()
        prepare_caches(cache_root, cold=(mode == "cold"))
        caches = cache_env(cache_root)
        env.update(caches)
    phases = run_dir / "phases.txt"
    phases.touch()
    env["ML_PLATFORM_PHASE_LOG"] = str(phases)
    # tests/tiers.py writes one junit report per pytest process there.
    env["ML_PLATFORM_JUNIT_DIR"] = str(run_dir / "junit")

    meta: dict[str, object] = {
        "mode": mode,
        "commit": commit,
        "machine_caches": bool(args.machine_caches),
        "caches": caches,
        "machine": machine(),
        "start": time.time(),
    }
    print(f"ci_budget: {mode} run of {commit[:10]} in {run_dir}", file=sys.stderr)
    start = time.monotonic()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(
            ["bash", ".ci/run"],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(f"{time.monotonic() - start:9.1f} {line}")
            log.flush()
        rc = proc.wait()
    meta["end"] = time.time()
    meta["rc"] = rc
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"ci_budget: rc {rc}, {meta['end'] - meta['start']:.0f} s; report: {sys.argv[0]} report {run_dir}",
        file=sys.stderr,
    )
    return rc


def machine_cache_dirs() -> list[Path]:
    """Where .ci/run keeps what it builds when nothing points elsewhere."""
    home = Path.home()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    go = subprocess.run(["go", "env", "GOCACHE", "GOMODCACHE"], capture_output=True, text=True, check=False)
    dirs = [Path(p) for p in go.stdout.split()] if go.returncode == 0 else []
    return [*dirs, cache / "pip", cache / "ml-platform", Path("/var/lib/containers/storage")]


def machine() -> str:
    return f"{os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}"


# --- report -----------------------------------------------------------------------------------------------
LOG_LINE = re.compile(r"^\s*(\d+\.\d)\s(.*)$")


def parse_log(path: Path) -> list[tuple[float, str]]:
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(raw)
        if m:
            out.append((float(m.group(1)), m.group(2)))
    return out


def first(lines: list[tuple[float, str]], pattern: str) -> float | None:
    rx = re.compile(pattern)
    for t, text in lines:
        if rx.search(text):
            return t
    return None


def tier_of(classname: str) -> str:
    parts = classname.split(".")
    if len(parts) >= 2 and parts[0] == "tests":
        return "tests/" + parts[1] if not parts[1].startswith("test_") else "tests/ (top level)"
    return classname


def junit_tiers(paths: list[Path]) -> tuple[dict[str, float], dict[str, int], dict[str, int]]:
    seconds: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    failed: dict[str, int] = defaultdict(int)
    cases = [case for path in paths if path.exists() for case in ET.parse(path).getroot().iter("testcase")]
    for case in cases:
        tier = tier_of(case.get("classname", ""))
        seconds[tier] += float(case.get("time", "0"))
        if case.find("skipped") is not None:
            continue
        count[tier] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed[tier] += 1
    return seconds, count, failed


def summarize(run_dir: Path) -> dict[str, object]:
    meta = json.loads((run_dir / "run.json").read_text())
    lines = parse_log(run_dir / "log.txt")
    t0 = float(meta["start"])
    total = float(meta["end"]) - t0
    rows: list[tuple[str, float]] = []
    # Virtualenvs: from the start to the stamp each Makefile rule touches last.
    # (Before tests/toolchain/setup.sh recorded them as a phase: from the start to the stamp each Makefile rule
    # touches last.)
    venv_end = first(lines, r"touch \.venv/\.installed-dev")
    checkov_end = first(lines, r"touch \.venv-checkov/\.installed-")
    phase_file = run_dir / "phases.txt"
    recorded_venvs = phase_file.exists() and "virtualenvs" in phase_file.read_text()
    if venv_end is not None and not recorded_venvs:
        rows.append(("pip: .venv (project, dev extras)", venv_end))
        if checkov_end is not None:
            rows.append(("pip: .venv-checkov", checkov_end - venv_end))
    # Recorded phases (Go builds, Debian packages, images): epoch start/end.
    recorded: list[tuple[str, float, float]] = []
    for raw in phase_file.read_text().splitlines() if phase_file.exists() else []:
        parts = raw.rsplit(" ", 2)
        if len(parts) == 3:
            recorded.append((parts[0], float(parts[1]), float(parts[2])))
    pytest_start = first(lines, r"test session starts")
    for name, start, end in recorded:
        during = pytest_start is not None and start - t0 >= pytest_start
        rows.append((f"{name} (during pytest)" if during else name, end - start))
    # junit.xml: one pytest process (before tests/tiers.py); junit/*.xml: one report per process.
    seconds, count, failed = junit_tiers([run_dir / "junit.xml", *sorted((run_dir / "junit").glob("*.xml"))])
    summary = "; ".join(
        re.sub(r"^\[(\w+)\s*\]\s*", r"\1: ", re.sub(r"=+", "", text)).strip()
        for _, text in lines
        if re.search(r"=+ .*\b(passed|failed)\b.* in \d", text)
    )
    return {
        "meta": meta,
        "total": total,
        "rows": rows,
        "setup": pytest_start,
        "pytest": (total - pytest_start) if pytest_start is not None else None,
        "tiers": {k: (seconds[k], count[k], failed[k]) for k in sorted(seconds, key=lambda k: -seconds[k])},
        "summary": summary,
    }


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:,.0f} s ({seconds / 60:.1f} min)" if seconds >= 60 else f"{seconds:.0f} s"


def render(runs: list[Path]) -> str:
    sums = [summarize(r) for r in runs]
    out = [SECTION, ""]
    for s in sums:
        meta = s["meta"]  # type: ignore[assignment]
        assert isinstance(meta, dict)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(meta["start"])))
        cold = meta["mode"] == "cold"
        if meta["machine_caches"]:
            caches = "--machine-caches: the caches CI uses" + (", checked empty at the start" if cold else "")
        else:
            caches = "--cache-root: every cache under one directory" + (", emptied first" if cold else "")
        out.append(f"### {meta['mode']}: {fmt(s['total'])} wall, commit {str(meta['commit'])[:10]}, {when}")
        out.append("")
        out.append(
            f"`python3 bench/ci_budget.py run {meta['mode']}` ({caches}), {meta['machine']}; "
            f"exit code {meta['rc']}; pytest: {s['summary'] or 'no summary line'}."
        )
        out.append("")
        out.append("| phase | time |")
        out.append("|---|---|")
        for name, secs in s["rows"]:  # type: ignore[union-attr]
            out.append(f"| {name} | {fmt(secs)} |")
        out.append(
            "| **setup in all**, until pytest starts (the phases above not marked during pytest, some side by side) "
            f"| **{fmt(s['setup'])}** |"
        )  # type: ignore[arg-type]
        out.append(
            "| **pytest in all**, wall (by test directory below, fixtures included; two processes side by side add "
            f"up to more) | **{fmt(s['pytest'])}** |"
        )  # type: ignore[arg-type]
        for tier, (secs, n, bad) in s["tiers"].items():  # type: ignore[union-attr]
            extra = f", {bad} failed" if bad else ""
            out.append(f"| &nbsp;&nbsp;{tier} ({n} tests{extra}) | {fmt(secs)} |")
        out.append(f"| **total** | **{fmt(s['total'])}** |")  # type: ignore[arg-type]
        out.append("")
    out.append(SECTION_END)
    return "\n".join(out) + "\n"


def report(args: argparse.Namespace) -> int:
    text = render([Path(r) for r in args.runs])
    print(text)
    if args.write:
        doc = DOC.read_text()
        if SECTION in doc:
            head, rest = doc.split(SECTION, 1)
            tail = rest.split(SECTION_END, 1)[1] if SECTION_END in rest else ""
            doc = head + text.rstrip("\n") + tail
        else:
            doc = doc.rstrip("\n") + "\n\n" + text
        DOC.write_text(doc)
        print(f"ci_budget: wrote {DOC}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run .ci/run in a fresh clone and record its phases")
    p_run.add_argument("mode", choices=("cold", "warm"))
    p_run.add_argument("--cache-root", help="the directory every cache goes under (cold: emptied first)")
    p_run.add_argument(
        "--machine-caches",
        action="store_true",
        help="use the machine's own caches (what CI uses); cold only when they are empty",
    )
    p_run.add_argument("--run-dir", help="where to clone and keep the logs (default /tmp/ci-budget/MODE-STAMP)")
    p_rep = sub.add_parser("report", help="the phases of one or more runs")
    p_rep.add_argument("runs", nargs="+")
    p_rep.add_argument("--write", action="store_true", help="replace the CI budget section of docs/benchmarks.md")
    args = parser.parse_args(argv)
    return run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
