"""The training engine shared by every task: AdamW with warm-up + cosine LR, gradient clipping and
accumulation, EMA weights, CFG condition dropout, bf16 autocast / TF32 / optional torch.compile on
CUDA, JSONL metrics with a progress bar, validation loss, atomic safetensors checkpoints, exact
resume, and DDP or FSDP sharding under ``torchrun`` (:mod:`pipelines.engine.parallel`).

Exact resume: every random draw of step ``s`` (batch order, noise levels, noise, CFG drops,
network dropout) derives from ``(seed, s, rank)``: batch order from a per-epoch permutation,
the loss noise from an explicit generator, and dropout from torch's default generator re-seeded
inside ``torch.random.fork_rng`` (dropout takes no generator argument; the global state is
restored after each step). A run resumed from the checkpoint of step ``s`` therefore replays
steps ``s+1..`` bit for bit; nothing but the step number has to be restored besides the weights,
optimizer and scheduler states.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from stdiff.datasets.atomic import atomic_path
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import Weighting, crps_loss, denoising_loss, regression_loss
from stdiff.diffusion.precond import Denoiser
from stdiff.diffusion.rng import member_seed
from stdiff.diffusion.schedules import NoiseSchedule
from stdiff.pipelines.engine.checkpoint import (
    latest_checkpoint,
    load_training_checkpoint,
    load_weights,
    save_training_checkpoint,
)
from stdiff.pipelines.engine.config import at_least_one, check_range
from stdiff.pipelines.engine.device import autocast
from stdiff.pipelines.engine.memory import (
    SavedActivations,
    allocation_limit,
    check_step_memory,
    is_allocation_error,
    too_large,
)
from stdiff.pipelines.engine.parallel import (
    Sharding,
    check_shardable,
    full_state,
    is_sharded,
    load_optimizer,
    wrap,
)
from stdiff.pipelines.engine.progress import progress_bar

Batch = tuple[torch.Tensor, Condition | None, torch.Tensor | None]  # x0, condition, loss mask
# loss_fn(forward, denoiser, x0, cond, mask, generator) -> scalar: ``forward`` is the (possibly
# DDP-wrapped / compiled) module to call, ``denoiser`` the plain one (its precond, schedule, ...)
LossFn = Callable[
    [nn.Module, Denoiser, torch.Tensor, Condition | None, torch.Tensor | None, torch.Generator],
    torch.Tensor,
]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its LR schedule: linear warm-up for ``warmup_steps``, then ``lr_schedule``:

    * ``cosine``: half-cosine to ``min_lr_ratio * lr`` at the last step;
    * ``multistep``: times ``gamma`` at each of ``milestones`` (fractions of the steps), CSDI's
      ``MultiStepLR`` at 75 % and 90 % of training;
    * ``constant``.

    ``grad_clip``: the global gradient-norm bound, 0 for none (CSDI does not clip)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    lr_schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    milestones: tuple[float, ...] = (0.75, 0.9)
    gamma: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("cosine", "multistep", "constant"):
            raise ValueError(
                f"optim.lr_schedule {self.lr_schedule!r} is not valid; "
                "choose one of ['cosine', 'multistep', 'constant']"
            )
        if not all(0 < m <= 1 for m in self.milestones):
            raise ValueError(f"optim.milestones must be fractions in (0, 1], got {self.milestones}")
        if self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("optim.grad_clip and optim.warmup_steps must not be negative")
        check_range(self, "lr", low=0.0, low_open=True)
        check_range(self, "weight_decay", "gamma", low=0.0)
        check_range(self, "min_lr_ratio", low=0.0, high=1.0)
        at_least_one(self, "grad_accum")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")

    def factor(self, step: int, total: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` of ``total``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "cosine":
            return lr_factor(step, self.warmup_steps, total, self.min_lr_ratio)
        if self.lr_schedule == "multistep":
            return self.gamma ** sum(step >= round(m * total) for m in self.milestones)
        return 1.0


@dataclass(frozen=True)
class LoopConfig:
    """Steps (optimizer updates), micro-batch size per process, EMA, CFG dropout and cadences.

    ``ema_warmup``: the EMA decay at step ``s`` is ``min(ema_decay, (1 + s) / (10 + s))`` (as
    diffusers' EMAModel), so early EMA weights are not dominated by the initialisation; without
    it 0.999 keeps ``0.999**s`` of the initial weights (22 % after 1,500 steps).

    ``objective``: ``denoise``; ``regression`` (the deterministic baseline); ``crps`` (a
    one-evaluation generator trained on the fair CRPS of two members, FGN's idea,
    ``diffusion.losses.crps_loss``; sampled with ``--sampler consistency --steps 1``); ``autoencoder`` (a
    ``KLAutoencoder`` with ``kl_weight``, ``pipelines.engine.latent``); ``hybrid`` (IDDPM's
    ``L_simple + vlb_weight * L_vlb`` for ``model.kind: learned_variance``).

    ``sharding`` (under ``torchrun``; one process ignores it): ``ddp`` keeps a full model,
    gradients and optimizer state on every process; ``fsdp`` shards them over the processes
    (FSDP2), for models that do not fit one GPU. Same training up to float rounding, same
    checkpoints (:mod:`pipelines.engine.parallel`)."""

    steps: int = 1000
    batch_size: int = 32
    ema_decay: float = 0.999
    ema_warmup: bool = True
    cfg_dropout: float = 0.0
    weighting: Weighting = "native"
    objective: Literal["denoise", "regression", "crps", "autoencoder", "hybrid"] = "denoise"
    kl_weight: float = 1e-6
    vlb_weight: float = 0.001
    log_every: int = 50
    checkpoint_every: int = 500
    val_every: int = 0
    sample_every: int = 0
    val_batches: int = 4
    num_workers: int = 0
    amp: bool = True
    compile: bool = False
    progress: bool = True
    sharding: Sharding = "ddp"

    def __post_init__(self) -> None:
        if self.sharding not in ("ddp", "fsdp"):
            raise ValueError(
                f"loop.sharding {self.sharding!r} is not valid; choose one of ['ddp', 'fsdp']"
            )
        at_least_one(self, "steps", "batch_size", "log_every", "checkpoint_every", "val_batches")
        for name in ("val_every", "sample_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"{name} must not be negative (0 turns it off), got {getattr(self, name)}"
                )
        check_range(self, "ema_decay", low=0.0, high=1.0, high_open=True)
        check_range(self, "cfg_dropout", low=0.0, high=1.0, high_open=True)
        check_range(self, "kl_weight", "vlb_weight", low=0.0)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base LR at ``step``: linear warm-up, then half-cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class StepBatches(Sampler[list[int]]):
    """Deterministic micro-batches from micro-step ``start`` on: epoch ``e`` is a permutation
    seeded by ``(seed, e)``; with ``world > 1`` each rank takes every ``world``-th index of the
    global batch (the DistributedSampler idea, but resumable at any step)."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if n < batch_size * world:
            raise ValueError(
                f"the training split holds {n} samples, fewer than one global batch "
                f"({batch_size * world}): set loop.batch_size to at most {n // world}"
            )
        self.n, self.bs, self.seed, self.start, self.rank, self.world = (
            n,
            batch_size,
            seed,
            start,
            rank,
            world,
        )
        self.per_epoch = n // (batch_size * world)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            epoch, k = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(member_seed(self.seed, 11, epoch))
            perm = torch.randperm(self.n, generator=g)
            glob = perm[k * self.bs * self.world : (k + 1) * self.bs * self.world]
            yield glob[self.rank :: self.world].tolist()
            step += 1

    def __len__(self) -> int:  # infinite in principle; a large number keeps DataLoader happy
        return 2**62


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class TrainState:
    step: int = 0
    losses: list[float] = field(default_factory=list)


def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(p.detach(), 1 - decay)
        for be, b in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(b)


def train(
    denoiser: Denoiser,
    schedule: NoiseSchedule,
    dataset: Dataset,
    to_batch: Callable[[dict, torch.Generator], Batch],
    *,
    loop: LoopConfig,
    optim: OptimConfig,
    run_dir: str | Path,
    config: dict[str, Any],
    seed: int,
    device: torch.device,
    resume: str | Path | None = None,
    val_dataset: Dataset | None = None,
    metadata: dict[str, Any] | None = None,
    sample_fn: Callable[[Denoiser, int, Path], dict[str, float]] | None = None,
    loss_fn: LossFn | None = None,
) -> TrainState:
    """Train ``denoiser`` in place for ``loop.steps`` optimizer steps; checkpoints and
    ``metrics.jsonl`` (and ``metrics.csv``, and TensorBoard events in ``tb/`` when tensorboard is
    installed) go to ``run_dir``. ``to_batch(item_batch, generator)`` turns a collated batch into
    ``(x0, cond, loss_mask)`` (drawing any task randomness from ``generator``). Every
    ``loop.sample_every`` steps ``sample_fn(ema_denoiser, step, run_dir / "samples")`` dumps
    samples (its own generators; the training stream is untouched) and returns scores to log.
    ``loss_fn`` replaces the objective of ``loop.objective`` (distillation: :mod:`pipelines.jobs.distill`)."""
    rank, world = _dist()
    if is_sharded(loop.sharding):
        check_shardable(denoiser, loop.objective)
    run_dir = Path(run_dir)
    denoiser.to(device)
    if loss_fn is None:
        loss_fn = partial(_loss, schedule=schedule, loop=loop)
    dry_run(denoiser, dataset, to_batch, loss_fn, device, loop)  # before the run folder exists
    run_dir.mkdir(parents=True, exist_ok=True)
    ema = (
        copy.deepcopy(denoiser)  # same class: energy / consistency / learned-variance wrappers
        .to(device)
        .requires_grad_(False)
        .eval()  # never trained: dropout off for validation and sample dumps
    )
    state = TrainState()
    ckpt = latest_checkpoint(resume) if resume else None
    if resume and ckpt is None and Path(resume).resolve() != run_dir.resolve():
        raise ValueError(f"{resume}: no checkpoint to resume from")
    # resuming this run's own folder, killed before its first checkpoint: it starts at step 0
    # (its metrics are truncated below), exactly as the killed run began
    saved = load_training_checkpoint(ckpt) if ckpt is not None else None
    if saved is not None:  # into the full modules, before DDP or FSDP sees them
        load_weights(denoiser.net, saved["model"], ckpt)
        load_weights(ema.net, saved["ema"], ckpt)
        state.step = saved["step"]
    model = wrap(denoiser, ema, loop.sharding, device)  # FSDP: sharded parameters from here on
    opt = torch.optim.AdamW(
        denoiser.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: optim.factor(s, loop.steps))
    if saved is not None:
        try:
            load_optimizer(denoiser, opt, saved["optimizer"], loop.sharding)
            sched.load_state_dict(saved["scheduler"])
        except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as e:
            raise ValueError(f"{ckpt}: optimizer state does not fit this model ({e})") from None
    forward = torch.compile(model) if (loop.compile and device.type == "cuda") else model
    sampler = StepBatches(
        len(dataset), loop.batch_size, seed, state.step * optim.grad_accum, rank, world
    )  # type: ignore[arg-type]
    loader = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=loop.num_workers))
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        _truncate_metrics(metrics_path, state.step)
    tb = _TensorBoard(run_dir / "tb" if rank == 0 else None)
    bar = progress_bar(
        loop.steps, enabled=loop.progress and rank == 0, initial=state.step, unit="step"
    )
    val_loss = (
        partial(validation_loss, ema, val_dataset, to_batch, loop, seed, device, loss_fn)
        if val_dataset is not None
        else None
    )
    t_last, n_last = time.perf_counter(), 0
    while state.step < loop.steps:
        step = state.step
        gen = torch.Generator(device=device).manual_seed(member_seed(seed, 2, step, rank))
        total = 0.0
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.default_generator.manual_seed(member_seed(seed, 3, step, rank))  # network dropout
            if device.type == "cuda":
                torch.cuda.manual_seed(member_seed(seed, 4, step, rank))
            for _ in range(optim.grad_accum):
                x0, cond, mask = to_batch(_to(next(loader), device), gen)
                if loop.cfg_dropout > 0 and cond is not None:
                    drop = torch.rand(x0.shape[0], generator=gen, device=device) < loop.cfg_dropout
                    cond = replace(cond, drop=drop)
                with autocast(device, loop.amp):
                    loss = loss_fn(forward, denoiser, x0, cond, mask, gen)
                (loss / optim.grad_accum).backward()
                total += float(loss.detach()) / optim.grad_accum
                n_last += x0.shape[0] * world
        clip = optim.grad_clip if optim.grad_clip > 0 else math.inf  # inf: measure, do not clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(denoiser.parameters(), clip))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        decay = min(loop.ema_decay, (1 + step) / (10 + step)) if loop.ema_warmup else loop.ema_decay
        ema_update(ema, denoiser, decay)
        state.step += 1
        state.losses.append(total)
        if rank == 0:
            bar.update(1)
            bar.set_postfix(
                loss=f"{total:.4f}", samples_s=f"{n_last / (time.perf_counter() - t_last):.1f}"
            )
        if state.step % loop.log_every == 0 or state.step == loop.steps:
            rec = {
                "step": state.step,
                "loss": total,
                "lr": sched.get_last_lr()[0],
                "grad_norm": grad_norm,
                "samples_per_s": n_last / (time.perf_counter() - t_last),
            }
            if rank == 0 or is_sharded(loop.sharding):  # a sharded EMA's forward is collective
                rec.update(_evaluate(ema, state.step, loop, val_loss, sample_fn, run_dir, rank))
            if rank == 0:
                _append(metrics_path, rec)
                tb.log(rec)
            t_last, n_last = time.perf_counter(), 0
        if state.step % loop.checkpoint_every == 0 or state.step == loop.steps:
            model_sd, ema_sd, opt_state = full_state(denoiser, ema, opt, loop.sharding)
            if rank == 0:  # every rank gathers (FSDP: a collective), rank 0 writes
                save_training_checkpoint(run_dir, state.step, model=model_sd, ema=ema_sd,
                                         optimizer=opt_state, scheduler=sched, config=config,
                                         metadata=metadata)  # fmt: skip
                write_csv(metrics_path)
    bar.close()
    tb.close()
    return state


