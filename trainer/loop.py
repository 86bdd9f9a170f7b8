"""The training loop: one rank's run (DDP over the process group, the learning-rate schedule of
`trainer.schedule`, evaluation with `trainer.evaluation`, checkpoints, tracking, and rank 0's `Summary`) and the
step functions it is made of (optimizer, forward/backward, optimizer step, the loss averaged over the ranks).

Everything random is a pure function of (train.seed, rank, step): batches come from `trainer.data`, dropout
masks from a generator reseeded each step. Together with the model and optimizer state in a checkpoint, this
makes a resumed run bitwise identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from tinygpt.saved import latest_checkpoint, step_dir_name
from trainer.accel import Acceleration, choose_acceleration
from trainer.accel import apply as apply_acceleration
from trainer.checkpoint import Checkpoint, TrainingState, load_checkpoint, restore_rng, save_checkpoint
from trainer.config import ConfigError, TrainConfig, TrainerConfig
from trainer.data import BatchSampler, Corpus, build_corpus, mix_seed
from trainer.distenv import DistEnv
from trainer.evaluation import evaluate
from trainer.metrics import TrainerMetrics, metrics_port
from trainer.progress import Progress, format_metrics
from trainer.runtime import (
    acknowledge_finish,
    announce_start,
    await_acknowledgements,
    await_start,
    process_group,
    rendezvous_store,
)
from trainer.schedule import lr_at
from trainer.stopping import Stopped, StopRequest, StopVote
from trainer.summary import Summary
from trainer.tracking import RunLogger, make_logger


def make_optimizer(model: GPT, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (nanoGPT's grouping)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=device.type in ("cpu", "cuda")
    )


def forward_backward(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], accel: Acceleration, device: torch.device
) -> torch.Tensor:
    """Forward and backward (DDP averages the gradients across ranks during it); returns the detached loss,
    still on the device: reading it would sync the host, which the loop does only on logging steps."""
    x, y = batch
    with accel.autocast(device):
        _, loss = model(x, y)
    assert loss is not None
    loss.backward()
    return loss.detach()


def optimizer_step(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """Clip the global gradient norm, update, and drop the gradients."""
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def mean_over_ranks(value: torch.Tensor, env: DistEnv) -> float:
    """`value` averaged over the ranks, on the host (one collective and one host sync)."""
    value = value.float().reshape(1)
    if env.is_distributed:
        dist.all_reduce(value)
    return float(value.item()) / env.world_size


def _check_compatible(checkpoint: Checkpoint, model_config: GPTConfig, corpus: Corpus) -> None:
    if checkpoint.model_config != model_config:
        saved, wanted = asdict(checkpoint.model_config), asdict(model_config)
        diff = ", ".join(f"{k}: checkpoint {saved[k]} vs {wanted[k]}" for k in saved if saved[k] != wanted[k])
        raise ConfigError(
            f"checkpoint.dir={str(checkpoint.path.parent)!r} holds a model of another shape ({diff}); "
            "use the model.* settings it was trained with or a new checkpoint.dir"
        )
    if checkpoint.tokenizer.chars != corpus.tokenizer.chars:
        raise ConfigError(
            f"data.source: the corpus's characters differ from the tokenizer in {checkpoint.path}; train on "
            "the corpus the checkpoint was made from or use a new checkpoint.dir"
        )


class Trainer:
    """One rank's training run; `run()` returns rank 0's summary (None on other ranks)."""

    def __init__(
        self,
        config: TrainerConfig,
        env: DistEnv,
        device: torch.device,
        *,
        backend: str,
        rendezvous: Callable[[], DistEnv],
        stop: StopRequest,
        progress_stream: Any = None,
    ) -> None:
        self.config = config
        self.env = env
        self.device = device
        self.backend = backend
        self.rendezvous = rendezvous
        self.stop = stop
        self.progress_stream = progress_stream
        self.is_main = env.rank == 0
        self.root = Path(config.checkpoint.dir)

    def run(self) -> Summary | None:
        cfg = self.config
        corpus = build_corpus(cfg.data, cfg.model.block_size)
        model_config = cfg.model.with_vocab(corpus.tokenizer.vocab_size)
        # Rank 0's checkpoint is the truth: the ranks need not share rank 0's filesystem, so rank 0 alone reads
        # it, decides whether anything is left to train, and sends it to the others once they have joined.
        checkpoint = None
        if self.is_main:
            latest = latest_checkpoint(self.root)
            checkpoint = load_checkpoint(latest) if latest else None
            if checkpoint is not None:
                _check_compatible(checkpoint, model_config, corpus)
        finished = checkpoint if checkpoint and checkpoint.state.step >= cfg.train.max_steps else None
        env, store = self.env, None
        if env.is_distributed:
            env = self.rendezvous()
            store = rendezvous_store(env, cfg.distributed.timeout_s)
            if self.is_main:
                announce_start(store, finished.state.step if finished else None)
                if finished:
                    self._release_peers(store, env)
            elif self._told_finished(store, env):
                return None
        if finished:
            return self._finish(finished.path, finished.state, finished.state.step, tokens_per_s=0.0)

        logger = make_logger(cfg.tracking, checkpoint.state.run_id if checkpoint else None) if self.is_main else None
        metrics = TrainerMetrics(self.env.rank)
        port = metrics_port(cfg.metrics.port, self.env.rank, self.env.local_world_size)
        url = metrics.serve(cfg.metrics.host, port)
        if url:
            print(f"rank {self.env.rank}: metrics at {url}", file=sys.stderr, flush=True)
        try:
            with process_group(env, self.backend, cfg.distributed.timeout_s, self.device, store):
                if env.is_distributed:
                    box = [checkpoint]
                    dist.broadcast_object_list(box, src=0)
                    checkpoint = box[0]
                start = checkpoint.state.step if checkpoint else 0
                path, state, tokens_per_s = self._train(env, corpus, model_config, checkpoint, logger, metrics)
        except Stopped:
            if logger is not None:
                logger.finish("KILLED")
            raise
        except BaseException:
            if logger is not None:
                with contextlib.suppress(Exception):
                    logger.finish("FAILED")
            raise
        finally:
            metrics.close()
        if not self.is_main:
            return None
        return self._finish(path, state, start, tokens_per_s=tokens_per_s, logger=logger)

    def _told_finished(self, store: dist.Store, env: DistEnv) -> bool:
        """Ranks > 0: whether rank 0 found training finished; if so, acknowledge it (rank 0 waits for that)."""
        finished_step = await_start(store)
        if finished_step is None:
            return False
        acknowledge_finish(store, env.rank)
        print(
            f"rank {env.rank}: rank 0's checkpoint is at step {finished_step} "
            f"(train.max_steps={self.config.train.max_steps}): nothing to train",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        return True

    def _release_peers(self, store: dist.Store, env: DistEnv) -> None:
        """Rank 0 of a finished job: keep the store up until the other ranks have read that training is over,
        at most `distributed.rendezvous_timeout_s` (pods that already completed, and are not retried, never
        come)."""
        timeout_s = self.config.distributed.rendezvous_timeout_s
        missing = await_acknowledgements(store, env, timeout_s)
        if missing:
            ranks = ", ".join(map(str, missing))
            print(
                f"rank 0: rank{'s' if len(missing) > 1 else ''} {ranks} did not acknowledge the end of training "
                f"within {timeout_s:g} s (already completed?); finishing without them",
                file=sys.stderr, flush=True,
            )  # fmt: skip

    def _finish(
        self, path: Path, state: TrainingState, start: int, *, tokens_per_s: float, logger: RunLogger | None = None
    ) -> Summary:
        if logger is None:
            logger = make_logger(self.config.tracking, state.run_id)
        published = None
        if state.val_loss is not None:
            published = logger.publish_model(path, step=state.step, val_loss=state.val_loss)
        logger.finish("FINISHED")
        return Summary(
            step=state.step, train_loss=state.train_loss, val_loss=state.val_loss, tokens_per_s=tokens_per_s,
            checkpoint=str(path), world_size=state.world_size, resumed_from_step=start, run_id=logger.run_id,
            model_uri=published.model_uri if published else None,
            alias_moved=published.alias_moved if published else None,
        )

    def _train(
        self,
        env: DistEnv,
        corpus: Corpus,
        model_config: GPTConfig,
        checkpoint: Checkpoint | None,
        logger: RunLogger | None,
        metrics: TrainerMetrics,
    ) -> tuple[Path, TrainingState, float]:
        cfg, tcfg, device = self.config, self.config.train, self.device
        accel = choose_acceleration(tcfg, device)
        apply_acceleration(accel)
        torch.manual_seed(tcfg.seed)  # identical initial weights on every rank
        raw = GPT(model_config).to(device)
        optimizer = make_optimizer(raw, tcfg, device)
        start, val_loss, run_id = 0, None, logger.run_id if logger else None
        if checkpoint is not None:
            raw.load_state_dict(checkpoint.model_state)
            optimizer.load_state_dict(checkpoint.optimizer_state)
            if self.is_main:
                restore_rng(checkpoint.rng)
            start, val_loss = checkpoint.state.step, checkpoint.state.val_loss
        model: torch.nn.Module = raw
        vote_group = None
        if env.is_distributed:
            model = DistributedDataParallel(
                raw, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
                bucket_cap_mb=cfg.distributed.bucket_cap_mb,
            )
            # The stop vote is read on the host every step: on a GPU job it gets a CPU group of its own.
            if self.backend != "gloo":
                made = dist.new_group(backend="gloo")
                assert isinstance(made, dist.ProcessGroup)  # every rank is a member, so never the non-member marker
                vote_group = made
        if accel.compile:
            model = torch.compile(model)  # type: ignore[assignment]  # after DDP, so that dynamo splits graphs at DDP's bucket boundaries
        vote = StopVote(self.stop, distributed=env.is_distributed, group=vote_group)
        params = [p for p in raw.parameters() if p.requires_grad]
        if logger is not None:
            logger.log_params(
                cfg.to_flat_dict()
                | {"world_size": env.world_size, "vocab_size": model_config.vocab_size,
                   "n_params": raw.num_parameters()}
            )

        def sampler(data: torch.Tensor, stream: str) -> BatchSampler:
            return BatchSampler(
                data=data, stream=stream, seed=tcfg.seed, global_batch=tcfg.batch_size,
                block_size=model_config.block_size, rank=env.rank, world_size=env.world_size, device=device,
            )

        train_batches, val_batches = sampler(corpus.train, "train"), sampler(corpus.val, "val")
        tokens_per_step = tcfg.batch_size * model_config.block_size
        progress = Progress(
            total=tcfg.max_steps, initial=start, log_every=tcfg.log_every, enabled=self.is_main,
            stream=self.progress_stream,
        )
        metrics.started(max_steps=tcfg.max_steps, world_size=env.world_size, resumed_from_step=start)
        if start:
            progress.message(f"resumed from {checkpoint.path if checkpoint else ''} at step {start}")
        reseed_dropout = model_config.dropout > 0
        clock = time.perf_counter
        train_time, window_time, window_steps = 0.0, 0.0, 0
        train_loss: float | None = None
        path = self.root
        state: TrainingState | None = None
        try:
            for step in range(start, tcfg.max_steps):
                began = clock()
                lr = lr_at(step, tcfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if reseed_dropout:  # dropout masks are a function of (seed, rank, step): exact resume
                    torch.manual_seed(mix_seed(tcfg.seed, "dropout", env.rank, step))
                batch = train_batches(step)
                sampled = clock()
                loss = forward_backward(model, batch, accel, device)
                computed = clock()
                optimizer_step(params, optimizer, tcfg.grad_clip)
                updated = clock()
                done = step + 1
                final = done == tcfg.max_steps
                stopping = vote.decided() and not final  # every rank reads the same outcome at the same step
                if not (stopping or final):
                    vote.cast()
                every = cfg.checkpoint.every
                save = stopping or final or bool(every and done % every == 0)
                log = done % tcfg.log_every == 0 or final
                if log or save:
                    train_loss = mean_over_ranks(loss, env)
                ended = clock()
                elapsed = ended - began
                metrics.step_done(done, elapsed, {
                    "data": sampled - began, "forward_backward": computed - sampled,
                    "optimizer": updated - computed, "sync": ended - updated,
                })
                train_time += elapsed
                window_time += elapsed
                window_steps += 1
                logged: dict[str, float] = {}
                if log and train_loss is not None:
                    tokens_per_s = tokens_per_step * window_steps / window_time
                    logged = {"train_loss": train_loss, "lr": lr, "tokens_per_s": tokens_per_s}
                    window_time, window_steps = 0.0, 0
                    metrics.logged(train_loss=train_loss, tokens_per_s=tokens_per_s)
                    if logger is not None:
                        logger.log_metrics(logged, step=done)
                progress.step(done, logged)
                if not stopping and ((tcfg.eval_every and done % tcfg.eval_every == 0) or final):
                    val_loss = evaluate(raw, val_batches, tcfg.eval_iters, env, device, accel)
                    metrics.evaluated(val_loss)
                    progress.message(f"step {done}: {format_metrics({'val_loss': val_loss})}")
                    if logger is not None:
                        logger.log_metrics({"val_loss": val_loss}, step=done)
                if save:
                    state = TrainingState(
                        step=done, samples_seen=done * tcfg.batch_size, seed=tcfg.seed,
                        world_size=env.world_size, run_id=run_id, train_loss=train_loss, val_loss=val_loss,
                    )
                    path = self.root / step_dir_name(done)
                    if self.is_main:
                        saving = clock()
                        path = save_checkpoint(
                            self.root, model=raw, tokenizer=corpus.tokenizer, optimizer=optimizer, state=state,
                            keep=cfg.checkpoint.keep,
                        )
                        metrics.checkpoint_saved(path, clock() - saving)
                        progress.message(f"checkpoint {path}")
                        if logger is not None:
                            logger.log_checkpoint(path, done)
                if stopping:
                    if env.is_distributed:
                        dist.barrier()  # other ranks exit only once the checkpoint is on disk
                    raise Stopped(self.stop.signum or signal.SIGTERM, path)
        finally:
            vote.settle()
            progress.close()
        if env.is_distributed:
            dist.barrier()  # a rank's pod completes only once the final checkpoint is on disk
        assert state is not None
        tokens_per_s = tokens_per_step * (tcfg.max_steps - start) / train_time if train_time else 0.0
        return path, state, tokens_per_s
