"""``stdiff impute`` on one long ``(time, feature)`` series (a sensor network): windows, stitching.

The selected time steps (the store's ``split``, a ``period``, or both) are covered by windows of
``L`` steps (the checkpoint's ``data.window`` unless ``window`` is given), each imputed with
``members`` samples as a stay is, then stitched back onto the time axis:

* ``impute`` mode, ``stitch: seamless``: inside each run of consecutive selected
  steps, windows of ``L`` steps tile the run (the last one ending on the run's last step); then
  a window centred on every seam between two tiles re-draws the steps within ``L // 4`` of it,
  each member conditioned on its own tile values on both sides (:func:`draw_seamless`), so a
  member's trajectory continues from its own values. Same cost as ``central`` (2 windows per L
  steps). Measured on Beijing (400 training steps) it was worse than ``central``: conditioning
  on sampled values as if observed widened the seam windows' spread and their error.
* ``impute`` mode, ``stitch: central`` (the default): the windows start ``stride`` steps apart (by default
  ``L // 2``), and each time step is taken from the window in which it is most central (ties:
  the earlier window), so no step is imputed twice and none at a window's ragged edge when a
  more central window exists; members of neighbouring windows are independent draws, so
  before publishing each window's members are relabelled to continue the previous window's
  with the least squared step (``link_members``, :mod:`pipelines.jobs.impute_link`; every
  step keeps its values, so the scores do not change; without it a member jumps where the
  windows meet).
* In both, a run shorter than ``L`` is imputed in one window reaching into its neighbours, which
  are then conditioned on as they are observed.
* ``forecast`` mode: the selected steps are cut into blocks of ``horizon`` steps; each block is
  the last ``horizon`` steps of its own window, conditioned on the ``L - horizon`` steps before it
  (which may lie before the selection: the past is known when forecasting).

Evaluation points: the store's own ``target_mask`` when it has one (``use_targets``; e.g. the
ground/missing pair of AQI-36), else with ``eval_ratio`` that share of the observed entries of the
selected steps, drawn once over the whole selection with ``RandomState(eval_seed)``, so the same
points are hidden whatever the window length or stride; in forecast mode the observed entries of
the horizons. Each window's members have their own generators seeded from (seed, window start,
member), so the numbers depend on neither the batch nor the output chunking.

Output zarr, in the data's units, with the store's ``time`` (the selected steps) and ``feature``
coordinates (and ``station``/``variable`` when the store has them): ``samples (member, time,
feature)`` (given entries keep their values), ``median``, ``quantiles (quantile, time, feature)``,
``values`` (the truth, held-out targets included), ``observed_mask``, ``cond_mask``, ``eval_mask``
and ``window_start (time)``, the first time of the window each step came from. Scores as for stays
(:func:`pipelines.jobs.impute_core.score_imputation`), normalised and in physical units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.regions import RegionStore
from stdiff.datasets.splits import SERIES_SPLIT_CODES
from stdiff.datasets.windows import contiguous_runs
from stdiff.pipelines.engine.progress import progress_bar
from stdiff.pipelines.engine.runner import clip_report
from stdiff.pipelines.jobs.impute_core import (
    QUANTILES,
    check_budget_of,
    draw_members,
    evals_of,
    fingerprint,
    publish,
)

MASKS = ("observed_mask", "cond_mask", "eval_mask")


@dataclass(frozen=True)
class SeriesPlan:
    """Which window every output step comes from.

    ``times``: ``(N,)`` store time positions of the output steps (sorted); ``starts``: ``(W,)``
    window starts (store positions, sorted, distinct); ``owner``: ``(N,)`` index into ``starts``;
    ``length``: L; ``horizon``: the hidden tail of every window (forecast mode), else 0;
    seamless stitching: ``seam`` ``(W,)`` marks the windows drawn around seams (the others
    tile the series), ``tile`` ``(N,)`` the tile each step lies in. ``origin``: the store
    position of position 0 (a plan cut down to its span, :meth:`span`, keeps its store
    positions there: the member generators are keyed by them)."""

    times: np.ndarray
    starts: np.ndarray
    owner: np.ndarray
    length: int
    horizon: int = 0
    seam: np.ndarray | None = None
    tile: np.ndarray | None = None
    origin: int = 0

    def span(self) -> tuple[SeriesPlan, slice]:
        """The same plan relative to the steps its windows cover, and that slice of the store:
        the job reads only these steps, however long the series."""
        lo, hi = int(self.starts.min()), int(self.starts.max()) + self.length
        plan = replace(
            self, times=self.times - lo, starts=self.starts - lo, origin=self.origin + lo
        )
        return plan, slice(lo, hi)

    @property
    def offset(self) -> np.ndarray:
        """``(N,)`` position of each output step inside its window."""
        return self.times - self.starts[self.owner]


def impute_plan(positions: np.ndarray, n_time: int, length: int, stride: int) -> SeriesPlan:
    """Windows over every run of consecutive ``positions``; each step from its most central window."""
    if length > n_time:
        raise ValueError(f"window of {length} steps is longer than the series ({n_time} steps)")
    starts: list[int] = []
    for a, b in contiguous_runs(positions):
        if b - a <= length:  # one window, reaching into the neighbours when the run is short
            starts.append(min(max(0, a - (length - (b - a)) // 2), n_time - length))
            continue
        run = list(range(a, b - length + 1, stride))
        starts.extend(run if run[-1] == b - length else [*run, b - length])
    first = np.unique(np.asarray(starts, dtype=np.int64))
    times = np.asarray(positions, dtype=np.int64)
    target = times - (length - 1) / 2  # the start that puts each step at its window's centre
    right = np.clip(np.searchsorted(first, target), 0, len(first) - 1)
    left = np.clip(right - 1, 0, len(first) - 1)
    closer_left = np.abs(first[left] - target) <= np.abs(first[right] - target)
    owner = np.where(closer_left, left, right)
    inside = (times >= first[owner]) & (times < first[owner] + length)
    if not inside.all():  # pragma: no cover - guaranteed by the construction above
        raise AssertionError("a step is outside its window")
    return SeriesPlan(times, first, owner, length)


def seamless_plan(positions: np.ndarray, n_time: int, length: int) -> SeriesPlan:
    """Tiles of ``length`` steps over every run (the last one ending on the run's last step),
    then one window centred on every seam between neighbouring tiles, which owns the steps
    within ``length // 4`` of the seam; see :func:`draw_seamless`."""
    tiles = impute_plan(positions, n_time, length, length)
    times, half = tiles.times, max(1, length // 4)
    starts, owner = list(tiles.starts), tiles.owner.copy()
    for j in np.flatnonzero((np.diff(times) == 1) & (np.diff(tiles.owner) != 0)) + 1:
        p = int(times[j])  # the first step of the right-hand tile
        start = min(max(0, p - length // 2), n_time - length)
        band = (times >= max(p - half, start)) & (times < min(p + half, start + length))
        owner[band] = len(starts)
        starts.append(start)
    seam = np.arange(len(starts)) >= len(tiles.starts)
    return SeriesPlan(times, np.asarray(starts, dtype=np.int64), owner, length, 0, seam,
                      tiles.owner)  # fmt: skip


def forecast_plan(positions: np.ndarray, length: int, horizon: int) -> SeriesPlan:
    """Blocks of ``horizon`` selected steps, each the hidden tail of a window of ``length``."""
    if not 0 < horizon < length:
        raise ValueError(f"horizon must be in [1, {length - 1}] for windows of {length} steps")
    times = np.asarray(positions, dtype=np.int64)
    starts, owner = [], np.zeros(len(times), dtype=np.int64)
    j = 0
    for a, b in contiguous_runs(times):
        for block in range(a, b, horizon):
            end = min(block + horizon, b)
            start = end - length if end - block == horizon else b - length
            if start < 0:
                raise ValueError(
                    f"the horizon starting at step {block} has only {block} steps of history; "
                    f"forecast windows need {length - horizon}"
                )
            owner[j : j + end - block] = len(starts)
            starts.append(start)
            j += end - block
    return SeriesPlan(times, np.asarray(starts, dtype=np.int64), owner, length, horizon)


def select_steps(cfg, ds: xr.Dataset) -> np.ndarray:
    """Store time positions selected by ``cfg.split`` (the store's split codes), ``cfg.period``
    (inclusive dates) and ``cfg.max_steps`` (the first N)."""
    keep = np.ones(ds.sizes["time"], dtype=bool)
    if cfg.split != "all":
        if "split" not in ds:
            raise DataError(cfg.data, "the store has no split; use split=all or ingest it again")
        keep &= ds["split"].values == SERIES_SPLIT_CODES[cfg.split]
    if cfg.period:
        start, end = _period(cfg.period)
        t = ds.indexes["time"]
        keep &= np.asarray((t >= start) & (t < end + np.timedelta64(1, "D")))
    pos = np.flatnonzero(keep)
    pos = pos[: cfg.max_steps] if cfg.max_steps else pos
    if len(pos) == 0:
        raise ValueError(f"{cfg.data}: no time steps selected (split {cfg.split!r}, period "
                         f"{cfg.period}, max_steps {cfg.max_steps})")  # fmt: skip
    return pos


def _period(period) -> tuple[np.datetime64, np.datetime64]:
    """``[start, end]`` (inclusive dates) parsed, or a one-line error naming the key."""
    if len(period) != 2:
        raise ValueError(f"period must be [start, end], got {period}")
    try:
        start, end = (np.datetime64(str(d)) for d in period)
    except ValueError:
        raise ValueError(f"period {list(period)}: dates must read like 2016-03-01") from None
    if start > end:
        raise ValueError(f"period {list(period)}: the start is after the end")
    return start, end


def eval_points(cfg, ds: xr.Dataset, plan: SeriesPlan, observed: np.ndarray) -> np.ndarray:
    """``(N, K)`` bool evaluation points of the output steps (see the module docstring)."""
    target = None
    if cfg.use_targets and "target_mask" in ds:
        target = ds["target_mask"].values[plan.times].astype(bool)
    if cfg.mode == "forecast":
        shown = observed[plan.times]
        return shown | target if target is not None else shown
    if target is not None:
        if cfg.eval_ratio:
            raise ValueError(
                f"{cfg.data} defines its own evaluation points (target_mask); eval_ratio would "
                "hide more: leave it at 0, or set use_targets=false to hide a share instead"
            )
        return target
    hidden = np.zeros((len(plan.times), observed.shape[1]), dtype=bool)
    rs = np.random.RandomState(cfg.eval_seed)
    shown = observed[plan.times]
    if cfg.eval_ratio and cfg.eval_pattern == "block":
        return block_eval_mask(shown, cfg.eval_ratio, cfg.eval_block, rs)
    if cfg.eval_ratio:
        flat = hidden.reshape(-1)
        idx = np.flatnonzero(shown.reshape(-1))
        flat[rs.choice(idx, int(len(idx) * cfg.eval_ratio), replace=False)] = True
    return hidden


def block_eval_mask(
    observed: np.ndarray, ratio: float, block: int, rs: np.random.RandomState
) -> np.ndarray:
    """``(N, K)`` gaps of ``block`` consecutive steps of one feature (a sensor outage), drawn at
    uniform (feature, start) pairs until at least ``ratio`` of the ``observed`` entries are
    hidden (the last gap may overshoot by up to one block); only observed entries are hidden."""
    n, k = observed.shape
    if block > n:
        raise ValueError(f"eval_block {block} is longer than the {n} selected steps")
    hidden = np.zeros_like(observed, dtype=bool)
    goal, have = int(observed.sum() * ratio), 0
    while have < goal:
        f, t = rs.randint(k), rs.randint(n - block + 1)
        new = observed[t : t + block, f] & ~hidden[t : t + block, f]
        hidden[t : t + block, f] |= new
        have += int(new.sum())
    return hidden


def _template(ds: xr.Dataset, plan: SeriesPlan, cfg, quantiles, chunk: int) -> xr.Dataset:
    n, k, m = len(plan.times), ds.sizes["feature"], cfg.members

    def zeros(shape, dtype=np.float32):
        return da.zeros(shape, dtype=dtype, chunks=tuple(chunk if s == n else s for s in shape))

    tf = ("time", "feature")
    coords = {
        "member": np.arange(m),
        "quantile": np.asarray(quantiles),
        "time": ds["time"].values[plan.times],
        "feature": ds["feature"].values.astype(object),
    }
    coords |= {c: ("feature", ds[c].values.astype(object)) for c in ("station", "variable")
               if c in ds.coords}  # fmt: skip
    data = {
        "samples": (("member", *tf), zeros((m, n, k))),
        "median": (tf, zeros((n, k))),
        "quantiles": (("quantile", *tf), zeros((len(quantiles), n, k))),
        "values": (tf, zeros((n, k))),
        **{name: (tf, zeros((n, k), np.uint8)) for name in MASKS},
        "window_start": ("time", zeros((n,), ds["time"].dtype)),
    }
    return xr.Dataset(data, coords=coords)


def _chunk_data(raw, draws, plan, sel, starts_idx, cond_w, masks, quantiles, ds) -> xr.Dataset:
    """The output region of the steps ``sel`` from the draws ``(W, M, L, K)`` of windows
    ``starts_idx`` (physical units), given entries keeping their values."""
    where = np.searchsorted(starts_idx, plan.owner[sel])
    off = plan.offset[sel]
    phys = draws[where, :, off].transpose(1, 0, 2)  # (M, n, K)
    given = cond_w[where, off]  # (n, K)
    truth = raw[plan.times[sel]]
    phys = np.where(given[None], np.nan_to_num(truth)[None], phys).astype(np.float32)
    tf = ("time", "feature")
    q = np.quantile(phys, quantiles, axis=0).astype(np.float32)
    data = {
        "samples": (("member", *tf), phys),
        "median": (tf, np.median(phys, 0).astype(np.float32)),
        "quantiles": (("quantile", *tf), q),
        "values": (tf, truth),
        "observed_mask": (tf, masks["observed"][plan.times[sel]].astype(np.uint8)),
        "cond_mask": (tf, given.astype(np.uint8)),
        "eval_mask": (tf, masks["eval"][sel].astype(np.uint8)),
        "window_start": ("time", ds["time"].values[plan.starts[plan.owner[sel]]]),
    }
    return xr.Dataset(data)


def window_conditions(plan: SeriesPlan, cond: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``(W, L, K)`` bool conditioning masks of windows ``idx``: ``cond`` (store time) cut out,
    with the last ``horizon`` steps hidden in forecast mode."""
    w = np.stack([cond[s : s + plan.length] for s in plan.starts[idx]])
    if plan.horizon:
        w[:, plan.length - plan.horizon :] = False
    return w


def series_layout(cfg, ds: xr.Dataset, tcfg) -> tuple[SeriesPlan, int]:
    """The job's plan and its output chunk (``batch_size`` strides or horizons of steps; the
    windows of one chunk are drawn together), from the config and the checkpoint's window."""
    if cfg.max_stays:
        raise ValueError("max_stays applies to stays; a series selects steps with max_steps")
    length = _window_length(cfg, ds, tcfg)
    pos = select_steps(cfg, ds)
    if cfg.stride is not None and cfg.stitch == "seamless":
        raise ValueError("stride applies to stitch: central (seamless windows tile the series)")
    stride = cfg.stride or max(1, length // 2)
    if cfg.mode == "forecast":
        plan, step = forecast_plan(pos, length, cfg.horizon), cfg.horizon
    elif cfg.stitch == "seamless":
        plan, step = seamless_plan(pos, ds.sizes["time"], length), length
    else:
        plan, step = impute_plan(pos, ds.sizes["time"], length, stride), stride
    return plan, max(1, cfg.batch_size * step)


def _window_length(cfg, ds: xr.Dataset, tcfg) -> int:
    """The window ``L`` (``window``, else the checkpoint's ``data.window``), refused in one line
    naming the key when the checkpoint has none or it is longer than the store's series."""
    length = cfg.window or getattr(tcfg.data, "window", 0)
    if length < 2:
        raise ValueError(f"{cfg.checkpoint}: no window length; set window")
    n_time = ds.sizes["time"]
    if n_time < 2:
        raise DataError(cfg.data, f"the series has {n_time} time step; imputing needs at least 2")
    if length > n_time:
        given = "window" if cfg.window else f"data.window of {cfg.checkpoint}"
        raise DataError(
            cfg.data,
            f"the series has {n_time} time steps, fewer than the window of {length} steps "
            f"({given}); set window to at most {n_time} (e.g. --set window={n_time})",
        )
    return length


def _draw_windows(denoiser, raw, cond, plan, idx, mean, std, cfg, device, times) -> tuple:
    """``(W, M, L, K)`` samples in physical units of windows ``idx`` and their ``(W, L, K)``
    conditioning masks; non-finite samples abort the job before anything is published."""
    if plan.seam is not None:
        return draw_seamless(denoiser, raw, cond, plan, idx, (mean, std), cfg, device, times)
    cond_w = window_conditions(plan, cond, idx)
    block = np.stack([raw[s : s + plan.length] for s in plan.starts[idx]])  # (W, L, K)
    x_obs = np.nan_to_num((block - mean) / std)
    draws = _draw(denoiser, x_obs, cond_w, plan.starts[idx], cfg, device, times, 0, plan.origin)
    return draws * std + mean, cond_w


def _draw(
    denoiser, x_obs, cond_w, starts, cfg, device, times, stream: int, origin: int
) -> np.ndarray:
    """Normalised draws ``(W, M, L, K)`` of the windows at ``starts`` (``times``' positions;
    their generators are keyed by the store positions ``origin + starts``); refuses
    non-finite samples naming the windows."""
    x = torch.from_numpy(np.ascontiguousarray(x_obs, dtype=np.float32)).to(device)
    cmask = torch.from_numpy(cond_w.astype(np.float32)).to(device)
    keys = origin + starts
    draws = draw_members(denoiser, x, cmask, keys, cfg, device, stream).cpu().numpy()
    bad = ~np.isfinite(draws).reshape(len(starts), -1).all(1)
    if bad.any():
        raise FloatingPointError(
            f"non-finite samples for windows starting {times[starts[bad]][:5]}; the output was "
            "not published"
        )
    return draws


def draw_seamless(denoiser, raw, cond, plan, idx, stats, cfg, device, times) -> tuple:
    """Seamless stitching of windows ``idx`` (tiles and seam windows): the tiles are drawn as
    any window is; each seam window is then drawn with every selected step outside its band
    given, member by member, by that member's draw of the tile the step lies in, so member
    ``m`` continues across the seam from its own left-hand values to its own right-hand ones
    (an inpainting of the band). The seam windows draw from a second generator stream."""
    mean, std = stats
    seams = idx[plan.seam[idx]]
    under = [plan.tile[_selected(plan, plan.starts[w])[1]] for w in seams]
    tiles = np.unique(np.concatenate([idx[~plan.seam[idx]], *under]).astype(np.int64))
    cond_t = window_conditions(plan, cond, tiles)
    block = np.stack([raw[s : s + plan.length] for s in plan.starts[tiles]])
    tile_draws = _draw(denoiser, np.nan_to_num((block - mean) / std), cond_t, plan.starts[tiles],
                       cfg, device, times, 0, plan.origin)  # fmt: skip
    draws, cond_w = {}, {}
    for k, w in enumerate(tiles):
        draws[w], cond_w[w] = tile_draws[k], cond_t[k]
    if len(seams):
        x, cm = _seam_conditions(plan, seams, tiles, tile_draws, raw, cond, mean, std)
        seam_draws = _draw(denoiser, x, cm, plan.starts[seams], cfg, device, times, 1, plan.origin)
        for k, w in enumerate(seams):
            draws[w], cond_w[w] = seam_draws[k], cm[k]
    phys = np.stack([draws[w] for w in idx]) * std + mean
    return phys, np.stack([cond_w[w] for w in idx])


def _selected(plan: SeriesPlan, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The offsets in the window at ``start`` of the selected steps, and their output indices."""
    ts = np.arange(start, start + plan.length)
    j = np.clip(np.searchsorted(plan.times, ts), 0, len(plan.times) - 1)
    hit = plan.times[j] == ts
    return np.flatnonzero(hit), j[hit]


def _seam_conditions(plan, seams, tiles, tile_draws, raw, cond, mean, std) -> tuple:
    """``(S, M, L, K)`` values and ``(S, L, K)`` masks of the seam windows: observed values
    everywhere, and outside the band each member's own tile draws, given in full."""
    n, m = len(seams), tile_draws.shape[1]
    x = np.zeros((n, m, plan.length, raw.shape[1]), dtype=np.float32)
    cm = np.zeros((n, plan.length, raw.shape[1]), dtype=bool)
    where = {int(w): k for k, w in enumerate(tiles)}
    for a, w in enumerate(seams):
        s = int(plan.starts[w])
        x[a] = np.nan_to_num((raw[s : s + plan.length] - mean) / std)[None]
        cm[a] = cond[s : s + plan.length]
        offs, rows = _selected(plan, s)
        for off, row in zip(offs, rows, strict=True):
            if plan.owner[row] == w:
                continue  # the band: drawn here
            tile = int(plan.tile[row])
            x[a, :, off] = tile_draws[where[tile], :, s + off - plan.starts[tile]]
            cm[a, off] = True
    return x, cm


def run_series_imputation(cfg, ds, denoiser, tcfg, meta, device, progress=True) -> dict[str, Any]:
    """The series job (see the module docstring); called by ``run_imputation`` for a store with
    dims ``(time, feature)``. Returns the same summary as for stays, with ``windows`` and
    ``time_steps`` in place of ``stays``."""
    plan, chunk = series_layout(cfg, ds, tcfg)
    plan, span = plan.span()
    ds = ds.isel(time=span)  # lazy: only the steps the windows cover are read, not the series
    observed = ds["observed_mask"].values.astype(bool)
    hidden = eval_points(cfg, ds, plan, observed)
    cond = observed.copy()
    if cfg.mode == "impute":
        cond[plan.times] &= ~hidden
    raw = ds["values"].values.astype(np.float32)  # (T, K), NaN = missing
    mean = np.asarray(meta["stats"]["values_mean"], dtype=np.float32)
    std = np.asarray(meta["stats"]["values_std"], dtype=np.float32)
    k = ds.sizes["feature"]  # the samples twice on disk while the members are linked
    check_budget_of(cfg, len(plan.times), k, cfg.batch_size * plan.length * k,
                    2 if cfg.link_members else 1)  # fmt: skip
    n_chunks = -(-len(plan.times) // chunk)
    bad = [c for c in cfg.chunks or [] if not 0 <= c < n_chunks]
    if bad:
        raise ValueError(f"chunks {bad} are out of range: this job has {n_chunks} chunks")
    out, t0 = Path(cfg.out), time.perf_counter()
    store = RegionStore(out, fingerprint(cfg, meta), n_chunks, "impute", cfg.overwrite)
    store.open(_template(ds, plan, cfg, QUANTILES, chunk))
    todo = [c for c in (cfg.chunks if cfg.chunks is not None else range(n_chunks))
            if not store.done(c)]  # fmt: skip
    masks, times = {"observed": observed, "eval": hidden}, ds["time"].values
    bar = progress_bar(len(todo), enabled=progress, unit="batch")
    for c in todo:
        sel = np.arange(c * chunk, min(len(plan.times), (c + 1) * chunk))
        idx = np.unique(plan.owner[sel])  # the windows these steps come from
        phys, cond_w = _draw_windows(denoiser, raw, cond, plan, idx, mean, std, cfg, device, times)
        data = _chunk_data(raw, phys, plan, sel, idx, cond_w, masks, QUANTILES, ds)
        if not store.write(c, data, {"time": slice(int(sel[0]), int(sel[-1]) + 1)}):
            break  # an identical run published the output meanwhile
        bar.update(1)
    bar.close()
    result: dict[str, Any] = {
        "out": str(out), "windows": len(plan.starts), "time_steps": len(plan.times),
        "window": plan.length, "members": cfg.members, "sampler": cfg.sampler,
        "steps": cfg.steps, "evals": evals_of(cfg), "seconds": time.perf_counter() - t0,
        "device": str(device), "chunks": n_chunks, "computed": todo, "pending": store.pending(),
    }  # fmt: skip
    clip_report(denoiser, cfg.checkpoint, result)
    link = cfg.link_members and plan.seam is None and len(plan.starts) > 1 and cfg.members > 1
    return publish(store, out, cfg, meta, result, bool(hidden.any()), mean, std, link)
