"""What the two layouts of ``stdiff impute`` share: the job's config, drawing the members of a
batch of windows, the output's provenance, publishing and the scores (``pipelines.jobs.impute``
for stays, ``pipelines.jobs.impute_series`` for one long series)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr

from stdiff.datasets.atomic import write_json
from stdiff.datasets.errors import DataError
from stdiff.datasets.outputs import check_budget, store_attrs
from stdiff.datasets.store import stdiff_version
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.rng import member_generators
from stdiff.diffusion.samplers import check_options, get_sampler, sample
from stdiff.diffusion.schedules import SPACINGS, Spacing
from stdiff.pipelines.engine.config import at_least_one, to_dict
from stdiff.pipelines.engine.device import DeviceName, autocast, trim_host_memory
from stdiff.pipelines.metrics.calibration import spread_members
from stdiff.pipelines.metrics.scores import (
    CSDI_QUANTILES,
    ensemble_quantiles,
    interval_coverage,
    interval_quantiles,
    point_errors,
    quantile_crps,
    quantile_crps_sum,
    rank_histogram,
)

QUANTILES: tuple[float, ...] = tuple(sorted(set(CSDI_QUANTILES) | set(interval_quantiles())))


# samples per network evaluation on the CPU: in a fresh process CSDI's forward costs 22 ms per
# sample at 16 samples and 45-50 ms at 80 on the 2-core benchmark machine (the larger activations
# are allocated afresh at every step; BENCHMARKS.md, CSDI findings)
CPU_EVAL_BATCH = 16


@dataclass(frozen=True)
class ImputeConfig:
    """One imputation (or forecasting) run; see the module docstring.

    split: which stays (CSDI fold split ``fold``; ``all`` for every stay); max_stays: the first N of
    them; sampler, steps, spacing, options: the sampler; members, member_chunk, batch_size: how many
    samples, how many drawn at once, how many stays per batch (one batch = one output chunk);
    eval_batch: at most this many samples (stays x members) go through the network together
    (None: ``CPU_EVAL_BATCH`` on the CPU, where 16 samples cost about half as much per sample as
    80 in a fresh process; no limit on a GPU); it never changes the numbers;
    chunks: the batches this run computes (None: all); the store is published once all are done.

    A store of one long ``(time, feature)`` series (``pipelines.jobs.impute_series``): split
    selects the store's own ``split`` steps; period: ``[start, end]`` inclusive dates; max_steps:
    the first N selected steps; window: L (None: the checkpoint's ``data.window``); stitch:
    ``central`` (default: windows ``stride`` apart, None: L // 2, each step from its most
    central window; members of neighbouring windows are independent draws) or ``seamless``
    (windows of L steps tile the series, then a window around every seam re-draws the steps
    near it, each member conditioned on its own values on both sides; on Beijing at 400
    training steps it was worse than ``central``: BENCHMARKS.md);
    link_members: before publishing, relabel each window's members so that member ``m``
    continues member ``m`` of the window before with the least squared step (every step keeps
    its values and scores; ``central`` and ``forecast`` series, ``pipelines.jobs.impute_link``);
    batch_size: windows per batch; use_targets: the store's ``target_mask`` are the evaluation
    points (eval_ratio must then be 0); eval_pattern: ``random`` hides single values, ``block``
    gaps of ``eval_block`` consecutive steps of one feature (a sensor outage) until about
    ``eval_ratio`` of the observed values are hidden; spread: each window's members are moved
    about their mean by this factor once drawn, ``mean + spread (x - mean)`` at every value
    (kept in the training range when clip_x0), a calibration fitted on held-out data with
    ``stdiff calibrate`` (``pipelines.metrics.calibration``); 1: the samples as drawn;
    calibrate: fit ``spread`` first, in the same run: the job's keys changed by these (held-out
    data: ``split``, ``period``, ``data``, ``eval_ratio``, ``eval_seed``, ...; plus the fit's
    ``target``, ``coverage`` by default, and ``level``, 0.9) are imputed to a temporary store
    with hidden values, the spread is fitted on them (``stdiff calibrate``) and the job runs
    with it (``pipelines.jobs.calibrate.calibrated``; the config it records holds the fitted
    ``spread``)."""

    checkpoint: str
    data: str
    out: str
    sampler: str = "ddpm"
    steps: int = 50
    spacing: Spacing = "default"
    options: dict[str, Any] = field(default_factory=dict)
    members: int = 100
    member_chunk: int = 50
    batch_size: int = 16
    seed: int = 0
    mode: Literal["impute", "forecast"] = "impute"
    horizon: int = 0
    eval_ratio: float = 0.0
    eval_seed: int = 1
    split: Literal["test", "valid", "train", "all"] = "test"
    fold: int = 0
    max_stays: int | None = None
    device: DeviceName = "auto"
    weights: Literal["ema", "model"] = "ema"
    chunks: list[int] | None = None
    eval_batch: int | None = None
    window: int | None = None
    stride: int | None = None
    stitch: Literal["central", "seamless"] = "central"
    link_members: bool = True
    period: list[str] | None = None
    max_steps: int | None = None
    use_targets: bool = True
    eval_pattern: Literal["random", "block"] = "random"
    eval_block: int = 24
    clip_x0: bool = True  # clip predictions to the training data's range (engine.runner)
    spread: float = 1.0
    calibrate: dict[str, Any] | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_options(self.sampler, self.options)  # also refuses an unknown sampler
        if self.spacing not in SPACINGS:
            raise ValueError(
                f"spacing {self.spacing!r} is not valid; choose one of {list(SPACINGS)}"
            )
        at_least_one(self, "steps", "members", "member_chunk", "batch_size")
        if self.eval_batch is not None:
            at_least_one(self, "eval_batch")
        at_least_one(self, "eval_block")
        for name in ("window", "stride", "max_steps"):
            if getattr(self, name) is not None:
                at_least_one(self, name)
        if self.window is not None and self.window < 2:
            raise ValueError(f"window must be at least 2 steps, got {self.window}")
        if not (np.isfinite(self.spread) and 0.0 < self.spread <= 100.0):
            raise ValueError(f"spread must be in (0, 100], got {self.spread}")
        if not 0.0 <= self.eval_ratio < 1.0:
            raise ValueError(f"eval_ratio must be in [0, 1), got {self.eval_ratio}")
        if self.mode == "forecast" and self.horizon < 1:
            raise ValueError("horizon must be at least 1 in forecast mode")
        if self.mode == "forecast" and self.eval_ratio:
            raise ValueError("eval_ratio applies to impute mode; forecast mode scores the horizon")
        if self.calibrate is not None:
            held_out_config(self)


FIT_KEYS = {"target": "coverage", "level": 0.9}  # calibrate's keys that are not the job's
SELECTION = ("data", "split", "fold", "period", "max_stays", "max_steps", "eval_ratio",
             "eval_seed", "eval_pattern", "eval_block")  # fmt: skip


def same_points(a: ImputeConfig, b: ImputeConfig) -> bool:
    """Whether two jobs select the same data and hide the same values (``SELECTION``)."""
    return all(getattr(a, k) == getattr(b, k) for k in SELECTION)


def held_out_config(cfg: ImputeConfig) -> tuple[ImputeConfig, str, float]:
    """The held-out imputation of ``cfg.calibrate``, its fit's target and level; refuses (one
    line naming ``calibrate.KEY``) what cannot give a fit."""
    opts = dict(cfg.calibrate or {})
    target, level = (opts.pop(k, v) for k, v in FIT_KEYS.items())
    if target not in ("crps", "coverage"):
        raise ValueError(f"calibrate.target must be crps or coverage, got {target!r}")
    if not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"calibrate.level must be in (0, 1), got {level!r}")
    fixed = ("checkpoint", "out", "calibrate", "spread", "overwrite", "chunks", "mode", "horizon")
    names = sorted({f.name for f in fields(ImputeConfig)} - set(fixed))
    bad = sorted(set(opts) - set(names))
    if bad:
        raise ValueError(f"calibrate: unknown key(s) {bad}; valid keys are {names} and "
                         f"{list(FIT_KEYS)}")  # fmt: skip
    if cfg.mode != "impute":
        raise ValueError("calibrate applies to impute mode (hidden values to fit the spread on)")
    try:
        held = replace(cfg, calibrate=None, spread=1.0, chunks=None, overwrite=False, **opts)
    except ValueError as e:
        raise ValueError(f"calibrate: {e}") from None
    if held.eval_ratio == 0 and not held.use_targets:
        raise ValueError("calibrate: the held-out imputation needs hidden values; set "
                         "calibrate.eval_ratio (e.g. 0.1)")  # fmt: skip
    if cfg.eval_ratio and same_points(held, cfg):
        raise ValueError("calibrate: the held-out values are the ones this job scores; change "
                         "calibrate.split, period, data or eval_seed")  # fmt: skip
    return held, target, float(level)


def check_features(cfg: ImputeConfig, ds: xr.Dataset, meta: dict[str, Any]) -> None:
    if "observed_mask" not in ds:
        raise DataError(cfg.data, "variable 'observed_mask' is absent; is this a timeseries store?")
    if ds["values"].dims[-2:] != ("time", "feature"):
        raise DataError(cfg.data, f"values must end in (time, feature), got {ds['values'].dims}")
    trained = meta.get("coords", {}).get("feature")
    have = [str(f) for f in ds["feature"].values]
    if trained is not None and trained != have:
        extra, missing = sorted(set(have) - set(trained)), sorted(set(trained) - set(have))
        raise DataError(
            cfg.data,
            f"features differ from the checkpoint's ({len(have)} vs {len(trained)}; "
            f"not in the checkpoint: {extra[:5]}, missing here: {missing[:5]}"
            + ("; same names in another order" if not extra and not missing else "")
            + ")",
        )
    for s in ("values_mean", "values_std"):
        if s not in meta.get("stats", {}):
            raise ValueError(f"{cfg.checkpoint}: checkpoint has no {s} normalisation statistics")


@torch.no_grad()
def draw_members(
    denoiser, x_obs, cond_mask, positions, cfg, device, stream: int = 0
) -> torch.Tensor:
    """``(B, members, L, K)`` normalised samples for one batch of stays or windows.

    ``x_obs``: ``(B, L, K)`` normalised values, or ``(B, members, L, K)`` when each member has
    its own condition (seam windows conditioned on that member's neighbours); ``cond_mask``:
    ``(B, L, K)``. Member ``m`` at ``positions[b]`` draws from the generator seeded by
    ``(seed, position, m)`` (``stream`` > 0 adds a key, for a second set of windows)."""
    b = x_obs.shape[0]
    shape = tuple(cond_mask.shape[1:])
    sigmas = denoiser.schedule.discretize(cfg.steps, cfg.spacing)
    step = cfg.eval_batch or (CPU_EVAL_BATCH if device.type == "cpu" else b * cfg.member_chunk)
    keys = (stream,) if stream else ()
    out = []
    for start in range(0, cfg.members, cfg.member_chunk):
        members = range(start, min(cfg.members, start + cfg.member_chunk))
        c = len(members)
        gens = [
            g
            for p in positions
            for g in member_generators(cfg.seed, members, int(p), *keys, device=device)
        ]
        mask = cond_mask.repeat_interleave(c, 0)
        if x_obs.ndim == cond_mask.ndim + 1:  # one condition per member
            obs = x_obs[:, start : start + c].reshape(b * c, *shape) * mask
        else:
            obs = x_obs.repeat_interleave(c, 0) * mask
        parts = []
        for i in range(0, b * c, step):  # every sample has its own generator: same numbers
            j = min(b * c, i + step)
            with autocast(device, True):
                x = sample(
                    denoiser,
                    (j - i, *shape),
                    sigmas,
                    Condition(observed=obs[i:j], mask=mask[i:j]),
                    sampler=cfg.sampler,
                    generator=gens[i:j],
                    device=device,
                    **cfg.options,
                )
            parts.append(x.float())
            trim_host_memory()  # else glibc's heap grows with every call on the CPU
        out.append(torch.cat(parts).reshape(b, c, *shape))
    return spread_members(torch.cat(out, 1), cfg.spread, getattr(denoiser, "x0_clip", None))


def publish(
    store, out: Path, cfg, meta, result, scored: bool, mean, std, link: bool = False
) -> dict[str, Any]:
    """Score (when there are evaluation points), stamp provenance and publish the output store
    once every chunk is done; ``metrics.json`` beside it. ``link``: first relabel the members
    of a stitched series across window changes (``pipelines.jobs.impute_link``). Returns
    ``result`` completed."""

    def prepare(path: Path) -> None:
        if link:
            from stdiff.pipelines.jobs.impute_link import link_members

            link_members(path, std)
        if scored:
            result["metrics"] = score_imputation(xr.open_zarr(path, consolidated=False), mean, std)
        finish_store(path, cfg, meta, result)

    result["complete"] = store.finish(prepare) or (not result["pending"] and out.exists())
    if scored and "metrics" not in result and store.is_published:  # an identical earlier run
        earlier = json.loads((store_attrs(out) or {}).get("result", "{}"))
        if "metrics" in earlier:
            result.update(metrics=earlier["metrics"], unchanged=True)
        return result
    if "metrics" in result:
        write_json(out.with_name(out.name + ".metrics.json"), result)
    return result


def check_budget_of(
    cfg: ImputeConfig, rows: int, cells: int, batch_cells: int | None = None, copies: int = 1
) -> None:
    """Refuse before any work an output larger than the free disk or batches larger than the
    memory: ``copies`` of the samples and the quantiles on disk (``rows`` x ``cells`` values
    each), about four copies of a batch's samples in memory (``batch_cells`` values per
    member; default: ``batch_size`` rows)."""
    per_row = (cfg.members * copies + len(QUANTILES) + 5) * cells * 4
    batch = min(rows, cfg.batch_size) * cells if batch_cells is None else batch_cells
    check_budget(cfg.out, rows * per_row, batch * cfg.members * 4 * 4, "--members / batch_size")


def fingerprint(cfg: ImputeConfig, meta: dict[str, Any]) -> str:
    """What changes the numbers of a run (not where it runs, its chunks or its output path)."""
    skip = ("out", "device", "chunks", "eval_batch", "overwrite")
    keep = {k: v for k, v in to_dict(cfg).items() if k not in skip}
    keep["checkpoint_path"] = meta.get("checkpoint", cfg.checkpoint)
    keep["checkpoint_id"] = meta.get("checkpoint_id", "")  # the weights, not only their path
    keep["store_hash"] = meta.get("store_hash", "")
    return json.dumps(keep, sort_keys=True, default=str)


def evals_of(cfg: ImputeConfig) -> int | None:
    spec = get_sampler(cfg.sampler)
    return None if spec.evals is None else int(spec.evals(cfg.steps))


def finish_store(
    tmp: Path, cfg: ImputeConfig, meta: dict[str, Any], result: dict[str, Any]
) -> None:
    """Provenance and metrics into the store's attributes."""
    import zarr

    root = zarr.open_group(str(tmp), mode="r+")
    root.attrs.update(
        {
            "kind": "imputation" if cfg.mode == "impute" else "forecast",
            "config": json.dumps(to_dict(cfg)),
            "checkpoint": meta.get("checkpoint", cfg.checkpoint),
            "store_hash": meta.get("store_hash", ""),
            "result": json.dumps(result),
            "stdiff_version": stdiff_version(),
        }
    )


