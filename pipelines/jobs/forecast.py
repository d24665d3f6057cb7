"""``stdiff forecast``: roll a conditional weather denoiser forward from initial times.

Each member of each initial time is an autoregressive chain: from the ``context`` latest states,
sample the next state (GenCast's defaults: DPM-Solver++(2S) on 20 Karras noise levels from
sigma 80 to 0.03, rho 7, churn 2.5 for sigma in [0.75, 80], noise inflation 1.05), append it,
repeat until the lead. Every member and step draws from its own generator seeded from (seed,
initial time, member, step), so members do not depend on how many are batched together
(``member_batch``). A checkpoint trained with ``loop.objective: regression`` is the
deterministic baseline: one member, ``D(0; sigma_max)`` per step, no sampler.

Everything is checked before any work: initial times in the data with their previous states, a
lead that is a whole number of the model's steps (given in hours or days, in steps, or on a
monthly, quarterly or yearly model in months or years: ``pipelines.tasks.forecast.lead_steps``), the data's variables, levels and grid equal to the
checkpoint's. The output zarr holds one variable per input variable in the data's units, in
WeatherBench 2's layout ``(time, realization, prediction_timedelta, [level], latitude,
longitude)`` (``time`` is the initial time) or, with ``layout: stdiff``, ``(init_time, member,
lead_time, [level], lat, lon)``; coordinates carry CF attributes, and a 2-D ``valid_time``
coordinate (on the calendar for a calendar step: a monthly model's leads are nominal, 730.5 h a
month, its valid times are month starts); it is written one initial time (one zarr chunk) at a time with a completion marker
(``datasets.regions``; a long rollout never holds more than one initial time) and renamed into
place when all are done: a killed forecast run again computes only the missing initial times.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import pandas as pd
import torch
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.outputs import check_budget, claim_store
from stdiff.datasets.regions import RegionStore
from stdiff.datasets.store import open_store, require_kind, stdiff_version
from stdiff.datasets.windows import regular_runs
from stdiff.diffusion.losses import regression_predict
from stdiff.diffusion.rng import member_generators
from stdiff.diffusion.samplers import check_options, get_sampler, option_names, sample
from stdiff.diffusion.schedules import karras_sigmas
from stdiff.pipelines.engine.config import at_least_one, to_dict
from stdiff.pipelines.engine.device import DeviceName, autocast, resolve_device, trim_host_memory
from stdiff.pipelines.engine.progress import progress_bar
from stdiff.pipelines.engine.runner import check_sampling, clip_report, load_denoiser
from stdiff.pipelines.engine.train import top_sigma
from stdiff.pipelines.metrics.calibration import spread_members
from stdiff.pipelines.tasks import require_job
from stdiff.pipelines.tasks.forecast import (
    TimeStep,
    WeatherLayout,
    condition,
    lead_steps,
    parse_duration,
    time_scalars,
)

# Output layouts: the internal names -> the names a store is written with. ``wb2`` is
# WeatherBench 2's (``time`` is the initial time, ``prediction_timedelta`` the lead) with CF's
# ``realization`` for members; ``stdiff`` keeps the internal names. ``stdiff score`` reads both,
# and ECMWF's ``number`` (``pipelines.jobs.score.to_internal``).
LAYOUTS: dict[str, dict[str, str]] = {
    "wb2": {"init_time": "time", "member": "realization", "lead_time": "prediction_timedelta",
            "lat": "latitude", "lon": "longitude"},
    "stdiff": {},
}  # fmt: skip
CF_COORDS: dict[str, dict[str, str]] = {
    "init_time": {"standard_name": "forecast_reference_time", "long_name": "initial time"},
    "lead_time": {"standard_name": "forecast_period", "long_name": "lead time"},
    "member": {"standard_name": "realization", "long_name": "ensemble member", "units": "1"},
    "valid_time": {"standard_name": "time", "long_name": "valid time", "axis": "T"},
    "lat": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north",
            "axis": "Y"},
    "lon": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east",
            "axis": "X"},
    "level": {"axis": "Z"},
}  # fmt: skip

GENCAST_OPTIONS = {"s_churn": 2.5, "s_tmin": 0.75, "s_tmax": 80.0, "s_noise": 1.05}


@dataclass(frozen=True)
class ForecastConfig:
    """init: ISO times (``2014-06-01T00``), ranges ``START/END/EVERY`` (``2014-01-01T00/2014-12-31T00/120h``)
    or ``latest`` (the last time in the data, for scheduled runs);
    lead: ``72h``, ``3d``, ``12steps``, or on a calendar-step (monthly) model ``3months``; members, member_batch: ensemble size and members per network call; the
    sampler and its noise levels (Karras spacing from ``sigma_max`` to ``sigma_min``);
    layout: the output's dimension names (``LAYOUTS``: WeatherBench 2's by default);
    chunks: the initial times (indices) this run computes (None: all; a fan-out gives each task
    some); the store is published once all are done;
    churn, noise_inflation: the two knobs of the ensemble's dispersion, the sampler's ``s_churn``
    (noise added back at each level in [s_tmin, s_tmax]) and ``s_noise`` (its inflation); None
    keeps ``options``' values (GenCast's 2.5 and 1.05). Raise them for an under-dispersed
    ensemble (spread-skill below 1), lower them for an over-dispersed one;
    spread: multiplicative inflation of each step: every member's sampled step (the residual, or
    the state of a direct model) is moved about the members' mean step by this factor,
    ``mean + spread (r - mean)``, before it is added (the inflation of ensemble data
    assimilation, here correcting a few-step sampler's under-dispersion; 1 leaves the members
    independent). It couples the members of an initial time, which are rolled forward together
    whatever ``member_batch``. A list gives a factor per rollout step, the last one kept for
    the steps after it (``[1.15, 1.2, 1.3]``: less at the short leads, where a few-step sampler's
    spread is nearer the error, more at the long ones)."""

    checkpoint: str
    data: str
    out: str
    init: list[str]
    lead: str = "72h"
    members: int = 8
    member_batch: int = 8
    sampler: str = "dpmpp_2s"
    steps: int = 20
    sigma_min: float = 0.03
    sigma_max: float = 80.0
    rho: float = 7.0
    options: dict[str, Any] | None = None  # None: GenCast's churn where the sampler takes it
    churn: float | None = None
    noise_inflation: float | None = None
    spread: float | list[float] = 1.0
    seed: int = 0
    device: DeviceName = "auto"
    weights: Literal["ema", "model"] = "ema"
    layout: Literal["wb2", "stdiff"] = "wb2"
    clip_x0: bool = True  # clip predictions to the training data's range (engine.runner)
    overwrite: bool = False
    chunks: list[int] | None = None

    def __post_init__(self) -> None:
        get_sampler(self.sampler)  # refuses an unknown sampler, naming the known ones
        knobs = [k for k in ("churn", "noise_inflation") if getattr(self, k) is not None]
        if knobs and "s_churn" not in option_names(self.sampler):
            raise ValueError(f"{', '.join(knobs)}: sampler {self.sampler!r} has no churn or noise "
                             "inflation; use dpmpp_2s or heun, or leave them unset")  # fmt: skip
        check_options(self.sampler, self.sampler_options())
        for name in ("churn", "noise_inflation"):
            if (value := getattr(self, name)) is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        at_least_one(self, "members", "member_batch", "steps")
        factors = self.spread if isinstance(self.spread, list | tuple) else [self.spread]
        if not factors or not all(np.isfinite(f) and 0.0 < f <= 100.0 for f in factors):
            raise ValueError(f"spread must be in (0, 100] (or a list of such), got {self.spread}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if not self.init:
            raise ValueError("init: give at least one initial time")
        parse_duration(self.lead, "--lead")  # the syntax; the model's step is checked later

    def spread_at(self, k: int) -> float:
        """The inflation factor of rollout step ``k`` (1-based)."""
        if not isinstance(self.spread, list | tuple):
            return float(self.spread)
        return float(self.spread[min(k, len(self.spread)) - 1])

    def sampler_options(self) -> dict[str, Any]:
        """``options`` with ``churn`` / ``noise_inflation`` applied where given."""
        knobs = {"s_churn": self.churn, "s_noise": self.noise_inflation}
        if self.options is None:
            takes = option_names(self.sampler)
            base = {k: v for k, v in GENCAST_OPTIONS.items() if k in takes}
        else:
            base = self.options
        return {**base, **{k: v for k, v in knobs.items() if v is not None}}


def _every(text: str, step: TimeStep | None) -> pd.Timedelta | pd.DateOffset:
    """The ``EVERY`` of an init range: a duration, months/years, or model steps."""
    value, kind = parse_duration(text, "--init EVERY")
    if kind == "hours":
        return pd.Timedelta(hours=value)
    if kind == "months":
        return pd.DateOffset(months=round(value))
    if step is None:
        raise ValueError("steps need the model's time step")
    return pd.DateOffset(months=step.months * round(value)) if step.months else (
        pd.Timedelta(hours=step.hours * round(value)))  # fmt: skip


def parse_inits(
    specs: list[str], where: str, times: np.ndarray | None = None, step: TimeStep | None = None
) -> np.ndarray:
    """Initial times from ISO strings, ``START/END/EVERY`` ranges (``EVERY`` like ``120h``,
    ``1months`` or, given the model's ``step``, ``4steps``) and ``latest`` (the last time of
    ``times``, the data: what a scheduled forecast wants), sorted, unique."""
    out = []
    for spec in specs:
        try:
            if spec == "latest":
                if times is None or len(times) == 0:
                    raise ValueError("no data times to take the latest from")
                out.append(pd.Timestamp(times[-1]))
            elif "/" in spec:
                start, end, every = spec.split("/")
                freq = _every(every, step)
                out += list(pd.date_range(pd.Timestamp(start), pd.Timestamp(end), freq=freq))
            else:
                out.append(pd.Timestamp(spec))
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{where}: init {spec!r} is not a time or START/END/EVERY range ({e})"
            ) from None
    return np.unique(np.asarray(out, dtype="datetime64[ns]"))


@dataclass
class _Job:
    denoiser: Any
    layout: WeatherLayout
    step: TimeStep  # one forecast step: the model's data step times its shortest lead
    n_steps: int
    inits: np.ndarray
    positions: np.ndarray  # init positions in the data
    regression: bool
    checkpoint_id: str = ""  # the weights' identity (size, mtime), for resuming


def _prepare(cfg: ForecastConfig, ds: xr.Dataset, device: torch.device) -> _Job:
    denoiser, tcfg, meta = load_denoiser(
        cfg.checkpoint, cfg.weights, device=str(device), clip=cfg.clip_x0
    )
    require_job(tcfg.data.task, "forecast", cfg.checkpoint)
    trained_sigma = top_sigma(denoiser.schedule)
    check_sampling(tcfg, cfg.sampler, cfg.steps, cfg.checkpoint, cfg.sigma_max, trained_sigma)
    if "weather" not in meta:
        raise ValueError(f"{cfg.checkpoint}: the checkpoint has no weather layout; train it again")
    layout = WeatherLayout(**meta["weather"])
    data_layout = WeatherLayout.from_store(
        ds, layout.variables, layout.context, layout.residual, where=cfg.data
    )
    layout.check(data_layout, cfg.data)
    step = layout.step.times(min(tcfg.data.leads))
    n_steps = lead_steps(cfg.lead, step, "--lead")
    inits = parse_inits(list(cfg.init), cfg.data, ds["time"].values, step)
    times = ds.indexes["time"]
    pos = times.get_indexer(pd.DatetimeIndex(inits))
    if (pos < 0).any():
        bad = [str(t)[:16] for t in inits[pos < 0][:5]]
        raise DataError(
            cfg.data,
            f"initial time(s) {bad} are not times of the data ({times[0]} .. {times[-1]}, one every {layout.step.describe()})",
        )
    run = regular_runs(ds["time"].values)
    short = (pos < layout.context - 1) | (run[pos] != run[np.maximum(pos - layout.context + 1, 0)])
    if short.any():
        raise DataError(
            cfg.data,
            f"initial time {str(inits[short][0])[:16]} lacks its {layout.context - 1} previous state(s) one step apart",
        )
    regression = tcfg.loop.objective == "regression"
    return _Job(
        denoiser, layout, step, n_steps, inits, pos, regression, meta.get("checkpoint_id", "")
    )


def _template(job: _Job, ds: xr.Dataset, members: int, layout: str) -> xr.Dataset:
    lay = job.layout
    ks = np.arange(1, job.n_steps + 1)
    leads = ks * np.timedelta64(round(job.step.hours * 3600), "s")  # nominal for calendar steps
    coords: dict[str, Any] = {
        "init_time": job.inits,
        "member": np.arange(members),
        "lead_time": leads.astype("timedelta64[ns]"),
        "lat": np.asarray(lay.lat),
        "lon": np.asarray(lay.lon),
    }
    out = {}
    for v in lay.variables:
        shape = [len(job.inits), members, job.n_steps]
        dims = ["init_time", "member", "lead_time"]
        if "level" in ds[v].dims:
            coords["level"] = ds["level"].values
            shape.append(ds.sizes["level"])
            dims.append("level")
        shape += [len(lay.lat), len(lay.lon)]
        dims += ["lat", "lon"]
        arr = da.zeros(shape, dtype=np.float32, chunks=(1, *shape[1:]))
        attrs = {
            k: ds[v].attrs[k] for k in ("units", "long_name", "standard_name") if k in ds[v].attrs
        }
        out[v] = xr.DataArray(arr, dims=dims, attrs=attrs)
    result = xr.Dataset(out, coords=coords)
    valid = np.stack([job.step.after(t, ks) for t in job.inits])  # (init, lead) on the calendar
    result = result.assign_coords(valid_time=(("init_time", "lead_time"), valid))
    for name, attrs in CF_COORDS.items():
        if name in result.coords:
            source = ds[name].attrs if name in ds.coords else {}
            result[name].attrs = {**attrs, **source}
    return result.rename(LAYOUTS[layout])


@torch.no_grad()
def _rollout(cfg: ForecastConfig, job: _Job, history: np.ndarray, init: np.datetime64, members: int,
             device: torch.device) -> np.ndarray:  # fmt: skip
    """``(members, n_steps, C, H, W)`` physical states after ``init``: all members go one step
    at a time (``member_batch`` of them per network call), so ``spread`` sees them together."""
    lay = job.layout
    mean = torch.tensor(lay.mean, device=device)[:, None, None]
    std = torch.tensor(lay.std, device=device)[:, None, None]
    scale = lay.scale(device)
    static = lay.static().to(device)
    hist0 = (torch.from_numpy(history).to(device) - mean) / std  # (ctx, C, H, W)
    key = int(init.astype("datetime64[h]").astype(np.int64))  # hours since 1970
    sigmas = karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    out = np.empty((members, job.n_steps, *history.shape[1:]), dtype=np.float32)
    states = hist0[None].expand(members, *hist0.shape).clone()  # (M, ctx, C, H, W)
    for k in range(1, job.n_steps + 1):
        steps = []
        for a in range(0, members, cfg.member_batch):
            ids = list(range(a, min(members, a + cfg.member_batch)))
            valid = np.repeat(job.step.after(init, k), len(ids))
            cond = condition(states[a : a + len(ids)], static,
                             time_scalars(valid, np.full(len(ids), job.step.hours)))  # fmt: skip
            shape = (len(ids), *hist0.shape[1:])
            with autocast(device, True):
                if job.regression:
                    r = regression_predict(job.denoiser, shape, cfg.sigma_max, cond, device=device)
                else:
                    gens = member_generators(cfg.seed, ids, key, k, device=device)
                    r = sample(job.denoiser, shape, sigmas, cond, sampler=cfg.sampler,
                               generator=gens, device=device, **cfg.sampler_options())  # fmt: skip
            steps.append(r.float())
        r = spread_members(
            torch.cat(steps)[None], cfg.spread_at(k), getattr(job.denoiser, "x0_clip", None)
        )[0]
        new = states[:, -1] + r * scale if lay.residual else r
        states = torch.cat([states[:, 1:], new[:, None]], dim=1)
        out[:, k - 1] = (new * std + mean).cpu().numpy()
        trim_host_memory()  # else glibc's heap grows with every step on the CPU
    return out


def _channels_to_vars(job: _Job, block: np.ndarray, ds: xr.Dataset) -> dict[str, np.ndarray]:
    """``(M, T, C, H, W)`` -> per variable ``(1, M, T, [level], H, W)``."""
    out, c = {}, 0
    for v in job.layout.variables:
        n = ds.sizes["level"] if "level" in ds[v].dims else 1
        part = block[:, :, c : c + n]
        out[v] = (part if "level" in ds[v].dims else part[:, :, 0])[None]
        c += n
    return out


def plan_chunks(cfg: ForecastConfig) -> int:
    """How many output chunks (initial times) the job has: what a fan-out distributes."""
    return len(_prepare(cfg, open_store(cfg.data), torch.device("cpu")).inits)


def run_forecast(cfg: ForecastConfig, progress: bool = True) -> dict[str, Any]:
    """Run the job; returns ``{"out", "inits", "members", "lead_steps", "seconds", ...}``."""
    claim_store(cfg.out, "forecast", [cfg.data, cfg.checkpoint], cfg.overwrite)
    device = resolve_device(cfg.device)
    ds = open_store(cfg.data)
    require_kind(ds, cfg.data, "weather", ())
    job = _prepare(cfg, ds, device)
    members = 1 if job.regression else cfg.members
    ctx = job.layout.context
    channels = [ds[v] for v in job.layout.variables]
    state = sum(int(np.prod(a.shape[1:])) for a in channels) * 4  # bytes of one state
    check_budget(cfg.out, len(job.inits) * members * job.n_steps * state,
                 3 * members * (job.n_steps + ctx) * state, "--members / --lead")  # fmt: skip
    t0 = time.perf_counter()
    fingerprint = json.dumps(
        {**{k: v for k, v in to_dict(cfg).items() if k not in ("out", "device", "init", "overwrite", "chunks")
            and not (k == "spread" and v == 1.0)},  # a key added later: old runs resume
         "inits": [str(t) for t in job.inits], "store": ds.attrs.get("content_hash", ""),
         "checkpoint_id": job.checkpoint_id},
        sort_keys=True, default=str,
    )  # fmt: skip
    template = _template(job, ds, members, cfg.layout)
    init_dim = LAYOUTS[cfg.layout].get("init_time", "init_time")
    store_dims = {v: template[v].dims for v in template.data_vars}
    store = RegionStore(cfg.out, fingerprint, len(job.inits), "forecast", cfg.overwrite)
    store.open(template)
    todo = store.pending()
    if cfg.chunks is not None:
        bad = [c for c in cfg.chunks if not 0 <= c < len(job.inits)]
        if bad:
            raise ValueError(f"chunks {bad} are out of range: this job has {len(job.inits)} chunks")
        todo = [c for c in todo if c in set(cfg.chunks)]
    bar = progress_bar(len(todo), enabled=progress, unit="init")
    for i in todo:
        init, p = job.inits[i], job.positions[i]
        hist = np.concatenate(
            [
                np.asarray(a.isel(time=slice(p - ctx + 1, p + 1)).values, np.float32).reshape(
                    ctx, -1, *a.shape[-2:]
                )
                for a in channels
            ],
            axis=1,
        )  # (ctx, C, H, W)
        if not np.isfinite(hist).all():
            raise DataError(cfg.data, f"missing values in the states before {str(init)[:16]}")
        block = _rollout(cfg, job, hist, init, members, device)
        if not np.isfinite(block).all():
            raise FloatingPointError(
                f"non-finite forecast from {str(init)[:16]}; the output was not published"
            )
        parts = _channels_to_vars(job, block, ds)
        region = xr.Dataset({v: (store_dims[v], a) for v, a in parts.items()})
        if not store.write(i, region, {init_dim: slice(i, i + 1)}):
            break  # an identical run published the output meanwhile
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    result = {
        "out": cfg.out,
        "inits": len(job.inits),
        "members": members,
        "lead_steps": job.n_steps,
        "step": job.step.describe(),
        "seconds": seconds,
        "seconds_per_member_step": seconds / (max(1, len(todo)) * members * job.n_steps),
        "deterministic": job.regression,
        "device": str(device),
        "computed": todo,
    }
    clip_report(job.denoiser, cfg.checkpoint, result)

    def prepare(path: Path) -> None:
        import zarr

        zarr.open_group(str(path), mode="r+").attrs.update(
            {
                "Conventions": "CF-1.8",
                "title": "stdiff ensemble forecast",
                "source": f"stdiff {stdiff_version()} checkpoint {cfg.checkpoint}",
                "history": f"stdiff forecast from {cfg.data}",
                "config": json.dumps(to_dict(cfg)),
                "result": json.dumps(result),
            }
        )

    result["complete"] = store.finish(prepare)
    result["pending"] = store.pending()
    return result
