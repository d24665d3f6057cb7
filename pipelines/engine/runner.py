"""``stdiff train --config``: a typed training job from a YAML file, on a store from ``stdiff ingest``.

The runner is task-agnostic: the task named by ``data.task`` (``pipelines.tasks``) says how store
items become ``(x0, condition, loss mask)``, completes the network's parameters from the store and
gives its sample dump; the runner claims and locks the run folder, builds the denoiser
(``pipelines.engine.models``), optionally moves training into an autoencoder's latent space
(``pipelines.engine.latent``), and runs the shared loop (``pipelines.engine.train``).
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from stdiff.datasets.atomic import temp_sibling
from stdiff.datasets.errors import StdiffWarning
from stdiff.datasets.outputs import FolderLock, claim_folder
from stdiff.datasets.store import open_store
from stdiff.diffusion.precond import Denoiser, X0Clip
from stdiff.diffusion.rng import member_seed
from stdiff.diffusion.schedules import make_schedule
from stdiff.pipelines.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    tensor_group,
)
from stdiff.pipelines.engine.config import from_dict, to_dict
from stdiff.pipelines.engine.device import DeviceName, resolve_device
from stdiff.pipelines.engine.models import ModelConfig, ScheduleConfig, build_net, make_denoiser
from stdiff.pipelines.engine.train import LoopConfig, OptimConfig, TrainState, train
from stdiff.pipelines.tasks import get_task
from stdiff.pipelines.tasks.base import DataConfig, SampleFn, TaskData


@dataclass(frozen=True)
class TrainJobConfig:
    """The whole job: seed, device, output folder, data, model, schedule, optimiser and loop."""

    out: str
    data: DataConfig
    model: ModelConfig
    seed: int = 0
    device: DeviceName = "auto"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        get_task(self.data.task).validate(self.data)  # an unknown task is refused here too
        if self.model.noise_pool and self.loop.objective != "crps":
            raise ValueError(f"model.noise_pool is the input noise of a one-evaluation generator; "
                             f"it needs loop.objective: crps, not {self.loop.objective}")  # fmt: skip


def init_distributed(device: torch.device) -> torch.device:
    """Under ``torchrun`` (``WORLD_SIZE > 1``) join the process group: NCCL with one GPU per
    local rank on CUDA, gloo on the CPU. Returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def run_training(
    cfg: TrainJobConfig,
    resume: str | Path | None = None,
    wait: bool = False,
    overwrite: bool = False,
) -> TrainState:
    """Build the job's denoiser and data, then run :func:`pipelines.engine.train.train` holding the run
    folder's lock (a second run on it refuses, or waits with ``wait``). A fresh run that fails
    before its first checkpoint leaves no folder behind. ``overwrite``: an earlier run in
    ``cfg.out`` is moved aside and replaced by a fresh one, and put back if the new one fails."""
    first = int(os.environ.get("RANK", "0")) == 0  # torchrun: rank 0 owns the folder
    aside = None
    if first:
        earlier = claim_folder(cfg.out, ("checkpoints", "metrics.jsonl"), "training run", "out",
                               allow_existing=resume is not None or overwrite)  # fmt: skip
        if resume is not None and not Path(resume).exists():
            raise ValueError(f"--resume {resume}: no such run or checkpoint folder")
        if earlier and overwrite and resume is None:
            FolderLock(cfg.out, "training run").acquire(wait).release()  # nobody is using it
            aside = temp_sibling(cfg.out, "old")
            os.replace(cfg.out, aside)
    fresh = not Path(cfg.out).exists()
    lock = FolderLock(cfg.out, "training run") if first else None
    try:
        if lock is not None:
            lock.acquire(wait)
        state = _run_training(cfg, resume)
    except BaseException:
        if first and fresh and latest_checkpoint(cfg.out) is None:
            shutil.rmtree(cfg.out, ignore_errors=True)  # made by this run, holds nothing yet
        if aside is not None and not Path(cfg.out).exists():
            os.replace(aside, cfg.out)  # the new run failed: the earlier one comes back
        raise
    finally:
        if lock is not None:
            lock.release()
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return state


def task_data(cfg: TrainJobConfig) -> TaskData:
    """The task's training and validation data, ``to_batch`` and checkpoint metadata."""
    return get_task(cfg.data.task).datasets(cfg.data)


