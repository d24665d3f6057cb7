"""Periodic sample dumps during training (``loop.sample_every``): evidence that samples are
plausible while the loss falls. Each dump draws from the EMA denoiser with its own fixed
generators (the same noise at every dump, so dumps are comparable) and writes a PNG under
``<run>/samples/``; the imputation dump also scores held-out values (CRPS, MAE) for the log.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from stdiff.datasets.atomic import atomic_path
from stdiff.datasets.masks import csdi_eval_mask
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.precond import Denoiser
from stdiff.diffusion.rng import member_generators, member_seed
from stdiff.diffusion.samplers import sample
from stdiff.pipelines.scores import CSDI_QUANTILES, ensemble_quantiles, point_errors, quantile_crps

SampleFn = Callable[[Denoiser, int, Path], dict[str, float]]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _plt().close(fig)


def image_dump(
    shape: tuple[int, ...], num_classes: int, seed: int, n: int = 16, steps: int = 20
) -> SampleFn:
    """A grid of ``n`` images (labels ``0, 1, ...`` cycling when class-conditional)."""

    @torch.no_grad()
    def dump(ema: Denoiser, step: int, folder: Path) -> dict[str, float]:
        device = next(ema.parameters()).device
        labels = torch.arange(n, device=device) % num_classes if num_classes else None
        cond = Condition(labels=labels) if labels is not None else None
        gen = torch.Generator(device=device).manual_seed(member_seed(seed, 7))
        sigmas = ema.schedule.discretize(steps)
        x = sample(ema, (n, *shape), sigmas, cond, sampler="dpmpp_2m", generator=gen, device=device)
        img = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        cols = int(np.ceil(np.sqrt(n)))
        plt = _plt()
        fig, axes = plt.subplots(cols, cols, figsize=(cols * 1.2, cols * 1.2 + 0.3))
        for i, ax in enumerate(np.ravel(axes)):
            ax.axis("off")
            if i < n:
                im = img[i].transpose(1, 2, 0)
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=255)
                if labels is not None:
                    ax.set_title(str(int(labels[i])), fontsize=7)
        fig.suptitle(f"step {step}", fontsize=8)
        _save(fig, folder / f"step_{step:09d}.png")
        return {}

    return dump


def imputation_dump(
    values: torch.Tensor,
    observed: torch.Tensor,
    seed: int,
    members: int = 10,
    steps: int = 10,
    ratio: float = 0.1,
) -> SampleFn:
    """Impute a few held-out stays (``values``/``observed`` ``(B, L, K)``, normalised) with
    ``ratio`` of their observed values hidden; log CRPS and MAE there; plot the first stay."""
    given = torch.from_numpy(csdi_eval_mask(observed.numpy(), ratio, seed=1).astype(np.float32))
    held = (observed.bool() & ~given.bool()).numpy()
    if not held.any():
        raise ValueError("imputation_dump: the held-out stays have no values to hide")

    @torch.no_grad()
    def dump(ema: Denoiser, step: int, folder: Path) -> dict[str, float]:
        device = next(ema.parameters()).device
        b = values.shape[0]
        mask = given.to(device).repeat_interleave(members, 0)
        cond = Condition(observed=values.to(device).repeat_interleave(members, 0) * mask, mask=mask)
        gens = [g for i in range(b) for g in member_generators(seed, members, 8, i, device=device)]
        sigmas = ema.schedule.discretize(steps)
        x = sample(ema, (b * members, *values.shape[1:]), sigmas, cond, sampler="dpmpp_2m",
                   generator=gens, device=device)  # fmt: skip
        s = x.float().cpu().reshape(b, members, *values.shape[1:]).numpy()
        dims = ("stay", "time", "feature")
        samples = xr.DataArray(s, dims=("stay", "member", "time", "feature"))
        truth, m = (
            xr.DataArray(values.numpy(), dims=dims),
            xr.DataArray(held.astype(float), dims=dims),
        )
        scores = {
            "val_crps": quantile_crps(ensemble_quantiles(samples, CSDI_QUANTILES), truth, m),
            "val_mae": point_errors(samples.median("member"), truth, m)["mae"],
        }
        _plot_stay(s[0], values[0].numpy(), given[0].numpy(), held[0], step, scores, folder)
        return scores

    return dump


def _plot_stay(s, truth, given, held, step, scores, folder: Path) -> None:
    feats = np.argsort(-(given + held).sum(0))[:4]  # the four most observed features
    plt = _plt()
    fig, axes = plt.subplots(1, len(feats), figsize=(3.2 * len(feats), 2.6), sharex=True)
    t = np.arange(truth.shape[0])
    for ax, k in zip(np.atleast_1d(axes), feats, strict=False):
        lo, med, hi = np.quantile(s[:, :, k], [0.05, 0.5, 0.95], axis=0)
        ax.fill_between(t, lo, hi, alpha=0.3, label="5-95 %")
        ax.plot(t, med, lw=1, label="median")
        g, h = given[:, k] > 0, held[:, k]
        ax.plot(t[g], truth[g, k], "k.", ms=4, label="given")
        ax.plot(t[h], truth[h, k], "rx", ms=5, label="held out")
        ax.set_title(f"feature {k}", fontsize=8)
    np.atleast_1d(axes)[0].legend(fontsize=6)
    fig.suptitle(
        f"step {step}: CRPS {scores['val_crps']:.3f}, MAE {scores['val_mae']:.3f} (normalised)",
        fontsize=8,
    )
    fig.tight_layout()
    _save(fig, folder / f"step_{step:09d}.png")
