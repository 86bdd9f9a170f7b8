"""Command line: `python -m trainer train ...` (one rank; the pod entrypoint) and `... launch --nproc N ...`.

Exit codes: 0 done; 2 configuration error (never retry); 3 node problem (no usable GPU here; retry, elsewhere if
need be); 128 + N stopped by signal N after a checkpoint; anything else is a retriable failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer.config import ConfigError, TrainerConfig, load_config
from trainer.distenv import DistEnv, RendezvousError, connect, parse_env

EXIT_CONFIG = 2
"""A configuration error: the same pod would fail the same way, so the Job must not retry."""
EXIT_NODE = 3
"""This node cannot run the job (no usable CUDA device): retriable, unlike EXIT_CONFIG."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "train as one rank (reads the distributed environment contract)"),
        ("launch", "run N local ranks with the environment of a Kubernetes Indexed Job"),
    ):
        command = commands.add_parser(name, help=help_text)
        if name == "launch":
            command.add_argument("--nproc", type=int, required=True, help="number of ranks to start")
            command.add_argument(
                "--nnodes", type=int,
                help="pods of the Indexed Job, each running --nproc ranks (one per GPU); the ranks get torchrun's "
                "variables. Without it: one machine, emulating an Indexed Job of --nproc pods",
            )
            command.add_argument(
                "--node-rank", type=int, help="this pod's index among --nnodes (its JOB_COMPLETION_INDEX)"
            )
        command.add_argument("--config", type=Path, required=True, help="train.yaml")
        command.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
            help="override one config key (repeatable), e.g. --set train.max_steps=100",
        )
    return parser


def _check_world(config: TrainerConfig, world_size: int) -> None:
    if config.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size}: the global batch must divide evenly across "
            f"the world size {world_size}"
        )


def train_command(config_path: Path, overrides: Sequence[str]) -> int:
    """One rank of a training job; rank 0 prints the JSON summary as the last line of stdout."""
    from trainer.loop import Trainer
    from trainer.runtime import NodeError, choose_backend, choose_device, set_threads
    from trainer.stopping import Stopped, StopRequest, installed

    try:
        config = load_config(config_path, overrides)
        env: DistEnv = parse_env(os.environ, config.distributed)
        _check_world(config, env.world_size)
        set_threads(config.train, env)
        device = choose_device(config.train, env)
        backend = choose_backend(config.distributed, device, config.train)
        with installed(StopRequest()) as stop:
            summary = Trainer(
                config, env, device, backend=backend, stop=stop,
                rendezvous=lambda: connect(env, config.distributed, os.environ),
            ).run()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except NodeError as exc:
        print(f"node problem: {exc}", file=sys.stderr, flush=True)
        return EXIT_NODE
    except RendezvousError as exc:
        print(f"rendezvous failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except Stopped as exc:
        print(f"rank {env.rank}: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    if summary is not None:
        print(summary.to_json(), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        # torch.distributed.elastic's `record` writes uncaught errors where torchrun collects them; imported
        # here so that `launch` (and config errors) never pay for importing torch.
        from torch.distributed.elastic.multiprocessing.errors import record

        code = record(train_command)(args.config, args.overrides)
        return 0 if code is None else code  # `record` widens the return type to Optional
    from trainer.launcher import launch, launch_node

    train_args = [f"--config={args.config}", *(f"--set={item}" for item in args.overrides)]
    try:
        _check_launch_flags(args.nproc, args.nnodes, args.node_rank)
        config = load_config(args.config, args.overrides)
        _check_world(config, args.nproc * (args.nnodes or 1))
        if args.nnodes is None:
            return launch(args.nproc, train_args)
        return launch_node(
            nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank, config=config.distributed,
            train_args=train_args,
        )
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except RendezvousError as exc:
        print(f"rendezvous failed: {exc}", file=sys.stderr, flush=True)
        return 1


def _check_launch_flags(nproc: int, nnodes: int | None, node_rank: int | None) -> None:
    if nproc < 1:
        raise ConfigError(f"--nproc={nproc}: must be >= 1")
    if nnodes is None:
        if node_rank is not None:
            raise ConfigError("--node-rank needs --nnodes (the number of pods in the Job)")
        return
    if nnodes < 1:
        raise ConfigError(f"--nnodes={nnodes}: must be >= 1")
    if node_rank is None:
        raise ConfigError("--node-rank is required with --nnodes (this pod's JOB_COMPLETION_INDEX)")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank={node_rank}: must be in 0..{nnodes - 1} (--nnodes={nnodes})")
    world_size = os.environ.get("WORLD_SIZE", "").strip()
    if world_size and world_size != str(nnodes * nproc):
        raise ConfigError(
            f"WORLD_SIZE={world_size} disagrees with --nnodes {nnodes} x --nproc {nproc} = {nnodes * nproc}; "
            "the Job's WORLD_SIZE counts ranks, not pods"
        )
