"""Where one training step's time goes on one rank of `launch --nproc 2` (the benchmark recipe's shape).

    python bench/profile_step.py                   # the trainer's settings now
    python bench/profile_step.py --before          # the settings before issue 15 (see BEFORE)

Two ranks (gloo, 1 thread each, 6 sequences each) run the trainer's own step functions (`forward_backward` split
into its two halves, `optimizer_step`, `mean_over_ranks`) under DDP; rank 0 times every phase per step:
- data: sampling the batch; forward; backward including DDP's gradient all-reduce (gloo reduces in its own
  thread while backward runs; backward ends by waiting for it);
- optimizer: clip + AdamW + zero_grad; sync: the per-step host sync (every step before, logging steps after);
- all-reduce launch: the self CPU time of `c10d::allreduce_` per step (torch.profiler);
- not in aten ops: wall time minus the self CPU time of every aten op: Python, dispatch, the autograd engine,
  DDP's reducer and the wait for the all-reduce.
Medians over the steps; the same process does both halves, so the figures compare within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tinygpt.config import GPTConfig  # noqa: E402
from tinygpt.model import GPT  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.data import sample_batch  # noqa: E402
from trainer.distenv import DistEnv  # noqa: E402
from trainer.loop import make_optimizer, mean_over_ranks, optimizer_step  # noqa: E402
from trainer.runtime import rank_cpus  # noqa: E402

BEFORE = {"pin_cpus": False, "bucket_cap_mb": 25.0, "sync_every": 1}
"""Issue 15's starting point: no pinning, DDP's default buckets, the loss and stop vote synced every step."""
AFTER = {"pin_cpus": True, "bucket_cap_mb": 25.0, "sync_every": 10}
"""The trainer's defaults now (train.pin_cpus=true, distributed.bucket_cap_mb=25, loss on the host every log_every)."""
SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}


def worker(rank: int, settings: dict[str, float], steps: int, port: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    if settings["pin_cpus"]:
        cpus = rank_cpus(sorted(os.sched_getaffinity(0)), rank, 2, 1)
        if cpus:
            os.sched_setaffinity(0, cpus)
    torch.set_num_threads(1)
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2, local_rank=0, local_world_size=2, master_addr="127.0.0.1",
                  master_port=port, source="bench")  # fmt: skip
    torch.manual_seed(0)
    raw = GPT(GPTConfig(vocab_size=65, **SHAPE))
    optimizer = make_optimizer(raw, TrainConfig(), torch.device("cpu"))
    model = DistributedDataParallel(raw, gradient_as_bucket_view=True, bucket_cap_mb=settings["bucket_cap_mb"])
    params = [p for p in raw.parameters() if p.requires_grad]
    data = torch.randint(0, 65, (200_000,), generator=torch.Generator().manual_seed(0))
    phases: dict[str, list[float]] = {k: [] for k in ("data", "forward", "backward", "optimizer", "sync", "step")}

    def step(index: int, record: bool) -> None:
        clock = time.perf_counter
        began = clock()
        x, y = sample_batch(data, seed=0, stream="train", index=index, global_batch=12, block_size=64, rank=rank,
                            world_size=2)  # fmt: skip
        sampled = clock()
        _, loss = model(x, y)
        assert loss is not None
        forwarded = clock()
        loss.backward()
        backwarded = clock()
        optimizer_step(params, optimizer, 1.0)
        updated = clock()
        if index % settings["sync_every"] == 0:
            mean_over_ranks(loss.detach(), env)
        ended = clock()
        if record:
            for name, seconds in (("data", sampled - began), ("forward", forwarded - sampled),
                                  ("backward", backwarded - forwarded), ("optimizer", updated - backwarded),
                                  ("sync", ended - updated), ("step", ended - began)):  # fmt: skip
                phases[name].append(seconds)

    for index in range(20):
        step(index, record=False)
    dist.barrier()
    for index in range(steps):
        step(index, record=True)
    dist.barrier()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        for index in range(20):
            step(index, record=False)
        wall = time.perf_counter() - began
    events = prof.key_averages()
    aten = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6
    allreduce = sum(e.self_cpu_time_total for e in events if e.key == "c10d::allreduce_") / 1e6
    if rank == 0:
        ms = {name: statistics.median(values) * 1e3 for name, values in phases.items()}
        ms["all-reduce launch (c10d::allreduce_ self CPU)"] = allreduce / 20 * 1e3
        ms["not in aten ops (Python, dispatch, autograd, DDP, all-reduce wait)"] = (wall - aten) / 20 * 1e3
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
        out.put((ms, table))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", action="store_true", help="the settings before issue 15")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--port", type=int, default=29561)
    args = parser.parse_args()
    settings = BEFORE if args.before else AFTER
    context = mp.get_context("spawn")
    out = context.Queue()
    ranks = [context.Process(target=worker, args=(r, settings, args.steps, args.port, out)) for r in range(2)]
    for process in ranks:
        process.start()
    ms, table = out.get(timeout=600)
    for process in ranks:
        process.join(timeout=60)
    print(f"settings: {settings}; median ms per step of rank 0 over {args.steps} steps")
    for name, value in ms.items():
        print(f"| {name} | {value:.2f} |")
    print(table)


if __name__ == "__main__":
    main()
