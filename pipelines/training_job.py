"""``stdiff train --config``: a typed training job from a YAML file, on a store from ``stdiff ingest``.

Tasks (how a batch of store samples becomes ``(x0, condition, loss mask)``):

* ``images``: ``x0`` = the image in [-1, 1], condition = its class label (with ``loop.cfg_dropout``
  the label is dropped for classifier-free guidance).
* ``imputation``: CSDI's training rule (Tashiro et al. 2021, ``get_randmask``): for each sample a
  ratio ``r ~ U(0, 1)`` of its observed entries becomes the targets; the rest is the condition
  (``Condition(observed, mask)``); the loss counts the targets only.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from datasets.splits import csdi_fold_split
from datasets.store import open_store
from datasets.windows import SampleWindows
from diffusion.conditioning import Condition
from diffusion.nets.init import build_seeded
from diffusion.precond import Denoiser, NoiseConditioning, Preconditioning, Prediction
from diffusion.rng import member_seed
from diffusion.schedules import make_schedule
from pipelines.config import to_dict
from pipelines.device import DeviceName, resolve_device
from pipelines.toy import ScheduleConfig
from pipelines.train import LoopConfig, OptimConfig, TrainState, train

# name -> (module, factory); factories take the keyword parameters of ``model.params``
NETS: dict[str, tuple[str, str]] = {
    "mlp": ("diffusion.nets.mlp", "MLPNet"),
    "csdi": ("diffusion.nets.csdi", "CSDINet"),
    "dit": ("diffusion.nets.dit", "make_dit"),  # registry sizes: {"name": "B/2", ...}
    "dit_custom": ("diffusion.nets.dit", "DiT"),  # explicit depth / hidden / num_heads
    "unet": ("diffusion.nets.unet", "UNet"),
}


@dataclass(frozen=True)
class DataConfig:
    """store: a zarr store from ``stdiff ingest``; task: how samples become training batches;
    fold: CSDI fold (imputation); max_samples: use only the first N training samples."""

    store: str
    task: Literal["images", "imputation"]
    fold: int = 0
    max_samples: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """net: a name in ``NETS``; params: its constructor arguments; the parameterisation."""

    net: str
    params: dict[str, Any] = field(default_factory=dict)
    prediction: Prediction = "edm"
    sigma_data: float = 0.5
    noise_conditioning: NoiseConditioning = "log_sigma"

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net {self.net!r} is not known; choose one of {sorted(NETS)}")


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


def build_net(name: str, params: dict[str, Any], seed: int) -> torch.nn.Module:
    """The registered network ``name`` built with ``params`` and initialised from ``seed``."""
    module, factory = NETS[name]
    fn = getattr(importlib.import_module(module), factory)
    try:
        return build_seeded(lambda: fn(**params), seed)
    except TypeError as e:
        raise ValueError(f"model.params for net {name!r}: {e}") from None


def csdi_random_targets(observed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CSDI's random strategy: per sample, a ratio ``r ~ U(0,1)`` of the observed entries becomes
    targets. Returns the conditioning mask ``(B, ...)`` (observed and not a target)."""
    b = observed.shape[0]
    flat = observed.reshape(b, -1).float()
    score = torch.rand(flat.shape, generator=generator, device=flat.device) * flat
    ratio = torch.rand(b, generator=generator, device=flat.device)
    n_target = torch.round(flat.sum(1) * ratio).long()
    order = score.argsort(dim=1, descending=True)  # observed entries first, in random order
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(b, -1))
    target = (rank < n_target[:, None]) & (flat > 0)
    return ((flat > 0) & ~target).reshape(observed.shape).to(observed.dtype)


def _images_batch(batch: dict, gen: torch.Generator):
    return batch["image"], Condition(labels=batch["label"].long()), None


def _imputation_batch(batch: dict, gen: torch.Generator):
    values, observed = batch["values"], batch["observed_mask"].float()
    cond_mask = csdi_random_targets(observed, gen)
    return values, Condition(observed=values * cond_mask, mask=cond_mask), observed - cond_mask


def _datasets(cfg: TrainJobConfig):
    ds = open_store(cfg.data.store)
    if cfg.data.task == "images":
        train_idx = (
            np.flatnonzero(ds["split"].values == 0)
            if "split" in ds
            else np.arange(ds.sizes["sample"])
        )
        val_idx = np.flatnonzero(ds["split"].values == 1) if "split" in ds else train_idx[:0]
        variables, dim, to_batch = ["image", "label"], "sample", _images_batch
    else:
        split = csdi_fold_split(ds.sizes["stay"], cfg.data.fold)
        train_idx, val_idx = split.train, split.valid
        variables, dim, to_batch = ["values", "observed_mask"], "stay", _imputation_batch
    if cfg.data.max_samples:
        train_idx = train_idx[: cfg.data.max_samples]
    train_ds = SampleWindows(cfg.data.store, dim, variables, indices=train_idx)
    val_ds = (
        SampleWindows(cfg.data.store, dim, variables, indices=val_idx) if len(val_idx) else None
    )
    return train_ds, val_ds, to_batch, {"normalization": ds.attrs.get("normalization", "")}


def init_distributed(device: torch.device) -> torch.device:
    """Under ``torchrun`` (``WORLD_SIZE > 1``) join the process group: NCCL with one GPU per
    local rank on CUDA, gloo on the CPU. Returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def run_training(cfg: TrainJobConfig, resume: str | Path | None = None) -> TrainState:
    """Build the job's denoiser and data, then run :func:`pipelines.train.train`."""
    device = init_distributed(resolve_device(cfg.device))
    schedule = make_schedule(cfg.schedule.name, **cfg.schedule.params)
    m = cfg.model
    net = build_net(m.net, m.params, member_seed(cfg.seed, 1))
    denoiser = Denoiser(
        net, Preconditioning(m.prediction, m.sigma_data, m.noise_conditioning), schedule
    )
    train_ds, val_ds, to_batch, meta = _datasets(cfg)
    return train(
        denoiser,
        schedule,
        train_ds,
        to_batch,
        loop=cfg.loop,
        optim=cfg.optim,
        run_dir=cfg.out,
        config=to_dict(cfg),
        seed=cfg.seed,
        device=device,
        resume=resume,
        val_dataset=val_ds,
        metadata=meta,
    )