def _evaluate(
    ema: Denoiser,
    step: int,
    loop: LoopConfig,
    val_loss: Callable[[], float] | None,
    sample_fn: Callable[[Denoiser, int, Path], dict[str, float]] | None,
    run_dir: Path,
    rank: int,
) -> dict[str, Any]:
    """The validation loss (``val_loss()``, None without validation data) and sample scores due
    at ``step``. Under FSDP every rank runs them (the sharded EMA's forward is collective); only
    rank 0's samples are kept."""
    rec: dict[str, Any] = {}
    if val_loss is not None and loop.val_every and step % loop.val_every == 0:
        rec["val_loss"] = val_loss()
    if sample_fn is not None and loop.sample_every and step % loop.sample_every == 0:
        if rank == 0:
            rec.update(sample_fn(ema, step, run_dir / "samples"))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                sample_fn(ema, step, Path(tmp))
    return rec


def dry_run(
    denoiser: Denoiser,
    dataset: Dataset,
    to_batch,
    loss_fn,
    device: torch.device,
    loop: LoopConfig | None = None,
) -> None:
    """One loss evaluation on up to two items in training mode (under the training autocast),
    without a backward pass: a network that does not fit the data (sizes, channels, features)
    is refused as a config error, and (given ``loop``) a step of ``loop.batch_size`` samples
    whose activations would not fit in memory is refused naming ``loop.batch_size``
    (:mod:`pipelines.engine.memory`), both before any folder exists."""
    if len(dataset) == 0:
        raise ValueError("data: the training split is empty; check data.store and its periods")
    n = min(2, len(dataset), loop.batch_size if loop is not None else 2)
    items = [dataset[i] for i in range(n)]
    was_training = denoiser.training
    gen = torch.Generator(device=device).manual_seed(0)
    saved = SavedActivations(denoiser)
    try:
        forked = [device] if device.type == "cuda" else []  # dropout draws: no global RNG touched
        with torch.random.fork_rng(devices=forked), saved:  # gradients on: energy models need them
            batch = _to(torch.utils.data.default_collate(items), device)
            x0, cond, mask = to_batch(batch, gen)
            with autocast(device, loop is None or loop.amp), allocation_limit(device):
                loss = loss_fn(denoiser.train(), denoiser, x0, cond, mask, gen).detach()
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, ZeroDivisionError,
            MemoryError) as e:  # fmt: skip
        if is_allocation_error(e):
            raise too_large(loop.batch_size if loop else n, n, device) from None
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ValueError(
            f"model: the network does not run on this data ({type(e).__name__}: {first[:240]}); "
            "check model.params against the store (channels, features, sizes)"
        ) from None
    finally:
        denoiser.train(was_training)
    if not torch.isfinite(loss).all():
        raise ValueError("model: the first loss is not finite; check the data and model.params")
    if loop is not None:
        check_step_memory(saved.nbytes / n, loop.batch_size, denoiser, device)


