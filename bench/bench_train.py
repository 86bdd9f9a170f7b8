"""Training benchmark (issue 15): our trainer against nanoGPT on the same recipe, side by side, whole commands
timed from outside.

    python bench/bench_train.py                          # print the results as markdown
    python bench/bench_train.py --write-docs             # also replace "## Training" in docs/benchmarks.md
    python bench/bench_train.py --before-tree DIR        # also time the trainer of another checkout (e.g. a git
                                                         # worktree of the commit before a change), same runs
    python bench/profile_step.py [--before]              # where one rank's step time goes

The recipe (the issue's): tinyshakespeare, 4 layers, 4 heads, 128 wide, block 64, global batch 12, dropout 0,
AdamW lr 1e-3 -> 1e-4 cosine after 100 warmup steps, 2000 steps, eval every 500 steps on 20 batches.
- nanoGPT: ../shared/anchors/nanogpt/run-recipe.sh (nanoGPT's train.py, one process, 2 threads, CPU).
- ours: `python -m trainer launch --nproc 2 --config <recipe>` (an Indexed Job of two workers, emulated).
Runs alternate (nanoGPT, ours, [before], nanoGPT, ours, ...) so that drift in the machine's load hits both;
medians are compared. Targets: ours >= 1.25x faster than nanoGPT, val loss <= 1.88 at step 2000.
Also the demo's training (600 steps of `make demo`'s schedule, tracking off), ours and --before-tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
DOCS = REPO / "docs" / "benchmarks.md"
VAL_TARGET = 1.88


def recipe(data: Path, checkpoints: Path) -> dict[str, Any]:
    return {
        "data": {"source": str(data), "val_fraction": 0.1},
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0},
        "train": {
            "batch_size": 12,
            "max_steps": 2000,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_steps": 100,
            "eval_every": 500,
            "eval_iters": 20,
            "log_every": 100,
        },
        "checkpoint": {"dir": str(checkpoints), "every": 0, "keep": 1},
    }


def run(command: list[str], tree: Path = REPO) -> tuple[dict[str, Any], float, str]:
    """Run a trainer command of checkout `tree`; returns its JSON summary, its wall time and its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "JOB_COMPLETION_INDEX")}
    env["PYTHONPATH"] = str(tree)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), wall, result.stdout


def trainer_command(config: Path, nproc: int, *overrides: str) -> list[str]:
    head = [sys.executable, "-m", "trainer"]
    head += ["train"] if nproc == 1 else ["launch", "--nproc", str(nproc)]
    return [*head, "--config", str(config), *(f"--set={item}" for item in overrides)]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    if names:
        cpu = names[0]
    import torch

    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}"


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def write_section(markdown: str) -> None:
    text = DOCS.read_text()
    pattern = re.compile(r"^## Training\n.*?(?=^## |\Z)", re.S | re.M)
    if not pattern.search(text):
        sys.exit(f"{DOCS} has no '## Training' section")
    DOCS.write_text(pattern.sub(lambda _: markdown.rstrip() + "\n\n", text, count=1))


SPEEDUP_TARGET = 1.25
NANOGPT = REPO.parent / "shared" / "anchors" / "nanogpt" / "run-recipe.sh"


