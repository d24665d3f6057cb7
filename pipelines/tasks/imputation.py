"""The imputation task (``task: imputation``), CSDI's training rule (Tashiro et al. 2021):
``data.mask`` (``random`` by default, or ``historical``, ``mix``, ``block``, ``forecast``; see
``datasets.masks``) picks targets among the observed entries; the rest is the condition
(:func:`imputation_condition`, the same at inference); the loss counts the targets only.

Two store layouts: many short series ``(stay, time, feature)`` (ICU stays, split into folds by
``datasets.splits.csdi_stay_split``), or one long ``(time, feature)`` series (per-station tables),
cut into windows of ``data.window`` steps, ``data.stride`` apart, inside the store's training
split (``split == 0``; validation ``split == 1``, windows ``window`` apart). Its checkpoints are
read by ``stdiff impute``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from stdiff.datasets.masks import cond_mask, csdi_eval_mask
from stdiff.datasets.splits import csdi_stay_split
from stdiff.datasets.store import open_store, require_kind
from stdiff.datasets.windows import SampleWindows, SeriesWindows, window_starts
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.precond import Denoiser
from stdiff.diffusion.rng import member_generators
from stdiff.diffusion.samplers import sample
from stdiff.pipelines.metrics.scores import (
    CSDI_QUANTILES,
    ensemble_quantiles,
    point_errors,
    quantile_crps,
)
from stdiff.pipelines.tasks.base import SampleFn, TaskData, limit, store_metadata
from stdiff.pipelines.tasks.dumps import pyplot, save_figure

VARIABLES = ["values", "observed_mask"]


def imputation_condition(values: torch.Tensor, mask: torch.Tensor) -> Condition:
    """The condition of CSDI: the ``values`` where ``mask`` is 1 (``(B, L, K)`` both), and the
    mask itself; the network never sees the values it has to impute."""
    return Condition(observed=values * mask, mask=mask)


def imputation_batch(data):
    """``to_batch`` of the imputation task: ``data.mask`` picks the targets among the observed."""

    def to_batch(batch: dict, gen: torch.Generator):
        values, observed = batch["values"], batch["observed_mask"].float()
        cm = cond_mask(data.mask, observed, gen, horizon=data.horizon, max_block=data.max_block)
        return values, imputation_condition(values, cm), observed - cm

    return to_batch


def _stay_datasets(data, ds):
    split = csdi_stay_split(ds, data.fold)  # stored flags, or the mask chunk by chunk
    train = SampleWindows(data.store, "stay", VARIABLES, indices=limit(split.train, data.max_samples))  # fmt: skip
    valid = SampleWindows(data.store, "stay", VARIABLES, indices=split.valid) if len(split.valid) else None  # fmt: skip
    return train, valid, store_metadata(ds, VARIABLES)


def _series_datasets(data, ds):
    """Windows of one long ``(time, feature)`` series: training windows inside the store's
    training split, validation windows (non-overlapping) inside its validation split."""
    where = data.store
    for v in ("values", "observed_mask", "split"):
        if v not in ds:
            raise ValueError(f"{where}: variable {v!r} is absent; ingest it with --kind timeseries")
    if ds["values"].dims != ("time", "feature"):
        raise ValueError(f"{where}: values must be (time, feature), got {ds['values'].dims}")
    split = ds["split"].values
    train = window_starts(np.flatnonzero(split == 0), data.window, data.stride)
    valid = window_starts(np.flatnonzero(split == 1), data.window, data.window)
    if len(train) == 0:
        raise ValueError(
            f"{where}: no window of {data.window} steps fits inside the training split; "
            "choose a shorter data.window"
        )
    train_ds = SeriesWindows(where, limit(train, data.max_samples), data.window)
    val_ds = SeriesWindows(where, valid, data.window) if len(valid) else None
    meta = {**store_metadata(ds, VARIABLES), "series": {"window": data.window}}
    return train_ds, val_ds, meta


class ImputationTask:
    """``task: imputation`` (see the module docstring)."""

    name = "imputation"
    channel_dim = (
        -1
    )  # x0's features (the last dim of (B, L, K)): each clipped to its own training range
    jobs = ("impute",)

    def validate(self, data) -> None:
        return None  # the mask settings are checked by DataConfig for every task

    def check_store(self, ds, data) -> None:
        require_kind(ds, data.store, "timeseries", ("values", "observed_mask"))

    def net_params(self, data, model) -> dict[str, Any]:
        """CSDI's ``num_features`` follows from the store: filled in when the config omits it,
        and a value that differs from the store's is refused before any work. ``coords: store``
        takes the sites' coordinates (``stdiff ingest --site-coords``) from the store, so the
        checkpoint holds them."""
        params = dict(model.params)
        if model.net != "csdi":
            return params
        ds = open_store(data.store)
        k = int(ds.sizes["feature"])
        given = params.setdefault("num_features", k)
        if given != k:
            raise ValueError(
                f"model.params.num_features is {given} but {data.store} has {k} features; "
                "leave it out to take it from the store"
            )
        if params.get("coords") == "store":
            if "lat" not in ds.coords or "lon" not in ds.coords:
                raise ValueError(
                    f"model.params.coords is 'store' but {data.store} has no site coordinates; "
                    "ingest it with --site-coords FILE (a CSV station,lat,lon)"
                )
            lat, lon = ds["lat"].values.astype(float), ds["lon"].values.astype(float)
            params["coords"] = [[float(a), float(b)] for a, b in zip(lat, lon, strict=True)]
        elif isinstance(params.get("coords"), str):
            raise ValueError(
                f"model.params.coords={params['coords']!r}: give 'store' or a list of "
                "[latitude, longitude] pairs, one per feature"
            )
        return params

    def datasets(self, data) -> TaskData:
        ds = open_store(data.store)
        stays = "stay" in ds.dims
        train, valid, meta = (_stay_datasets if stays else _series_datasets)(data, ds)
        return TaskData(train, valid, imputation_batch(data), meta)

    def sample_dump(self, data, model, seed, items) -> SampleFn | None:
        values = torch.stack([it["values"] for it in items])
        observed = torch.stack([it["observed_mask"] for it in items]).float()
        return imputation_dump(values, observed, seed)


TASK = ImputationTask()


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
        cond = imputation_condition(values.to(device).repeat_interleave(members, 0), mask)
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
    plt = pyplot()
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
    save_figure(fig, folder / f"step_{step:09d}.png")
