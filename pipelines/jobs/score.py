"""``stdiff score``: forecasts from ``stdiff forecast`` scored against the data, WeatherBench 2
style, beside the baselines, with plots.

Systems: every forecast store given (ensembles and the deterministic model), plus
* persistence: the state at the initial time, for every lead;
* climatology: the mean of the climatology period's states at the same hour of the day within
  ``window_days`` of the same day of the year (a single year of training data is noisy, so the
  window is wide; WB2 uses 30 years and a 61-day window).

Scores per variable (and level) and lead, area-weighted (``datasets.weather.latitude_weights``,
from cell bounds) and averaged over initial times: ensemble-mean RMSE, fair CRPS (for a single
member it is the MAE), the spread-skill ratio and the rank histogram (ensembles, pooled over
leads from ``rank_from_hours`` on). Outputs in the ``out`` folder: ``scores.json``,
``scores.csv`` and PNGs (truth / ensemble mean / spread maps of one case; CRPS and RMSE against
lead for all systems; the rank histogram).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.atomic import atomic_path, staged_files, write_json
from stdiff.datasets.errors import DataError
from stdiff.datasets.outputs import claim_folder
from stdiff.datasets.store import open_store, require_kind
from stdiff.datasets.weather import latitude_weights, lon_onto
from stdiff.pipelines.metrics.scores import (
    ensemble_mean_rmse,
    fair_crps,
    paired_difference,
    rank_histogram,
    spread_skill_ratio,
)

#: the baselines scored beside the forecasts, under these names
BASELINES = ("persistence", "climatology")


@dataclass(frozen=True)
class ScoreConfig:
    """forecasts: name -> forecast store (stdiff's or WeatherBench 2 layout, any model's);
    data: the weather store with the truth; climatology_period: inclusive dates the climatology
    is computed from; None: every time of the data before the first initial time. A period
    holding any verified (valid) time is refused: the baseline would have seen the answer."""

    forecasts: dict[str, str]
    data: str
    out: str
    climatology_period: list[str] | None = None
    window_days: int = 15
    rank_from_hours: float = 24.0

    def __post_init__(self) -> None:
        for name in self.forecasts:
            if name in BASELINES:
                raise ValueError(f"--forecast {name}=...: {name!r} is the name of a baseline "
                                 "scored beside every forecast; give the forecast another NAME")  # fmt: skip


# Names other models' forecast stores use -> the internal ones: WeatherBench 2 (``time`` is the
# initial time, ``prediction_timedelta`` the lead), CF's ``realization``, ECMWF's ``number``.
EXTERNAL_NAMES = {"time": "init_time", "prediction_timedelta": "lead_time", "latitude": "lat",
                  "longitude": "lon", "realization": "member", "number": "member"}  # fmt: skip


def to_internal(fc: xr.Dataset, data: xr.Dataset, where: str) -> xr.Dataset:
    """A forecast store in any supported layout (``EXTERNAL_NAMES``; stdiff's own) with the
    internal names ``(init_time, [member], lead_time, [level], lat, lon)``, a ``valid_time``, and
    its grid put in the data's order (longitudes mapped onto the data's convention,
    ``datasets.weather.lon_onto``, so a grid cut at 0 is joined up again); a grid that
    is not the data's raises ``DataError`` naming ``where``."""
    if "init_time" not in fc.dims:
        fc = fc.rename({k: v for k, v in EXTERNAL_NAMES.items() if k in fc.dims or k in fc.coords})
    missing = [d for d in ("init_time", "lead_time", "lat", "lon") if d not in fc.dims]
    if missing:
        raise DataError(
            where,
            f"not a gridded forecast store: no {missing} dimension(s); expected stdiff's "
            "(init_time, member, lead_time, lat, lon) or WeatherBench 2's (time, "
            "[realization|number], prediction_timedelta, latitude, longitude)",
        )
    if "valid_time" not in fc.coords:
        fc = fc.assign_coords(valid_time=fc["init_time"] + fc["lead_time"])
    lon = lon_onto(fc["lon"].values, data["lon"].values)  # e.g. [0, 360) onto -10..2
    fc = fc.assign_coords(lon=("lon", lon, fc["lon"].attrs)).sortby(["lat", "lon"])
    for d in ("lat", "lon"):
        a, b = np.sort(fc[d].values), np.sort(data[d].values)
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-4):
            raise DataError(
                where,
                f"its {d} ({len(a)} values, {a[0]:g}..{a[-1]:g}) is not the data's grid "
                f"({len(b)} values, {b[0]:g}..{b[-1]:g}); regrid it first",
            )
    return fc.sel(lat=data["lat"].values, lon=data["lon"].values, method="nearest").assign_coords(
        lat=data["lat"], lon=data["lon"]
    )