def run_nanogpt(workdir: Path) -> tuple[float, float]:
    """run-recipe.sh's wall time and its val loss at step 2000."""
    started = time.perf_counter()
    result = subprocess.run(["bash", str(NANOGPT), sys.executable, str(workdir)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{NANOGPT} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    losses = re.findall(r"^step 2000: train loss [\d.]+, val loss ([\d.]+)$", result.stdout, re.M)
    if not losses:
        sys.exit(f"{NANOGPT}: no 'step 2000' line in its output:\n{result.stdout[-2000:]}")
    return wall, float(losses[-1])


def run_ours(config: Path, tree: Path, *overrides: str) -> tuple[float, float, dict[str, Any]]:
    """The trainer of checkout `tree` on `config`: wall time, final val loss, summary."""
    summary, wall, _ = run(trainer_command(config, 2, *overrides), tree)
    return wall, float(summary["val_loss"]), summary


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="tinyshakespeare.txt")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command, alternating")
    parser.add_argument("--before-tree", type=Path, help="another checkout whose trainer is timed in the same runs")
    parser.add_argument("--write-docs", action="store_true", help=f"replace '## Training' in {DOCS}")
    args = parser.parse_args()
    for needed in (args.data, NANOGPT):
        if not needed.is_file():
            sys.exit(f"{needed} not found (it comes with ../shared beside the checkout); pass --data for the corpus")
    sys.path.insert(0, str(REPO))
    from demo.runner import DEMO_TRAIN

    trees = {"ours": REPO} | ({"before": args.before_tree.resolve()} if args.before_tree else {})
    walls: dict[str, list[float]] = {"nanoGPT": []} | {name: [] for name in trees}
    vals: dict[str, list[float]] = {name: [] for name in walls}
    demo_walls: dict[str, list[float]] = {name: [] for name in trees}
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeats):
            wall, val = run_nanogpt(Path(tmp) / f"nanogpt-{attempt}")
            walls["nanoGPT"].append(wall)
            vals["nanoGPT"].append(val)
            for name, tree in trees.items():
                config = Path(tmp) / f"{name}-{attempt}.yaml"
                config.write_text(yaml.safe_dump(recipe(args.data, Path(tmp) / f"ck-{name}-{attempt}")))
                wall, val, _ = run_ours(config, tree)
                walls[name].append(wall)
                vals[name].append(val)
                demo = yaml.safe_load(yaml.safe_dump(DEMO_TRAIN))
                demo.pop("tracking")
                demo["checkpoint"]["dir"] = str(Path(tmp) / f"demo-{name}-{attempt}")
                config.write_text(yaml.safe_dump(demo))
                demo_walls[name].append(run_ours(config, tree)[0])
            print(f"round {attempt + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items()), flush=True)
    load_after = load()
    ratio = median(walls["nanoGPT"]) / median(walls["ours"])
    val = max(vals["ours"])
    lines = [
        "## Training",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python bench/bench_train.py"
        f"{' --before-tree <checkout>' if args.before_tree else ''}` on {machine()}, {args.repeats} rounds, "
        f"alternating. Load average (1/5/15 min) {load_before} before and {load_after} after.",
        "",
        "Recipe (the issue's): tinyshakespeare, 4 layers, 4 heads, 128 wide, block 64, global batch 12, dropout 0, "
        "AdamW lr 1e-3 cosine to 1e-4 after 100 warmup steps, 2000 steps, eval every 500 steps on 20 batches. "
        "nanoGPT: `../shared/anchors/nanogpt/run-recipe.sh` (one process, 2 threads). Ours: "
        "`python -m trainer launch --nproc 2 --config <recipe>.yaml` (2 ranks x 1 thread, gloo).",
        "",
        "| command | wall per run (s) | median (s) | val loss at 2000 |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {', '.join(f'{w:.1f}' for w in walls[name])} | {median(walls[name]):.1f} | "
          f"{', '.join(f'{v:.4f}' for v in vals[name])} |" for name in walls),
        "",
        f"**Speed-up of ours over nanoGPT: {ratio:.2f}x** (target >= {SPEEDUP_TARGET}: "
        f"{'met' if ratio >= SPEEDUP_TARGET else 'MISSED'}); val loss {val:.4f} (target <= {VAL_TARGET}: "
        f"{'met' if val <= VAL_TARGET else 'MISSED'}).",
    ]
    if args.before_tree:
        before = median(walls["before"]) / median(walls["ours"])
        lines.append(f"Against the trainer before (`--before-tree`): {before:.2f}x on the recipe.")
    lines += [
        "",
        "| `make demo`'s training (600 steps, python-docs, tracking off) | wall per run (s) | median (s) |",
        "| --- | --- | --- |",
        *(f"| {name} | {', '.join(f'{w:.1f}' for w in demo_walls[name])} | {median(demo_walls[name]):.1f} |"
          for name in demo_walls),
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if args.write_docs:
        write_section(markdown)


if __name__ == "__main__":
    main()