def _run_training(cfg: TrainJobConfig, resume: str | Path | None) -> TrainState:
    task = get_task(cfg.data.task)
    task.check_store(open_store(cfg.data.store), cfg.data)
    device = init_distributed(resolve_device(cfg.device))
    schedule = make_schedule(cfg.schedule.name, **cfg.schedule.params)
    # the parameters resolved from the store (channel counts, features) go into the checkpoint
    cfg = replace(cfg, model=replace(cfg.model, params=task.net_params(cfg.data, cfg.model)))
    data = task.datasets(cfg.data)
    to_batch, meta, loss_fn = data.to_batch, data.metadata, None
    if cfg.data.latent:
        from stdiff.pipelines.engine.latent import fit_codec, latent_batches

        gen = torch.Generator().manual_seed(member_seed(cfg.seed, 8))
        first = next(iter(torch.utils.data.DataLoader(data.train, batch_size=512)))
        codec = fit_codec(cfg.data.latent, [to_batch(first, gen)[0]], device)
        to_batch = latent_batches(to_batch, codec)
        meta = {**meta, "latent": codec.metadata(cfg.data.latent)}
        cfg = replace(cfg, model=replace(cfg.model, params={
            **cfg.model.params, "in_channels": codec.shape[0]}))  # fmt: skip
    if cfg.loop.objective != "autoencoder":  # the range that inference clips predictions to
        dim = getattr(task, "channel_dim", None)
        meta = {**meta, "x0_range": x0_range(data.train, to_batch, cfg.seed, dim)}
    m = cfg.model
    net = build_net(m.net, m.params, member_seed(cfg.seed, 1))
    if cfg.loop.objective == "autoencoder":
        from stdiff.pipelines.engine.latent import AutoencoderHolder, autoencoder_loss_fn

        if m.net != "autoencoder":
            raise ValueError("loop.objective: autoencoder needs model.net: autoencoder")
        denoiser, loss_fn = AutoencoderHolder(net), autoencoder_loss_fn(cfg.loop.kl_weight)
    else:
        denoiser = make_denoiser(m, net, schedule)
    if cfg.loop.objective == "hybrid":
        loss_fn = _hybrid_loss(cfg, schedule)
    return train(
        denoiser,
        schedule,
        data.train,
        to_batch,
        loop=cfg.loop,
        optim=cfg.optim,
        run_dir=cfg.out,
        config=to_dict(cfg),
        seed=cfg.seed,
        device=device,
        resume=resume,
        val_dataset=data.valid,
        metadata=meta,
        sample_fn=_sample_fn(cfg, data.valid if data.valid is not None else data.train),
        loss_fn=loss_fn,
    )


def x0_range(
    dataset, to_batch, seed: int, dim: int | None, n: int = 512, margin: float = 0.1
) -> dict[str, Any]:
    """``{"lo", "hi", "dim"}``: the range of the training targets ``x0`` over up to ``n`` items
    spread over the training set, per channel along ``dim`` (the task's ``channel_dim``; None:
    one range), widened by ``margin`` of its span on each side. The items are drawn with their
    own generator: the training RNG is not touched, so resuming finds the same range."""
    idx = np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx.tolist()), 64)
    gen = torch.Generator().manual_seed(member_seed(seed, 9))
    lo = hi = None
    with torch.no_grad():
        for batch in loader:
            x0 = to_batch(batch, gen)[0].float()
            x0 = (
                x0.movedim(dim, 0).reshape(x0.shape[dim], -1)
                if dim is not None
                else x0.reshape(1, -1)
            )
            b_lo, b_hi = x0.min(1).values, x0.max(1).values
            lo = b_lo if lo is None else torch.minimum(lo, b_lo)
            hi = b_hi if hi is None else torch.maximum(hi, b_hi)
    if lo is None or not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("the training data hold non-finite values (or no items)")
    span = hi - lo
    pad = margin * torch.maximum(span, 1e-3 * span.max().clamp_min(1e-3))
    lo, hi = (lo - pad).tolist(), (hi + pad).tolist()
    return {
        "lo": lo if dim is not None else lo[0],
        "hi": hi if dim is not None else hi[0],
        "dim": dim,
    }


def _hybrid_loss(cfg: TrainJobConfig, schedule):
    """IDDPM's hybrid objective (``loop.objective: hybrid``) as the loop's ``loss_fn``."""
    from stdiff.diffusion.variance import hybrid_loss

    if cfg.model.kind != "learned_variance":
        raise ValueError("loop.objective: hybrid needs model.kind: learned_variance")

    def loss_fn(fwd, den, x0, cond, mask, gen):
        return hybrid_loss(fwd, x0, schedule, cond, mask=mask, vlb_weight=cfg.loop.vlb_weight,
                           weighting=cfg.loop.weighting, generator=gen, precond=den.precond)  # fmt: skip

    return loss_fn


def _sample_fn(cfg: TrainJobConfig, ds) -> SampleFn | None:
    """The task's periodic sample dump (``loop.sample_every``), on the first held-out items."""
    if not cfg.loop.sample_every or cfg.data.latent or cfg.loop.objective == "autoencoder":
        return None
    first = [ds[i] for i in range(min(8, len(ds)))]
    return get_task(cfg.data.task).sample_dump(cfg.data, cfg.model, cfg.seed, first)


