"""``stdiff train --config``: a typed training job from a YAML file, on a store from ``stdiff ingest``.

Tasks (how a batch of store samples becomes ``(x0, condition, loss mask)``):

* ``images``: ``x0`` = the image in [-1, 1], condition = its class label (with ``loop.cfg_dropout``
  the label is dropped for classifier-free guidance).
* ``imputation``: CSDI's training rule (Tashiro et al. 2021): ``data.mask`` (``random`` by default,
  or ``historical``, ``mix``, ``block``, ``forecast``; see ``datasets.masks``) picks targets among
  the observed entries; the rest is the condition (``Condition(observed, mask)``); the loss counts
  the targets only.
"""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from stdiff.datasets.atomic import temp_sibling
from stdiff.datasets.masks import STRATEGIES, Strategy, cond_mask
from stdiff.datasets.outputs import FolderLock, claim_folder
from stdiff.datasets.splits import csdi_stay_split
from stdiff.datasets.store import open_store, require_kind
from stdiff.datasets.windows import ForecastWindows, SampleWindows, SeriesWindows, window_starts
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.precond import Denoiser, NoiseConditioning, Preconditioning, Prediction
from stdiff.diffusion.rng import member_seed
from stdiff.diffusion.schedules import make_schedule
from stdiff.pipelines.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    tensor_group,
)
from stdiff.pipelines.config import from_dict, to_dict
from stdiff.pipelines.device import DeviceName, resolve_device
from stdiff.pipelines.sample_dumps import SampleFn, image_dump, imputation_dump
from stdiff.pipelines.toy import ScheduleConfig
from stdiff.pipelines.train import LoopConfig, OptimConfig, TrainState, train
from stdiff.pipelines.weather_task import WeatherLayout, forecast_batch

# name -> (module, factory); factories take the keyword parameters of ``model.params``
NETS: dict[str, tuple[str, str]] = {
    "mlp": ("stdiff.diffusion.nets.mlp", "MLPNet"),
    "csdi": ("stdiff.diffusion.nets.csdi", "CSDINet"),
    "dit": ("stdiff.diffusion.nets.dit", "make_dit"),  # registry sizes: {"name": "B/2", ...}
    "dit_custom": ("stdiff.diffusion.nets.dit", "DiT"),  # explicit depth / hidden / num_heads
    "unet": ("stdiff.diffusion.nets.unet", "UNet"),
    "autoencoder": ("stdiff.diffusion.autoencoder", "KLAutoencoder"),  # loop.objective: autoencoder
}


@dataclass(frozen=True)
class DataConfig:
    """store: a zarr store from ``stdiff ingest``; task: how samples become training batches;
    fold: CSDI fold (imputation); max_samples: use only the first N training samples;
    mask, horizon, max_block: the imputation targets (``datasets.masks``; ``horizon`` steps for
    ``forecast``, the longest gap as a fraction of the window for ``block``);
    variables, train_period, valid_period, context, leads, residual: the weather ``forecast`` task
    (``pipelines.weather_task``; periods are inclusive ``[start, end]`` dates, leads in steps);
    latent: an autoencoder run: train in its latent space (``pipelines.latent``);
    window, stride: a store holding one long ``(time, feature)`` series (per-station tables) is
    cut into windows of ``window`` steps, ``stride`` apart, inside the store's training split
    (``split == 0``; validation ``split == 1``, windows ``window`` apart)."""

    store: str
    task: Literal["images", "imputation", "forecast"]
    latent: str | None = None
    fold: int = 0
    max_samples: int | None = None
    mask: Strategy = "random"
    horizon: int = 0
    max_block: float = 0.5
    variables: list[str] | None = None
    train_period: list[str] | None = None
    valid_period: list[str] | None = None
    context: int = 2
    leads: list[int] = field(default_factory=lambda: [1])
    residual: bool = True
    window: int = 36
    stride: int = 1

    def __post_init__(self) -> None:
        if self.window < 2 or self.stride < 1:
            raise ValueError(
                f"window must be >= 2 and stride >= 1, got {self.window} and {self.stride}"
            )
        if self.mask == "forecast" and self.horizon >= self.window:
            raise ValueError(f"horizon {self.horizon} must be shorter than window {self.window}")
        if self.task == "forecast" and not self.train_period:
            raise ValueError(
                "train_period is required for the forecast task, e.g. [2013-01-01, 2013-11-30]"
            )
        if self.mask not in STRATEGIES:
            raise ValueError(f"mask {self.mask!r} is not known; choose one of {list(STRATEGIES)}")
        if self.mask == "forecast" and self.horizon < 1:
            raise ValueError("horizon must be at least 1 with mask: forecast")