def truth_at(data: xr.Dataset, fc: xr.Dataset, var: str) -> xr.DataArray:
    """The data at the forecast's valid times ``(init_time, lead_time, ...)``."""
    valid = fc["valid_time"].values
    times = data.indexes["time"]
    pos = times.get_indexer(pd.DatetimeIndex(valid.ravel()))
    if (pos < 0).any():
        raise DataError(
            "score", f"{int((pos < 0).sum())} valid times of the forecast are not in the data"
        )
    arr = data[var].isel(
        time=xr.DataArray(pos.reshape(valid.shape), dims=("init_time", "lead_time"))
    )
    return arr.drop_vars("time", errors="ignore").assign_coords(
        init_time=fc["init_time"], lead_time=fc["lead_time"]
    )


def persistence(data: xr.Dataset, fc: xr.Dataset, var: str) -> xr.DataArray:
    """The state at each initial time, repeated over the leads."""
    at_init = data[var].sel(time=fc["init_time"].values).rename(time="init_time")
    at_init = at_init.assign_coords(init_time=fc["init_time"])
    return at_init.expand_dims(lead_time=fc["lead_time"]).transpose("init_time", "lead_time", ...)


def climatology(
    data: xr.Dataset, fc: xr.Dataset, var: str, period: list[str], window_days: int
) -> xr.DataArray:
    """Mean over the period's states at the same hour within ``window_days`` of the same day of
    the year (circular in the day of the year) as each valid time."""
    clim = data[var].sel(time=slice(period[0], period[1]))
    if clim.sizes["time"] == 0:
        raise DataError("score", f"climatology period {period} selects no data")
    t = clim.indexes["time"]
    doy, hour = t.day_of_year.values, t.hour.values
    values = np.asarray(clim.values, dtype=np.float64)
    valid = pd.DatetimeIndex(fc["valid_time"].values.ravel())
    out = np.empty((len(valid), *values.shape[1:]))
    cache: dict[tuple[int, int], np.ndarray] = {}
    for i, (d, h) in enumerate(zip(valid.day_of_year, valid.hour, strict=True)):
        if (d, h) not in cache:
            dist = np.abs(doy - d)
            dist = np.minimum(dist, 365 - dist)
            sel = (dist <= window_days) & (hour == h)
            if not sel.any():
                raise DataError("score", f"no climatology data at hour {h} near day {d}")
            cache[(d, h)] = values[sel].mean(0)
        out[i] = cache[(d, h)]
    shape = (*fc["valid_time"].shape, *values.shape[1:])
    dims = ("init_time", "lead_time", *clim.dims[1:])
    return xr.DataArray(out.reshape(shape), dims=dims, coords={
        "init_time": fc["init_time"], "lead_time": fc["lead_time"], **{d: clim[d] for d in clim.dims[1:]}
    })  # fmt: skip


def _lead_hours(fc: xr.Dataset) -> np.ndarray:
    return fc["lead_time"].values / np.timedelta64(1, "h")


def score_system(
    fc: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray, rank_from: float
) -> dict[str, Any]:
    """Scores per lead of one system (``member`` dim for an ensemble); ``crps_by_init`` (a
    DataArray, not for JSON) holds the CRPS of each initial time, for paired comparisons."""
    ens = "member" in fc.dims and fc.sizes["member"] > 1
    fc1 = fc if ens else (fc.isel(member=0) if "member" in fc.dims else fc)
    out: dict[str, Any] = {"rmse": ensemble_mean_rmse(fc1, truth, weights)}
    if ens:
        by_init = fair_crps(fc, truth, weights, time="-")  # keeps init_time
        out["spread_skill"] = spread_skill_ratio(fc, truth, weights)
        hours = fc["lead_time"].values / np.timedelta64(1, "h")
        late = np.flatnonzero(hours >= rank_from)
        late = late if len(late) else np.arange(len(hours))  # short forecasts: every lead
        keep, t = fc.isel(lead_time=late), truth.isel(lead_time=late)
        out["rank_histogram"] = rank_histogram(keep, t, xr.ones_like(t) * (weights > 0)).tolist()
    else:
        by_init = abs(fc1 - truth).weighted(weights).mean(["lat", "lon"])
    out["crps"] = by_init.mean("init_time")
    result = {
        k: (v if isinstance(v, list) else np.atleast_1d(v.values).tolist()) for k, v in out.items()
    }
    return {**result, "crps_by_init": by_init}


