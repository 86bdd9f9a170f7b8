"""Training benchmark: quality and wall time on tinyshakespeare, throughput and DDP scaling on this machine.

    python bench/bench_train.py                  # print the results as markdown
    python bench/bench_train.py --write-docs     # also replace the "## Training" section of docs/benchmarks.md
    python bench/bench_train.py --profile        # where one rank's step time goes (torch.profiler)

1. Quality run: the issue's recipe (4 layers, 4 heads, 128 embd, block 64, global batch 12, dropout 0,
   lr 1e-3 -> 1e-4, 100 warmup, 2000 steps, eval every 500 on 20 batches), timed from process start to exit.
   Targets: val loss <= 1.88 at step 2000, whole command <= 75 s.
2. Scaling: the same model and global batch for fewer steps, 1 rank x 1 thread against 2 ranks x 1 thread
   (`launch`, gloo); efficiency = tokens/s(2 ranks) / (2 x tokens/s(1 rank)); target >= 0.85. tokens/s is the
   trainer's own figure (training-step time only), best of --repeats runs because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
WALL_TARGET_S = 75.0
EFFICIENCY_TARGET = 0.85


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


def run(command: list[str]) -> tuple[dict[str, Any], float, str]:
    """Run a trainer command; returns its JSON summary, its wall time and its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "JOB_COMPLETION_INDEX")}
    env["PYTHONPATH"] = str(REPO)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
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


def profile(config: dict[str, Any], threads: int, batch: int, steps: int = 30) -> str:
    """Self CPU time by operator over `steps` training steps of one rank holding `batch` sequences."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sys.path.insert(0, str(REPO))
    from tinygpt.config import GPTConfig
    from tinygpt.model import GPT
    from trainer.config import TrainConfig
    from trainer.loop import make_optimizer

    torch.set_num_threads(threads)
    model = GPT(GPTConfig(vocab_size=65, **config["model"]))
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    x = torch.randint(0, 65, (batch, config["model"]["block_size"]))

    def step() -> None:
        _, loss = model(x, x)
        assert loss is not None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def write_section(markdown: str) -> None:
    text = DOCS.read_text()
    pattern = re.compile(r"^## Training\n.*?(?=^## |\Z)", re.S | re.M)
    if not pattern.search(text):
        sys.exit(f"{DOCS} has no '## Training' section")
    DOCS.write_text(pattern.sub(lambda _: markdown.rstrip() + "\n\n", text, count=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="tinyshakespeare.txt")
    parser.add_argument("--nproc", type=int, default=2, help="ranks for the quality run (threads split evenly)")
    parser.add_argument("--scaling-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="scaling runs per setting (best is kept)")
    parser.add_argument("--write-docs", action="store_true", help=f"replace '## Training' in {DOCS}")
    parser.add_argument("--profile", action="store_true", help="print an operator profile of one rank")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found; pass --data PATH to tinyshakespeare.txt")

    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "bench.yaml"
        config = recipe(args.data, Path(tmp) / "checkpoints")
        config_path.write_text(yaml.safe_dump(config))
        if args.profile:
            print("1 rank x 1 thread, global batch 12:\n" + profile(config, threads=1, batch=12))
            print("1 of 2 ranks x 1 thread, 6 sequences:\n" + profile(config, threads=1, batch=6))
            return

        load_before = load()
        quality_cmd = trainer_command(config_path, args.nproc)
        summary, wall, stdout = run(quality_cmd)
        evals = re.findall(r"^step (\d+): val_loss ([\d.]+)$", stdout, re.M)

        scaling: dict[int, float] = {}
        for nproc in (1, 2):
            best = 0.0
            for attempt in range(args.repeats):
                overrides = (
                    f"train.max_steps={args.scaling_steps}",
                    "train.eval_every=0",
                    "train.eval_iters=1",
                    "train.threads_per_rank=1",
                    f"checkpoint.dir={tmp}/scaling-{nproc}-{attempt}",
                )
                result, _, _ = run(trainer_command(config_path, nproc, *overrides))
                best = max(best, float(result["tokens_per_s"]))
            scaling[nproc] = best
        load_after = load()

    efficiency = scaling[2] / (2 * scaling[1])
    shown_cmd = " ".join(["python", *quality_cmd[1:]]).replace(str(config_path), "<recipe>.yaml")
    val = float(summary["val_loss"])
    lines = [
        "## Training",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python bench/bench_train.py` on "
        f"{machine()}. Load average (1/5/15 min) {load_before} before and {load_after} after: the machine "
        "is shared with other work, so wall times and tokens/s are noisy.",
        "",
        "Recipe (the issue's): tinyshakespeare, 4 layers, 4 heads, 128 embd, block 64, global batch 12, dropout 0, "
        "AdamW lr 1e-3 cosine to 1e-4 after 100 warmup steps, 2000 steps, eval every 500 steps on 20 batches.",
        "",
        "| Quality run | Result | Target |",
        "| --- | --- | --- |",
        f"| command | `{shown_cmd}` | |",
        f"| val loss at step {summary['step']} | {val:.4f} | <= {VAL_TARGET} "
        f"{'(met)' if val <= VAL_TARGET else '(MISSED)'} |",
        f"| val loss by step | {', '.join(f'{s}: {float(v):.3f}' for s, v in evals)} | |",
        f"| whole command, start to exit | {wall:.1f} s | <= {WALL_TARGET_S:.0f} s "
        f"{'(met)' if wall <= WALL_TARGET_S else '(MISSED)'} |",
        f"| training throughput | {float(summary['tokens_per_s']):,.0f} tokens/s | |",
        "",
        f"| Scaling ({args.scaling_steps} steps, global batch 12, best of {args.repeats}) | tokens/s |",
        "| --- | --- |",
        f"| 1 rank x 1 thread (`train`) | {scaling[1]:,.0f} |",
        f"| 2 ranks x 1 thread (`launch --nproc 2`, gloo) | {scaling[2]:,.0f} |",
        f"| scaling efficiency (target >= {EFFICIENCY_TARGET}) | {efficiency:.2f} "
        f"{'(met)' if efficiency >= EFFICIENCY_TARGET else '(MISSED)'} |",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if args.write_docs:
        write_section(markdown)


if __name__ == "__main__":
    main()
