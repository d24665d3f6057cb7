"""``stdiff impute``: fill the gaps of multivariate series with a trained conditional denoiser.

For every selected stay the observed entries are the condition and the model draws ``members``
samples of the whole window with any registered sampler; members are drawn ``member_chunk`` at a
time (memory stays bounded) and each member of each stay has its own generator seeded from
``(seed, stay position, member)``, so the result does not depend on the chunking or the batch.

Modes:

* ``impute``: condition on what is observed; with ``eval_ratio > 0`` a further share of the observed
  values is hidden first with CSDI's protocol (``datasets.masks.csdi_eval_mask``) and scored.
* ``forecast``: condition on the window before the last ``horizon`` steps and sample the horizon;
  the observed values there are scored.

The output zarr has, along the input's ``stay``/``time``/``feature`` coordinates: ``samples``
``(stay, member, time, feature)`` (given entries keep their observed values), ``median``,
``quantiles`` (CSDI's 19 levels and the 50/90/95 % interval bounds), the input ``values`` and
the ``observed_mask``/``cond_mask``/``eval_mask``, in the data's physical units. It is written
batch by batch into a temporary store that is renamed into place at the end. With evaluation
points, ``metrics.json`` beside it (and the store's ``metrics`` attribute) holds CSDI's CRPS,
CRPS-sum, MAE and RMSE of the median (in normalised units, as CSDI reports PhysioNet), interval
coverage and the rank histogram.
"""

from __future__ import annotations

__all__ = ["ImputeConfig", "plan_chunks", "run_imputation", "score_imputation"]

import time
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.masks import csdi_eval_mask_rows
from stdiff.datasets.outputs import claim_store
from stdiff.datasets.regions import RegionStore
from stdiff.datasets.splits import csdi_stay_split
from stdiff.datasets.store import open_store
from stdiff.pipelines.engine.device import resolve_device
from stdiff.pipelines.engine.progress import progress_bar
from stdiff.pipelines.engine.runner import check_sampling, clip_report, load_denoiser
from stdiff.pipelines.jobs.calibrate import calibrated
from stdiff.pipelines.jobs.impute_core import (
    QUANTILES,
    ImputeConfig,
    check_budget_of,
    check_features,
    draw_members,
    evals_of,
    fingerprint,
    publish,
    score_imputation,
)
from stdiff.pipelines.jobs.impute_series import run_series_imputation, series_layout
from stdiff.pipelines.tasks import require_job