def checkpoint_folder(checkpoint: str | Path) -> Path:
    """The ``step_*`` folder of a run folder (its latest) or of a checkpoint folder itself."""
    path = Path(checkpoint)
    if not path.exists():
        raise ValueError(f"{path}: checkpoint not found")
    ckpt = path if (path / "weights.safetensors").is_file() else latest_checkpoint(path)
    if ckpt is None:
        raise ValueError(
            f"{path}: no checkpoint in this folder (expected step_*/weights.safetensors)"
        )
    return ckpt


# kinds whose samplers read the prediction D itself; an energy model is also sampled through its
# energy's gradient (MALA) and IDDPM variances through ``predict``, which a clip of D would make
# inconsistent with D, so those stay unclipped
CLIPPED_KINDS = ("score", "consistency")


def check_sampling(tcfg: TrainJobConfig, sampler: str | None, steps: int, checkpoint: Any,
                   sigma_max: float | None = None, trained_sigma: float | None = None) -> None:  # fmt: skip
    """Refuse (one line naming the flags) a sampler that does not fit how the checkpoint was
    trained: a ``loop.objective: crps`` generator is one evaluation at its training level
    (``--sampler consistency --steps 1``, and a forecast's ``sigma_max`` equal to it);
    ``sampler`` None: the job has no sampler (reconstruction's solvers), refused for it."""
    if tcfg.loop.objective != "crps":
        return
    if sampler is None:
        raise ValueError(f"{checkpoint}: a loop.objective: crps generator is not a diffusion "
                         "prior for this job; use a checkpoint trained with objective denoise")  # fmt: skip
    if sampler != "consistency" or steps != 1:
        raise ValueError(f"{checkpoint}: trained with loop.objective: crps (a one-evaluation "
                         f"generator); sample it with --sampler consistency --steps 1, not "
                         f"{sampler} with {steps} step(s)")  # fmt: skip
    if (
        sigma_max is not None
        and trained_sigma is not None
        and not math.isclose(sigma_max, trained_sigma, rel_tol=1e-6)
    ):
        raise ValueError(f"{checkpoint}: the crps generator was trained at sigma {trained_sigma:g}; "
                         f"sigma_max must equal it, not {sigma_max:g}")  # fmt: skip


def load_denoiser(
    checkpoint: str | Path,
    weights: Literal["ema", "model"] = "ema",
    device: str = "cpu",
    clip: bool = True,
) -> tuple[Denoiser, TrainJobConfig, dict[str, Any]]:
    """The trained denoiser (EMA weights by default, in ``eval()`` mode), its job config and the
    checkpoint metadata, from a run folder (its latest checkpoint) or a ``step_*`` folder.
    With ``clip`` its predictions are clipped to the training data's range kept in the checkpoint
    (:class:`diffusion.precond.X0Clip`, as ``denoiser.x0_clip``; checkpoints written before the
    range was recorded, and energy or learned-variance models, are not clipped)."""
    ckpt = checkpoint_folder(checkpoint)
    groups, config, metadata = load_checkpoint(ckpt / "weights.safetensors")
    cfg = from_dict(TrainJobConfig, config, f"{ckpt}: config")
    schedule = make_schedule(cfg.schedule.name, **cfg.schedule.params)
    m = cfg.model
    net = build_net(m.net, m.params, 0)
    load_weights(net, tensor_group(groups, weights, ckpt / "weights.safetensors"), ckpt)
    stat = (ckpt / "weights.safetensors").stat()  # a retrained run at the same path differs
    metadata = {**metadata, "checkpoint": str(ckpt),
                "checkpoint_id": f"{stat.st_size}:{stat.st_mtime_ns}"}  # fmt: skip
    denoiser = make_denoiser(m, net, schedule).to(device).eval()
    if clip and metadata.get("x0_range") and m.kind in CLIPPED_KINDS:
        r = metadata["x0_range"]
        denoiser.x0_clip = X0Clip(r["lo"], r["hi"], r["dim"]).attach(denoiser)
    return denoiser, cfg, metadata


CLIP_WARNING = 1e-3  # warn when more than this share of the predictions was clipped


def clip_report(denoiser: Denoiser, checkpoint: Any, result: dict[str, Any]) -> None:
    """Put the share of clipped predictions in ``result["x0_clipped"]`` and warn (one line)
    when it is large: the model predicts values its training data never had."""
    guard = getattr(denoiser, "x0_clip", None)
    if guard is None:
        return
    result["x0_clipped"] = frac = guard.fraction
    result["x0_clipped_all_steps"] = guard.fraction_all
    if frac > CLIP_WARNING:
        warnings.warn(
            StdiffWarning(
                f"{checkpoint}: {frac:.2%} of the samples' final predictions fell outside the "
                f"training data's range ([{float(guard.lo.min()):.3g}, {float(guard.hi.max()):.3g}]"
                f"{' per channel' if guard.lo.ndim else ''}) and were clipped; the "
                "model looks under-trained or the sampler has too few steps (train longer, or "
                "sample with more steps; clip_x0: false shows the raw samples)"
            ),
            stacklevel=2,
        )