# model.kind -> the Denoiser class wrapping the network
KINDS: dict[str, tuple[str, str]] = {
    "score": ("stdiff.diffusion.precond", "Denoiser"),  # D = c_skip x + c_out F
    "energy": ("stdiff.diffusion.energy", "EnergyDenoiser"),  # D = x - sigma^2 grad E
    "learned_variance": (
        "stdiff.diffusion.variance",
        "VarianceDenoiser",
    ),  # IDDPM: F has 2C channels
    "consistency": ("stdiff.diffusion.distill", "ConsistencyDenoiser"),  # f(x, s_min) = x
}


@dataclass(frozen=True)
class ModelConfig:
    """net: a name in ``NETS``; params: its constructor arguments; the parameterisation;
    kind: how the network becomes a denoiser (``KINDS``): ``score`` (the usual), ``energy`` (the
    gradient of a scalar energy, ``diffusion.energy``), ``learned_variance`` (IDDPM's extra
    variance channels, ``diffusion.variance``), ``consistency`` (a distilled consistency model)."""

    net: str
    params: dict[str, Any] = field(default_factory=dict)
    prediction: Prediction = "edm"
    sigma_data: float = 0.5
    noise_conditioning: NoiseConditioning = "log_sigma"
    kind: Literal["score", "energy", "learned_variance", "consistency"] = "score"

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise ValueError(f"net {self.net!r} is not known; choose one of {sorted(NETS)}")


def make_denoiser(m: ModelConfig, net: torch.nn.Module, schedule) -> Denoiser:
    """The network wrapped as ``m.kind`` with its preconditioning."""
    module, cls = KINDS[m.kind]
    denoiser_cls = getattr(importlib.import_module(module), cls)
    pre = Preconditioning(m.prediction, m.sigma_data, m.noise_conditioning)
    return denoiser_cls(net, pre, schedule)


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
    bad = [k for k, v in params.items() if isinstance(v, int) and not isinstance(v, bool) and v < 0]
    if bad:
        raise ValueError(f"model.params.{bad[0]}: must not be negative, got {params[bad[0]]}")
    try:
        return build_seeded(lambda: fn(**params), seed)
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model.params for net {name!r}: {msg}") from None


def _images_batch(batch: dict, gen: torch.Generator):
    return batch["image"], Condition(labels=batch["label"].long()), None


def imputation_batch(data: DataConfig):
    """``to_batch`` of the imputation task: ``data.mask`` picks the targets among the observed."""

    def to_batch(batch: dict, gen: torch.Generator):
        values, observed = batch["values"], batch["observed_mask"].float()
        cm = cond_mask(data.mask, observed, gen, horizon=data.horizon, max_block=data.max_block)
        return values, Condition(observed=values * cm, mask=cm), observed - cm

    return to_batch


