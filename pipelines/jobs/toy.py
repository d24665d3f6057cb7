"""The 2-D end-to-end demo of the diffusion core: train a small MLP denoiser on the CPU, sample it
with several registered samplers, write samples (zarr), a scatter plot (PNG), a checkpoint
(safetensors) and metrics (JSON), and report energy distances to held-out data."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import xarray as xr

from stdiff.datasets.atomic import atomic_path, write_json
from stdiff.datasets.store import consolidate
from stdiff.datasets.toy2d import toy2d
from stdiff.diffusion.losses import Weighting, denoising_loss
from stdiff.diffusion.nets.init import build_seeded
from stdiff.diffusion.nets.mlp import MLPNet
from stdiff.diffusion.precond import Denoiser, Preconditioning, Prediction
from stdiff.diffusion.rng import member_seed
from stdiff.diffusion.samplers import check_options, get_sampler, sample
from stdiff.diffusion.schedules import make_schedule
from stdiff.pipelines.engine.checkpoint import (
    load_checkpoint,
    load_weights,
    save_checkpoint,
    tensor_group,
)
from stdiff.pipelines.engine.config import from_dict, to_dict
from stdiff.pipelines.engine.device import DeviceName, resolve_device
from stdiff.pipelines.engine.models import ScheduleConfig
from stdiff.pipelines.engine.train import ema_update
from stdiff.pipelines.metrics.distances import energy_distance


@dataclass(frozen=True)
class ToyDataConfig:
    """name: which 2-D distribution; n_train / n_eval: training and held-out sample counts."""

    name: Literal["ring8", "moons", "swissroll"] = "ring8"
    n_train: int = 20_000
    n_eval: int = 4_000


@dataclass(frozen=True)
class ToyModelConfig:
    """MLP width and depth, the parameterisation and the data std it assumes."""

    hidden: int = 128
    depth: int = 3
    prediction: Prediction = "edm"
    sigma_data: float = 1.0


@dataclass(frozen=True)
class ToyTrainConfig:
    """Adam steps, batch size, learning rate, loss weighting and EMA decay."""

    steps: int = 2_000
    batch_size: int = 512
    lr: float = 2e-3
    weighting: Weighting = "native"
    ema_decay: float = 0.995


@dataclass(frozen=True)
class SamplerRun:
    """One registered sampler with its step count and options."""

    name: str
    steps: int
    options: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ToySampleConfig:
    """How many samples each sampler draws, and which samplers run."""

    n_samples: int = 4_000
    runs: tuple[SamplerRun, ...] = (
        SamplerRun("heun", 18),
        SamplerRun("dpmpp_2m", 20),
        SamplerRun("ddpm", 100),
    )


@dataclass(frozen=True)
class ToyDemoConfig:
    """The whole demo job; ``seed`` fixes data, initialisation, training noise and sampling."""

    seed: int = 0
    device: DeviceName = "auto"
    data: ToyDataConfig = ToyDataConfig()
    model: ToyModelConfig = ToyModelConfig()
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: ToyTrainConfig = ToyTrainConfig()
    sample: ToySampleConfig = ToySampleConfig()

    def __post_init__(self) -> None:
        make_schedule(self.schedule.name, **self.schedule.params)  # validates name and params
        for run in self.sample.runs:
            get_sampler(run.name)
            check_options(run.name, run.options)
            if run.steps < 1:
                raise ValueError(
                    f"sample.runs: {run.name}: steps must be positive, got {run.steps}"
                )
        for name in ("steps", "batch_size"):
            if getattr(self.train, name) < 1:
                raise ValueError(f"train.{name} must be positive")


def build_denoiser(cfg: ToyDemoConfig) -> Denoiser:
    """The MLP wrapped in its preconditioning, initialised from ``cfg.seed``."""
    m = cfg.model
    net = build_seeded(lambda: MLPNet(2, m.hidden, m.depth), member_seed(cfg.seed, 1))
    schedule = make_schedule(cfg.schedule.name, **cfg.schedule.params)
    return Denoiser(net, Preconditioning(cfg.model.prediction, cfg.model.sigma_data), schedule)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    losses: list[float]
    seconds: float


def train_toy(cfg: ToyDemoConfig, out_dir: str | Path) -> TrainResult:
    """Train the demo denoiser; write ``out_dir/checkpoint.safetensors`` (model + EMA + config)."""
    device = resolve_device(cfg.device)
    data = torch.from_numpy(toy2d(cfg.data.name, cfg.data.n_train, cfg.seed)["x"].values).to(device)
    denoiser = build_denoiser(cfg).to(device)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    schedule = denoiser.schedule
    opt = torch.optim.Adam(denoiser.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train.steps, cfg.train.lr * 0.05)
    gen = torch.Generator(device=device).manual_seed(member_seed(cfg.seed, 2))
    losses, start = [], time.perf_counter()
    for _ in range(cfg.train.steps):
        idx = torch.randint(0, data.shape[0], (cfg.train.batch_size,), generator=gen, device=device)
        loss = denoising_loss(
            denoiser, data[idx], schedule, weighting=cfg.train.weighting, generator=gen
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema_update(ema, denoiser, cfg.train.ema_decay)
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    ckpt = Path(out_dir) / "checkpoint.safetensors"
    save_checkpoint(
        ckpt,
        {"model": denoiser.net.state_dict(), "ema": ema.net.state_dict()},
        to_dict(cfg),
        {"steps": cfg.train.steps, "train_seconds": seconds, "final_loss": losses[-1]},
    )
    return TrainResult(ckpt, losses, seconds)


def load_toy_denoiser(
    path: str | Path, weights: Literal["ema", "model"] = "ema"
) -> tuple[Denoiser, ToyDemoConfig]:
    """Rebuild the denoiser and its config from a checkpoint (no pickled code involved)."""
    groups, config, _ = load_checkpoint(path)
    cfg = from_dict(ToyDemoConfig, config, f"{path}: config")
    denoiser = build_denoiser(cfg)
    load_weights(denoiser.net, tensor_group(groups, weights, path), path)
    return denoiser.eval(), cfg


def evaluate_toy(checkpoint: str | Path, out_dir: str | Path) -> dict:
    """Sample with every configured sampler; write ``samples.zarr``, ``samples.png`` and
    ``metrics.json`` (energy distances to held-out data, with the data-vs-data floor)."""
    denoiser, cfg = load_toy_denoiser(checkpoint)
    out = Path(out_dir)
    n = cfg.sample.n_samples
    held_out = torch.from_numpy(toy2d(cfg.data.name, n, cfg.seed + 1)["x"].values)
    other = torch.from_numpy(toy2d(cfg.data.name, n, cfg.seed + 2)["x"].values)
    metrics: dict = {"energy_distance_floor": energy_distance(held_out, other), "samplers": {}}
    samples = {}
    for i, run in enumerate(cfg.sample.runs):
        spec = get_sampler(run.name)
        gen = torch.Generator().manual_seed(member_seed(cfg.seed, 3, i))
        start = time.perf_counter()
        sigmas = denoiser.schedule.discretize(run.steps)
        x = sample(denoiser, (n, 2), sigmas, sampler=run.name, generator=gen, **run.options)
        seconds = time.perf_counter() - start
        samples[run.name] = x
        metrics["samplers"][run.name] = {
            "steps": run.steps,
            "evaluations": spec.evals(run.steps) if spec.evals else None,
            "energy_distance": energy_distance(x, held_out),
            "seconds": seconds,
        }
    ds = xr.Dataset(
        {name: (("sample", "feature"), x.numpy()) for name, x in samples.items()}
        | {"data": (("sample", "feature"), held_out.numpy())},
        attrs={"source": str(checkpoint), "seed": cfg.seed, "features": "x,y"},
    )
    with atomic_path(out / "samples.zarr") as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        consolidate(tmp)
    _scatter(out / "samples.png", held_out, samples, metrics)
    write_json(out / "metrics.json", metrics)
    return metrics


def _scatter(path: Path, data: torch.Tensor, samples: dict, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out data", data, None), *((k, v, k) for k, v in samples.items())]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.2 * len(panels), 3.7), sharex=True, sharey=True
    )
    for ax, (title, pts, key) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        if key is not None:
            m = metrics["samplers"][key]
            title = f"{title}: {m['steps']} steps\nenergy dist {m['energy_distance']:.4f}"
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_demo(cfg: ToyDemoConfig, out_dir: str | Path) -> dict:
    """Train, then evaluate; returns the metrics (also in ``out_dir/metrics.json``)."""
    result = train_toy(cfg, out_dir)
    metrics = evaluate_toy(result.checkpoint, out_dir)
    k = max(1, len(result.losses) // 10)
    metrics["train"] = {
        "seconds": result.seconds,
        "loss_first_10pct": float(np.mean(result.losses[:k])),
        "loss_last_10pct": float(np.mean(result.losses[-k:])),
    }
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