def paired_to_first(scores: dict[str, dict[str, Any]], first: str) -> None:
    """Pop each system's ``crps_by_init`` and add ``crps_vs_first``: its CRPS difference to
    ``first``'s, paired over initial times, in % of ``first``'s per lead, with the half-width of
    the 95 % Student-t interval (``metrics.scores.paired_difference``); needs 2 initial times."""
    by_init = {n: s.pop("crps_by_init") for n, s in scores.items()}
    ref = by_init[first]
    if ref.sizes.get("init_time", 0) < 2:
        return
    dims = ["init_time", *[d for d in ref.dims if d != "init_time"]]
    base = ref.transpose(*dims).values
    scale = 100 / base.mean(0)
    for name, crps in by_init.items():
        if name != first:
            mean, half = paired_difference(crps.transpose(*dims).values, base)
            scores[name]["crps_vs_first"] = {"against": first, "percent": (mean * scale).tolist(),
                                             "half_width": (half * scale).tolist()}  # fmt: skip


def claim_scores_folder(out: str | Path, inputs: list[str]) -> None:
    """``--out`` is absent, empty or an earlier scores folder, and apart from every input."""
    for given in inputs:
        a, b = Path(out).resolve(), Path(given).resolve()
        if a == b or b in a.parents or a in b.parents:
            raise ValueError(f"--out {out}: overlaps the input {given}; choose another folder")
    claim_folder(out, ("scores.json",), "scores folder", "--out", allow_existing=True)


def run_scoring(cfg: ScoreConfig) -> dict[str, Any]:
    """Score every forecast and the baselines; write scores, CSV and plots to ``cfg.out``."""
    if not cfg.forecasts:
        raise ValueError("forecasts: give at least one forecast store")
    claim_scores_folder(cfg.out, [cfg.data, *cfg.forecasts.values()])
    data = open_store(cfg.data)
    require_kind(data, cfg.data, "weather", ())
    fcs = {
        name: to_internal(_open_forecast(path), data, path) for name, path in cfg.forecasts.items()
    }
    ref = next(iter(fcs.values()))
    for name, fc in fcs.items():
        if not (np.array_equal(fc["init_time"].values, ref["init_time"].values)
                and np.array_equal(fc["lead_time"].values, ref["lead_time"].values)):  # fmt: skip
            raise ValueError(
                f"forecast {name!r} has other initial times or leads than {next(iter(fcs))!r}"
            )
    period = _climatology_period(cfg, data, ref)
    weights = latitude_weights(data["lat"])
    variables = [v for v in ref.data_vars if v in data]
    if not variables:
        raise DataError(
            cfg.data, f"none of the forecast variables {list(ref.data_vars)} is in the data"
        )
    result: dict[str, Any] = {
        "lead_hours": _lead_hours(ref).tolist(),
        "inits": int(ref.sizes["init_time"]),
        "climatology_period": period,
        "scores": {},
    }
    for v in variables:
        truth = truth_at(data, ref, v).load()
        systems = {name: fc[v].load() for name, fc in fcs.items()}
        systems["persistence"] = persistence(data, ref, v).load()
        systems["climatology"] = climatology(data, ref, v, period, cfg.window_days)
        levels = truth["level"].values.tolist() if "level" in truth.dims else [None]
        filled = data.get(f"{v}_filled")  # cells with no data in the source (ingest filled them)
        for lev in levels:  # one entry per variable and level: "t@850"
            key, pick = (v, {}) if lev is None else (f"{v}@{lev:g}", {"level": lev})
            w = weights if filled is None else weights * (1 - filled.sel(pick).astype(float))
            result["scores"][key] = {
                n: score_system(f.sel(pick), truth.sel(pick), w, cfg.rank_from_hours)
                for n, f in systems.items()
            }
            paired_to_first(result["scores"][key], next(iter(cfg.forecasts)))
    with staged_files(cfg.out) as out:  # all three outputs or none
        write_json(out / "scores.json", result)
        _csv(out / "scores.csv", result)
        _plots(out, result, fcs, data, variables[0])
    return result