def _datasets(cfg: TrainJobConfig):
    ds = open_store(cfg.data.store)
    if cfg.data.task == "forecast":
        return _weather_datasets(cfg, ds)
    if cfg.data.task == "imputation" and "stay" not in ds.dims:
        return _series_datasets(cfg, ds)
    extra: dict[str, Any] = {}
    if cfg.data.task == "images":
        train_idx, val_idx = _image_split(ds, cfg.data.store)
        variables, dim, to_batch = ["image", "label"], "sample", _images_batch
        extra["images"] = image_metadata(ds)
    else:
        split = csdi_stay_split(ds["observed_mask"].values, cfg.data.fold)
        train_idx, val_idx = split.train, split.valid
        variables, dim, to_batch = ["values", "observed_mask"], "stay", imputation_batch(cfg.data)
    if cfg.data.max_samples:
        train_idx = train_idx[: cfg.data.max_samples]
    train_ds = SampleWindows(cfg.data.store, dim, variables, indices=train_idx)
    val_ds = (
        SampleWindows(cfg.data.store, dim, variables, indices=val_idx) if len(val_idx) else None
    )
    return train_ds, val_ds, to_batch, {**store_metadata(ds, variables), **extra}


def _image_split(ds, store: str) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation samples of an images store (validation: split 2 when the store
    has one, else the test split 1); a store the image tasks cannot read or without training
    images is refused in one line."""
    from stdiff.datasets.images import require_images_store

    require_images_store(ds, store)
    if "split" not in ds:
        return np.arange(ds.sizes["sample"]), np.arange(0)
    split = ds["split"].values
    train_idx = np.flatnonzero(split == 0)
    if len(train_idx) == 0:
        raise ValueError(
            f"{store}: no training images (split train), only {len(split)} for inference; train "
            "on a store with a training split, or ingest this source again with --split train"
        )
    val_idx = np.flatnonzero(split == 2)
    return train_idx, val_idx if len(val_idx) else np.flatnonzero(split == 1)


def image_metadata(ds) -> dict[str, Any]:
    """How an images store's pixels were made, kept in the checkpoint so that inference on
    another store can check it: the intensity window of volume slices (``[lo, hi]``, its units),
    the display orientation, the classes and the pixel type."""
    keys = ("window", "window_mode", "window_units", "display_up", "display_left", "classes")
    out = {k: ds.attrs[k] for k in keys if k in ds.attrs}
    return {**out, "dtype": str(ds["image"].dtype)}


def _series_datasets(cfg: TrainJobConfig, ds):
    """Windows of one long ``(time, feature)`` series: training windows inside the store's
    training split, validation windows (non-overlapping) inside its validation split."""
    d, where = cfg.data, cfg.data.store
    for v in ("values", "observed_mask", "split"):
        if v not in ds:
            raise ValueError(f"{where}: variable {v!r} is absent; ingest it with --kind timeseries")
    if ds["values"].dims != ("time", "feature"):
        raise ValueError(f"{where}: values must be (time, feature), got {ds['values'].dims}")
    split = ds["split"].values
    train = window_starts(np.flatnonzero(split == 0), d.window, d.stride)
    valid = window_starts(np.flatnonzero(split == 1), d.window, d.window)
    if len(train) == 0:
        raise ValueError(
            f"{where}: no window of {d.window} steps fits inside the training split; "
            "choose a shorter data.window"
        )
    if d.max_samples:
        train = train[: d.max_samples]
    train_ds = SeriesWindows(where, train, d.window)
    val_ds = SeriesWindows(where, valid, d.window) if len(valid) else None
    meta = {**store_metadata(ds, ["values", "observed_mask"]), "series": {"window": d.window}}
    return train_ds, val_ds, imputation_batch(d), meta


def _imputation_params(cfg: TrainJobConfig) -> dict[str, Any]:
    """CSDI's ``num_features`` follows from the store: filled in when the config omits it, and a
    value that differs from the store's is refused before any work."""
    params = dict(cfg.model.params)
    if cfg.model.net != "csdi":
        return params
    k = int(open_store(cfg.data.store).sizes["feature"])
    given = params.setdefault("num_features", k)
    if given != k:
        raise ValueError(
            f"model.params.num_features is {given} but {cfg.data.store} has {k} features; "
            "leave it out to take it from the store"
        )
    return params


