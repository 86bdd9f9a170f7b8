"""The training loop: DDP over the process group, evaluation, checkpoints, tracking and the final summary.

Everything random is a pure function of (train.seed, rank, step): batches come from `trainer.data`, dropout
masks from a generator reseeded each step. Together with the model and optimizer state in a checkpoint, this
makes a resumed run bitwise identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tinygpt.config import GPTConfig
from tinygpt.model import GPT
from tinygpt.saved import latest_checkpoint, step_dir_name
from trainer.checkpoint import Checkpoint, TrainingState, load_checkpoint, read_state, restore_rng, save_checkpoint
from trainer.config import ConfigError, TrainConfig, TrainerConfig
from trainer.data import BatchSampler, Corpus, build_corpus, mix_seed
from trainer.distenv import DistEnv
from trainer.progress import Progress, format_metrics
from trainer.runtime import process_group
from trainer.tracking import RunLogger, make_logger


class StopRequest:
    """Set by SIGTERM or SIGINT; the loop checks it after every step (agreed across ranks) and, if set,
    writes a checkpoint and stops. A second signal gets the default behaviour (exit at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)


class Stopped(Exception):
    """Training stopped early on a signal after writing `checkpoint`; the process should exit 128 + signum."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signum} after checkpoint {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """Rank 0's final JSON line."""

    step: int
    """Steps completed."""
    train_loss: float | None
    """Mean training loss of the last step (None if no step ran since the last checkpoint was written)."""
    val_loss: float | None
    """Validation loss at the last step."""
    tokens_per_s: float
    """Global training tokens per second of training-step time in this process (0 when no step ran)."""
    checkpoint: str
    """The final checkpoint directory (also a saved-model directory)."""
    world_size: int
    """Ranks that trained."""
    resumed_from_step: int
    """Step of the checkpoint this process started from (0 = a fresh start)."""
    run_id: str | None = None
    """MLflow run, when tracking is on."""
    model_uri: str | None = None
    """`models:/<name>/<version>` of the registered model, when tracking is on."""
    alias_moved: bool | None = None
    """Whether tracking.alias now points at the new version."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for the step with 0-based index `step`: linear warmup, then cosine decay to min_lr."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / (config.warmup_steps + 1)
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


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


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    grad_clip: float,
    device: torch.device,
) -> torch.Tensor:
    """Forward, backward (DDP averages gradients across ranks here), clip, update; returns the detached loss."""
    x, y = batch
    with _autocast(device):
        _, loss = model(x, y)
    assert loss is not None
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def evaluate(model: GPT, batches: BatchSampler, iters: int, env: DistEnv, device: torch.device) -> float:
    """Mean loss over the same `iters` global validation batches every time, averaged across ranks."""
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    for index in range(iters):
        x, y = batches(index)
        with _autocast(device):
            _, loss = model(x, y)
        assert loss is not None
        total += loss.double()
    model.train()
    if env.is_distributed:
        dist.all_reduce(total)
    return float(total.item() / (iters * env.world_size))


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
        latest = latest_checkpoint(self.root)
        # Rank 0's checkpoint is the truth; it is sent to the other ranks once they have joined, so they
        # need not share rank 0's filesystem.
        checkpoint = load_checkpoint(latest) if latest and self.is_main else None
        if checkpoint is not None:
            _check_compatible(checkpoint, model_config, corpus)
        if latest is not None and read_state(latest).step >= cfg.train.max_steps:
            # Nothing left to train: don't wait for ranks whose pods may already have completed.
            state = read_state(latest)
            return self._finish(latest, state, state.step, tokens_per_s=0.0) if self.is_main else None

        logger = make_logger(cfg.tracking, checkpoint.state.run_id if checkpoint else None) if self.is_main else None
        try:
            env = self.rendezvous()
            with process_group(env, self.backend, cfg.distributed.timeout_s, self.device):
                if env.is_distributed:
                    box = [checkpoint]
                    dist.broadcast_object_list(box, src=0)
                    checkpoint = box[0]
                start = checkpoint.state.step if checkpoint else 0
                path, state, tokens_per_s = self._train(env, corpus, model_config, checkpoint, logger)
        except Stopped:
            if logger is not None:
                logger.finish("KILLED")
            raise
        except BaseException:
            if logger is not None:
                with contextlib.suppress(Exception):
                    logger.finish("FAILED")
            raise
        if not self.is_main:
            return None
        return self._finish(path, state, start, tokens_per_s=tokens_per_s, logger=logger)

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
    ) -> tuple[Path, TrainingState, float]:
        cfg, tcfg, device = self.config, self.config.train, self.device
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
        if env.is_distributed:
            model = DistributedDataParallel(
                raw, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
            )
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
        if start:
            progress.message(f"resumed from {checkpoint.path if checkpoint else ''} at step {start}")
        train_time, window_time, window_steps = 0.0, 0.0, 0
        train_loss: float | None = None
        path = self.root
        state: TrainingState | None = None
        try:
            for step in range(start, tcfg.max_steps):
                began = time.perf_counter()
                lr = lr_at(step, tcfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(mix_seed(tcfg.seed, "dropout", env.rank, step))
                loss = train_step(model, optimizer, train_batches(step), grad_clip=tcfg.grad_clip, device=device)
                # One small collective per step: the mean loss, and whether any rank was asked to stop.
                shared = torch.stack([loss.float(), torch.tensor(float(self.stop.requested), device=device)])
                if env.is_distributed:
                    dist.all_reduce(shared)
                mean_loss, stop_votes = shared.tolist()
                train_loss = mean_loss / env.world_size
                elapsed = time.perf_counter() - began
                train_time += elapsed
                window_time += elapsed
                window_steps += 1
                done = step + 1
                final = done == tcfg.max_steps
                metrics: dict[str, float] = {}
                if done % tcfg.log_every == 0 or final:
                    metrics = {"train_loss": train_loss, "lr": lr,
                               "tokens_per_s": tokens_per_step * window_steps / window_time}
                    window_time, window_steps = 0.0, 0
                    if logger is not None:
                        logger.log_metrics(metrics, step=done)
                progress.step(done, metrics)
                if stop_votes == 0 and ((tcfg.eval_every and done % tcfg.eval_every == 0) or final):
                    val_loss = evaluate(raw, val_batches, tcfg.eval_iters, env, device)
                    progress.message(f"step {done}: {format_metrics({'val_loss': val_loss})}")
                    if logger is not None:
                        logger.log_metrics({"val_loss": val_loss}, step=done)
                every = cfg.checkpoint.every
                if stop_votes or final or (every and done % every == 0):
                    state = TrainingState(
                        step=done, samples_seen=done * tcfg.batch_size, seed=tcfg.seed,
                        world_size=env.world_size, run_id=run_id, train_loss=train_loss, val_loss=val_loss,
                    )
                    path = self.root / step_dir_name(done)
                    if self.is_main:
                        path = save_checkpoint(
                            self.root, model=raw, tokenizer=corpus.tokenizer, optimizer=optimizer, state=state,
                            keep=cfg.checkpoint.keep,
                        )
                        progress.message(f"checkpoint {path}")
                        if logger is not None:
                            logger.log_checkpoint(path, done)
                if stop_votes and not final:
                    if env.is_distributed:
                        dist.barrier()  # other ranks exit only once the checkpoint is on disk
                    raise Stopped(self.stop.signum or signal.SIGTERM, path)
        finally:
            progress.close()
        if env.is_distributed:
            dist.barrier()  # a rank's pod completes only once the final checkpoint is on disk
        assert state is not None
        tokens_per_s = tokens_per_step * (tcfg.max_steps - start) / train_time if train_time else 0.0
        return path, state, tokens_per_s


@contextlib.contextmanager
def installed(stop: StopRequest) -> Iterator[StopRequest]:
    """Install the stop handlers for the duration of the block, restoring the previous ones after."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    stop.install()
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