def _climatology_period(cfg: ScoreConfig, data: xr.Dataset, fc: xr.Dataset) -> list[str]:
    """The climatology period: the given one, refused when it holds a verified time, or the
    data before the first initial time."""
    times = data.indexes["time"]
    first_valid = pd.Timestamp(fc["valid_time"].values.min())
    if cfg.climatology_period is None:
        before = times[times < pd.Timestamp(fc["init_time"].values.min())]
        if len(before) == 0:
            raise DataError(cfg.data, "no data before the first initial time for the climatology; "
                            "give --climatology-period START:END outside the verified times")  # fmt: skip
        return [str(before[0])[:19], str(before[-1])[:19]]
    start, end = (pd.Timestamp(t) for t in cfg.climatology_period)
    end_of_day = end + pd.Timedelta(days=1) if end == end.normalize() else end
    valid = pd.DatetimeIndex(fc["valid_time"].values.ravel())
    if ((valid >= start) & (valid < end_of_day)).any():
        raise ValueError(
            f"--climatology-period {cfg.climatology_period[0]}:{cfg.climatology_period[1]} holds "
            f"verified times (the forecasts verify from {str(first_valid)[:16]}); choose a period "
            "without them, e.g. the training period"
        )
    return list(cfg.climatology_period)


def _open_forecast(path: str) -> xr.Dataset:
    p = Path(path)
    if not (p / "zarr.json").is_file() and not (p / ".zgroup").is_file():
        raise DataError(p, "not a zarr store (no zarr.json or .zgroup); give a forecast store")
    return xr.open_zarr(p, consolidated=None if (p / ".zgroup").is_file() else False)


def _csv(path: Path, result: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variable", "system", "lead_hours", "rmse", "crps", "spread_skill",
                    "crps_vs_first_percent", "crps_vs_first_half_width"])  # fmt: skip
        for v, systems in result["scores"].items():
            for name, s in systems.items():
                vs = s.get("crps_vs_first", {})
                for i, h in enumerate(result["lead_hours"]):
                    ssr = s["spread_skill"][i] if "spread_skill" in s else ""
                    pair = [vs["percent"][i], vs["half_width"][i]] if vs else ["", ""]
                    w.writerow([v, name, h, s["rmse"][i], s["crps"][i], ssr, *pair])


def _plots(
    out: Path, result: dict[str, Any], fcs: dict[str, xr.Dataset], data: xr.Dataset, var: str
) -> None:
    """Plots of ``var`` (its first level where it has levels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)

    hours = result["lead_hours"]
    entry = next(k for k in result["scores"] if k.split("@")[0] == var)  # "t@850" or "air"
    scores = result["scores"][entry]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, s in scores.items():
        for ax, key in zip(axes, ("crps", "rmse"), strict=True):
            ax.plot(hours, s[key], marker="o", ms=3, label=name)
    for ax, title in zip(
        axes, ("CRPS (fair; MAE for one member)", "ensemble-mean RMSE"), strict=True
    ):
        ax.set_xlabel("lead (h)")
        ax.set_title(f"{entry}: {title}", fontsize=9)
    axes[0].legend(fontsize=7)
    save(fig, "scores_vs_lead.png")

    ens = [n for n, fc in fcs.items() if fc.sizes.get("member", 1) > 1]
    if not ens:
        return
    hist = np.asarray(scores[ens[0]]["rank_histogram"], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(np.arange(len(hist)), hist / hist.mean())
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("rank of the truth among the members")
    ax.set_ylabel("frequency / flat")
    ax.set_title(f"{ens[0]}: rank histogram (leads >= 24 h)", fontsize=9)
    save(fig, "rank_histogram.png")

    fc = fcs[ens[0]][var].isel(init_time=0)
    lead = min(fc.sizes["lead_time"] - 1, 3)
    one = fc.isel(lead_time=lead)
    truth = truth_at(data, fcs[ens[0]], var).isel(init_time=0, lead_time=lead)
    if "level" in one.dims:
        one, truth = one.isel(level=0), truth.isel(level=0)
    panels = [
        ("truth", truth),
        ("ensemble mean", one.mean("member")),
        ("ensemble spread (std)", one.std("member")),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    vmin, vmax = float(truth.min()), float(truth.max())
    for ax, (title, a) in zip(axes, panels, strict=True):
        kw = {"vmin": vmin, "vmax": vmax} if title != "ensemble spread (std)" else {"cmap": "magma"}
        im = ax.pcolormesh(a["lon"], a["lat"], a.values, shading="auto", **kw)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(
            f"{title}, +{hours[lead]:g} h from {str(fc['init_time'].values)[:13]}", fontsize=8
        )
    save(fig, "case_maps.png")