def _period(ds, period: list[str] | None, name: str) -> np.ndarray:
    if not period:
        return np.arange(0)
    if len(period) != 2:
        raise ValueError(f"data.{name} must be [start, end], got {period}")
    t = ds.indexes["time"]
    pos = np.flatnonzero(
        (t >= np.datetime64(period[0])) & (t < np.datetime64(period[1]) + np.timedelta64(1, "D"))
    )
    if len(pos) == 0:
        raise ValueError(f"data.{name} {period} selects no time of the store")
    return pos


def _weather_datasets(cfg: TrainJobConfig, ds):
    d = cfg.data
    layout = WeatherLayout.from_store(ds, d.variables, d.context, d.residual)
    times = ds["time"].values
    kw = {"context": d.context, "leads": d.leads}
    train_ds = ForecastWindows(
        d.store, layout.variables, times=_period(ds, d.train_period, "train_period"), **kw
    )
    val_pos = _period(ds, d.valid_period, "valid_period")
    val_ds = (
        ForecastWindows(d.store, layout.variables, times=val_pos, **kw) if len(val_pos) else None
    )
    meta = {**store_metadata(ds, layout.variables), "weather": layout.to_dict()}
    return train_ds, val_ds, forecast_batch(layout, times, d.leads), meta


def _weather_params(cfg: TrainJobConfig) -> dict[str, Any]:
    """The DiT's channel counts follow from the data: fill them in when the config omits them."""
    layout = WeatherLayout.from_store(
        open_store(cfg.data.store), cfg.data.variables, cfg.data.context
    )
    # circular longitude padding only for grids that go all the way round (the layout decides)
    return {**layout.net_params(cfg.model.net == "autoencoder"), **cfg.model.params}