def plan_chunks(cfg: ImputeConfig) -> int:
    """How many output chunks (batches of stays, or of windows of one long series) the job has:
    what a fan-out distributes."""
    ds = open_store(cfg.data)
    if "stay" not in ds.dims:
        plan, chunk = series_layout(cfg, ds, load_denoiser(cfg.checkpoint, cfg.weights)[1])
        return -(-len(plan.times) // chunk)
    return -(-len(_select(cfg, ds)) // cfg.batch_size)


def _select(cfg: ImputeConfig, ds: xr.Dataset) -> np.ndarray:
    """Positions of the selected stays: from the store's per-stay flags, or its lazy mask
    reduced chunk by chunk (never read whole) for a store ingested before the flags."""
    if cfg.split == "all":
        idx = np.arange(ds.sizes["stay"])
    else:
        idx = np.sort(getattr(csdi_stay_split(ds, cfg.fold), cfg.split))
    return idx[: cfg.max_stays] if cfg.max_stays else idx


def _masks(
    cfg: ImputeConfig, observed: xr.DataArray, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(cond_mask, eval_mask) of the selected stays, as booleans; only the selected stays (and,
    for CSDI's hidden points, the stays before them, a block at a time) are read."""
    obs = observed.isel(stay=idx).values.astype(bool)
    if cfg.mode == "forecast":
        length = obs.shape[1]
        if cfg.horizon >= length:
            raise ValueError(
                f"horizon {cfg.horizon} must be shorter than the window ({length} steps)"
            )
        cond = obs.copy()
        cond[:, length - cfg.horizon :] = False
    elif cfg.eval_ratio > 0:
        cond = csdi_eval_mask_rows(observed, cfg.eval_ratio, cfg.eval_seed, idx)  # stays in order
    else:
        cond = obs
    return cond, obs & ~cond


def _check_inputs(cfg: ImputeConfig, ds: xr.Dataset, meta: dict[str, Any]) -> None:
    for v in ("values", "observed_mask"):
        if v not in ds:
            raise DataError(cfg.data, f"variable {v!r} is absent; is this a timeseries store?")
    series = [k for k in ("window", "stride", "period", "max_steps") if getattr(cfg, k)]
    series += ["eval_pattern"] if cfg.eval_pattern != "random" else []
    if series:
        raise ValueError(f"{series[0]} applies to a store of one long series, not to stays")
    if ds["values"].dims != ("stay", "time", "feature"):
        raise DataError(cfg.data, f"values must be (stay, time, feature), got {ds['values'].dims}")
    check_features(cfg, ds, meta)


def _template(ds: xr.Dataset, idx: np.ndarray, cfg: ImputeConfig) -> xr.Dataset:
    n, (length, k) = len(idx), (ds.sizes["time"], ds.sizes["feature"])
    bs = cfg.batch_size

    def zeros(shape, dtype=np.float32):
        return da.zeros(shape, dtype=dtype, chunks=(bs, *shape[1:]))

    coords = {
        "stay": ds["stay"].values[idx],
        "member": np.arange(cfg.members),
        "quantile": np.asarray(QUANTILES),
        "time": ds["time"].values,
        "feature": ds["feature"].values.astype(object),
    }
    return xr.Dataset(
        {
            "samples": (("stay", "member", "time", "feature"), zeros((n, cfg.members, length, k))),
            "median": (("stay", "time", "feature"), zeros((n, length, k))),
            "quantiles": (
                ("stay", "quantile", "time", "feature"),
                zeros((n, len(QUANTILES), length, k)),
            ),
            "values": (("stay", "time", "feature"), zeros((n, length, k))),
            "observed_mask": (("stay", "time", "feature"), zeros((n, length, k), np.uint8)),
            "cond_mask": (("stay", "time", "feature"), zeros((n, length, k), np.uint8)),
            "eval_mask": (("stay", "time", "feature"), zeros((n, length, k), np.uint8)),
        },
        coords=coords,
    )


def run_imputation(cfg: ImputeConfig, progress: bool = True) -> dict[str, Any]:
    """Run the job; returns ``{"out", "stays", "seconds", "evals", "metrics"?, "calibration"?}``
    (with ``calibrate``: the spread is fitted on held-out data first, ``calibrated``)."""
    claim_store(cfg.out, "impute", [cfg.data, cfg.checkpoint], cfg.overwrite)
    if cfg.calibrate is not None:  # the config keeps ``calibrate``, with the fitted spread
        cfg, fit = calibrated(cfg, run_imputation, progress)
        return {**_impute(cfg, progress), "calibration": fit}
    return _impute(cfg, progress)


def _impute(cfg: ImputeConfig, progress: bool) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    denoiser, tcfg, meta = load_denoiser(
        cfg.checkpoint, cfg.weights, device=str(device), clip=cfg.clip_x0
    )
    require_job(tcfg.data.task, "impute", cfg.checkpoint)
    check_sampling(tcfg, cfg.sampler, cfg.steps, cfg.checkpoint)
    denoiser.schedule.discretize(cfg.steps, cfg.spacing)  # a bad step count fails before any work
    ds = open_store(cfg.data)
    if "values" in ds and "stay" not in ds.dims:  # one long series (per-station tables)
        check_features(cfg, ds, meta)
        return run_series_imputation(cfg, ds, denoiser, tcfg, meta, device, progress)
    _check_inputs(cfg, ds, meta)
    observed = ds["observed_mask"]  # lazy: read by chunks and selections only
    idx = _select(cfg, ds)
    if len(idx) == 0:
        raise ValueError(
            f"{cfg.data}: no stays selected (split {cfg.split!r}, max_stays {cfg.max_stays})"
        )
    check_budget_of(cfg, len(idx), ds.sizes["time"] * ds.sizes["feature"])
    cond_all, eval_all = _masks(cfg, observed, idx)
    empty = np.flatnonzero(~cond_all.reshape(len(idx), -1).any(1))
    if len(empty):
        ids = ds["stay"].values[idx[empty]].tolist()
        what = (
            "no observed history"
            if cfg.mode == "forecast"
            else "no observed values to condition on"
        )
        raise DataError(cfg.data, f"{len(ids)} stay(s) have {what}: {ids[:10]}; leave them out")
    mean = np.asarray(meta["stats"]["values_mean"], dtype=np.float32)
    std = np.asarray(meta["stats"]["values_std"], dtype=np.float32)

    out = Path(cfg.out)
    t0 = time.perf_counter()
    n_chunks = -(-len(idx) // cfg.batch_size)
    bad = [c for c in cfg.chunks or [] if not 0 <= c < n_chunks]
    if bad:
        raise ValueError(f"chunks {bad} are out of range: this job has {n_chunks} chunks")
    store = RegionStore(out, fingerprint(cfg, meta), n_chunks, "impute", cfg.overwrite)
    store.open(_template(ds, idx, cfg))
    todo = [c for c in (cfg.chunks if cfg.chunks is not None else range(n_chunks))
            if not store.done(c)]  # fmt: skip
    bar = progress_bar(len(todo), enabled=progress, unit="batch")
    for c in todo:
        a = c * cfg.batch_size
        b = min(len(idx), a + cfg.batch_size)
        sel = idx[a:b]
        raw = ds["values"].isel(stay=sel).values.astype(np.float32)  # (B, L, K), NaN = missing
        x_obs = torch.from_numpy(np.nan_to_num((raw - mean) / std)).to(device)
        cmask = torch.from_numpy(cond_all[a:b].astype(np.float32)).to(device)
        draws = draw_members(denoiser, x_obs, cmask, sel, cfg, device).cpu().numpy()
        if not np.isfinite(draws).all():
            bad = ds["stay"].values[sel[~np.isfinite(draws).reshape(b - a, -1).all(1)]].tolist()
            raise FloatingPointError(
                f"non-finite samples for stays {bad[:10]}; the output was not published"
            )
        phys = draws * std + mean
        given = cond_all[a:b][:, None]
        phys = np.where(given, np.nan_to_num(raw)[:, None], phys)  # given entries keep their values
        region = {"stay": slice(a, b)}
        data = xr.Dataset(
            {
                "samples": (("stay", "member", "time", "feature"), phys.astype(np.float32)),
                "median": (("stay", "time", "feature"), np.median(phys, 1).astype(np.float32)),
                "quantiles": (
                    ("stay", "quantile", "time", "feature"),
                    np.quantile(phys, QUANTILES, axis=1).transpose(1, 0, 2, 3).astype(np.float32),
                ),
                "values": (("stay", "time", "feature"), raw),
                "observed_mask": (
                    ("stay", "time", "feature"),
                    (cond_all[a:b] | eval_all[a:b]).astype(np.uint8),
                ),
                "cond_mask": (("stay", "time", "feature"), cond_all[a:b].astype(np.uint8)),
                "eval_mask": (("stay", "time", "feature"), eval_all[a:b].astype(np.uint8)),
            }
        )
        if not store.write(c, data, region):
            break  # an identical run published the output meanwhile
        bar.update(1)
    bar.close()
    result: dict[str, Any] = {
        "out": str(out),
        "stays": len(idx),
        "members": cfg.members,
        "sampler": cfg.sampler,
        "steps": cfg.steps,
        "evals": evals_of(cfg),
        "seconds": time.perf_counter() - t0,
        "device": str(device),
        "chunks": n_chunks,
        "computed": todo,
        "pending": store.pending(),
    }

    clip_report(denoiser, cfg.checkpoint, result)
    return publish(store, out, cfg, meta, result, bool(eval_all.any()), mean, std)