def _loss(forward, denoiser, x0, cond, mask, gen, *, schedule, loop: LoopConfig) -> torch.Tensor:
    """The training objective: denoising, (``regression``) the deterministic baseline's MSE, or
    (``crps``) the one-evaluation generator's fair CRPS."""
    if loop.objective == "regression":
        return regression_loss(forward, x0, top_sigma(schedule), cond, mask=mask)
    if loop.objective == "crps":
        return crps_loss(forward, x0, top_sigma(schedule), cond, mask=mask, generator=gen)
    return denoising_loss(
        forward, x0, schedule, cond, mask=mask, weighting=loop.weighting, generator=gen,
        precond=denoiser.precond,
    )  # fmt: skip


def top_sigma(schedule: NoiseSchedule) -> float:
    """The schedule's top level, where the regression baseline and the CRPS generator are evaluated."""
    return float(schedule.discretize(1)[0])


@torch.no_grad()
def validation_loss(
    denoiser: Denoiser,
    dataset: Dataset,
    to_batch: Callable[[dict, torch.Generator], Batch],
    loop: LoopConfig,
    seed: int,
    device: torch.device,
    loss_fn: LossFn,
) -> float:
    """Mean loss over the first ``loop.val_batches`` batches, with fixed noise (comparable over time)."""
    gen = torch.Generator(device=device).manual_seed(member_seed(seed, 5))
    losses = []
    for i, batch in enumerate(DataLoader(dataset, batch_size=loop.batch_size, shuffle=False)):
        if i >= loop.val_batches:
            break
        x0, cond, mask = to_batch(_to(batch, device), gen)
        losses.append(float(loss_fn(denoiser, denoiser, x0, cond, mask, gen)))
    return float(np.mean(losses)) if losses else float("nan")


def _to(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def _append(path: Path, rec: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def write_csv(jsonl: Path) -> Path:
    """``metrics.csv`` beside ``metrics.jsonl``: one row per record, a column per key seen."""
    import csv

    recs = [json.loads(ln) for ln in jsonl.read_text().splitlines() if ln] if jsonl.exists() else []
    cols = list(dict.fromkeys(k for r in recs for k in r if not isinstance(r[k], (list, dict))))
    out = jsonl.with_suffix(".csv")
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(recs)
    return out


class _TensorBoard:
    """Scalars to TensorBoard when the ``tensorboard`` package is installed; else nothing."""

    def __init__(self, logdir: Path | None) -> None:
        self.writer = None
        if logdir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(logdir))

    def log(self, rec: dict[str, Any]) -> None:
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records a killed run wrote after the checkpoint it resumes from (and a
    last line it cut short)."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(ln)
        except ValueError:  # the half-written last line of a killed run
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(ln)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep))