def store_metadata(ds, variables: list[str]) -> dict[str, Any]:
    """What inference needs to know about the training data, kept in the checkpoint: the
    variables, their dims, sizes and non-sample coordinates (feature names, grid), and the
    normalisation statistics (``<var>_mean`` / ``_std`` / ``_diff_std`` arrays) as lists."""
    stats = {
        name: np.asarray(ds[name].values, dtype=np.float64).tolist()
        for name in ds.data_vars
        if name.rsplit("_", 1)[-1] in ("mean", "std") or name.endswith("_diff_std")
    }
    coords = {
        str(c): [str(v) for v in np.asarray(ds[c].values).tolist()]
        for c in ds.coords
        if c not in ("stay", "sample", "time") and ds[c].ndim == 1 and ds[c].size <= 4096
    }
    return {
        "variables": {v: list(ds[v].dims) for v in variables},
        "coords": coords,
        "sizes": {
            str(d): int(n) for d, n in ds.sizes.items() if d not in ("stay", "sample", "time")
        },
        "stats": stats,
        "normalization": ds.attrs.get("normalization", ""),
        "store_hash": ds.attrs.get("content_hash", ""),
    }


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
    """Build the job's denoiser and data, then run :func:`pipelines.train.train` holding the run
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


def _check_store(cfg: TrainJobConfig) -> None:
    """The store is of the kind the task reads (one line naming the ingest to run)."""
    ds = open_store(cfg.data.store)
    if cfg.data.task == "forecast":
        require_kind(ds, cfg.data.store, "weather", ())
    elif cfg.data.task == "imputation":
        require_kind(ds, cfg.data.store, "timeseries", ("values", "observed_mask"))


def _run_training(cfg: TrainJobConfig, resume: str | Path | None) -> TrainState:
    _check_store(cfg)
    device = init_distributed(resolve_device(cfg.device))
    schedule = make_schedule(cfg.schedule.name, **cfg.schedule.params)
    if cfg.data.task == "forecast":  # the resolved channel counts go into the checkpoint's config
        cfg = replace(cfg, model=replace(cfg.model, params=_weather_params(cfg)))
    if cfg.data.task == "imputation":  # so does CSDI's feature count
        cfg = replace(cfg, model=replace(cfg.model, params=_imputation_params(cfg)))
    train_ds, val_ds, to_batch, meta = _datasets(cfg)
    loss_fn = None
    if cfg.data.latent:
        from stdiff.pipelines.latent import fit_codec, latent_batches

        gen = torch.Generator().manual_seed(member_seed(cfg.seed, 8))
        first = next(iter(torch.utils.data.DataLoader(train_ds, batch_size=512)))
        codec = fit_codec(cfg.data.latent, [to_batch(first, gen)[0]], device)
        to_batch = latent_batches(to_batch, codec)
        meta = {**meta, "latent": codec.metadata(cfg.data.latent)}
        cfg = replace(cfg, model=replace(cfg.model, params={
            **cfg.model.params, "in_channels": codec.shape[0]}))  # fmt: skip
    m = cfg.model
    net = build_net(m.net, m.params, member_seed(cfg.seed, 1))
    if cfg.loop.objective == "autoencoder":
        from stdiff.pipelines.latent import AutoencoderHolder, autoencoder_loss_fn

        if m.net != "autoencoder":
            raise ValueError("loop.objective: autoencoder needs model.net: autoencoder")
        denoiser, loss_fn = AutoencoderHolder(net), autoencoder_loss_fn(cfg.loop.kl_weight)
    else:
        denoiser = make_denoiser(m, net, schedule)
    if cfg.loop.objective == "hybrid":
        from stdiff.diffusion.variance import hybrid_loss

        if m.kind != "learned_variance":
            raise ValueError("loop.objective: hybrid needs model.kind: learned_variance")

        def loss_fn(fwd, den, x0, cond, mask, gen):
            return hybrid_loss(fwd, x0, schedule, cond, mask=mask, vlb_weight=cfg.loop.vlb_weight,
                               weighting=cfg.loop.weighting, generator=gen, precond=den.precond)  # fmt: skip

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
        sample_fn=_sample_fn(cfg, val_ds if val_ds is not None else train_ds),
        loss_fn=loss_fn,
    )


def _sample_fn(cfg: TrainJobConfig, ds) -> SampleFn | None:
    """The task's periodic sample dump (``loop.sample_every``), on the first held-out items."""
    if not cfg.loop.sample_every or cfg.data.latent or cfg.loop.objective == "autoencoder":
        return None
    first = [ds[i] for i in range(min(8, len(ds)))]
    if cfg.data.task == "forecast":
        return None  # forecasts are dumped by `stdiff forecast`
    if cfg.data.task == "images":
        shape = tuple(first[0]["image"].shape)
        return image_dump(shape, int(cfg.model.params.get("num_classes", 0)), cfg.seed)
    values = torch.stack([it["values"] for it in first])
    observed = torch.stack([it["observed_mask"] for it in first]).float()
    return imputation_dump(values, observed, cfg.seed)


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


def load_denoiser(
    checkpoint: str | Path, weights: Literal["ema", "model"] = "ema", device: str = "cpu"
) -> tuple[Denoiser, TrainJobConfig, dict[str, Any]]:
    """The trained denoiser (EMA weights by default, in ``eval()`` mode), its job config and the
    checkpoint metadata, from a run folder (its latest checkpoint) or a ``step_*`` folder."""
    ckpt = checkpoint_folder(checkpoint)
    groups, config, metadata = load_checkpoint(ckpt / "weights.safetensors")
    cfg = from_dict(TrainJobConfig, config, f"{ckpt}: config")
    schedule = make_schedule(cfg.schedule.name, **cfg.schedule.params)
    m = cfg.model
    net = build_net(m.net, m.params, 0)
    load_weights(net, tensor_group(groups, weights, ckpt / "weights.safetensors"), ckpt)
    metadata = {**metadata, "checkpoint": str(ckpt)}
    return make_denoiser(m, net, schedule).to(device).eval(), cfg, metadata