def score_imputation(out: xr.Dataset, mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Scores at the evaluation points in normalised units (CSDI's PhysioNet convention), and
    in physical units (CSDI's AQI-36 convention: ``crps_physical`` and ``crps_sum_physical``
    de-normalise before the same formulas, ``mae_physical``, ``rmse_physical``); with a
    ``variable`` coordinate along ``feature`` (per-station tables) also the MAE of each variable
    in its own units (``mae_physical_by_variable``), since one MAE over PM2.5 and pressure mixes
    units."""
    m = xr.DataArray(mean, dims="feature")
    s = xr.DataArray(std, dims="feature")
    mask = out["eval_mask"].astype(float)
    truth = ((out["values"] - m) / s).fillna(0.0)
    quant = (out["quantiles"] - m) / s
    samples = (out["samples"] - m) / s
    csdi_q = quant.sel(quantile=list(CSDI_QUANTILES))
    errs = point_errors((out["median"] - m) / s, truth, mask)
    phys_truth = out["values"].fillna(0.0)
    phys = point_errors(out["median"], phys_truth, mask)
    scores = {
        "crps": quantile_crps(csdi_q, truth, mask),
        "crps_sum": quantile_crps_sum(
            ensemble_quantiles(samples.sum("feature"), CSDI_QUANTILES), truth, mask
        ),
        **errs,
        "crps_physical": quantile_crps(
            out["quantiles"].sel(quantile=list(CSDI_QUANTILES)), phys_truth, mask
        ),
        "crps_sum_physical": quantile_crps_sum(
            ensemble_quantiles(out["samples"].sum("feature"), CSDI_QUANTILES), phys_truth, mask
        ),
        "mae_physical": phys["mae"],
        "rmse_physical": phys["rmse"],
        **interval_coverage(quant, truth, mask),
        "rank_histogram": rank_histogram(samples, truth, mask).tolist(),
        "eval_points": int(mask.sum()),
    }
    if "variable" in out.coords:
        other = [d for d in mask.dims if d != "feature"]
        err = (abs(out["median"] - phys_truth) * mask).sum(other).values  # (feature,)
        n = mask.sum(other).values
        names = np.array([str(v) for v in out["variable"].values], dtype=object)
        scores["mae_physical_by_variable"] = {
            v: float(err[names == v].sum() / n[names == v].sum())
            for v in dict.fromkeys(names)
            if n[names == v].sum() > 0
        }
    return scores
