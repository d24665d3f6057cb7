"""The weather forecasting task, shared by training (``task: forecast``) and ``stdiff forecast``,
so that both build the network's inputs the same way (GenCast-style; Price et al. 2024):

* the target is the next state, or (``residual``) its change from the current state divided by the
  standard deviation of one-step changes (``<var>_diff_std``), which puts every channel of the
  increment on a unit scale;
* the condition is ``Condition(context=[previous states | static fields], scalars=[lead (days),
  hour sin/cos, day-of-year sin/cos of the target time])``: ``context`` previous states
  (normalised by ``<var>_mean/_std``) concatenated as channels with the static fields of the grid
  (``datasets.weather.static_fields``), and the lead time and calendar as scalar conditions.

Channels are the variables in order, a variable's ``level`` dim flattened into them
(``datasets.windows.ForecastWindows``); :class:`WeatherLayout` records them with their statistics,
the grid and the time step, and travels in the checkpoint's metadata so a forecast refuses data
that do not match.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pandas.tseries.frequencies import to_offset

from stdiff.datasets.errors import DataError
from stdiff.datasets.store import open_store, require_kind
from stdiff.datasets.weather import calendar_features, is_global_lon, static_fields
from stdiff.datasets.windows import ForecastWindows
from stdiff.diffusion.conditioning import Condition
from stdiff.diffusion.losses import fair_crps
from stdiff.diffusion.rng import randn_like
from stdiff.pipelines.tasks.base import TaskData, store_metadata

NUM_SCALARS = 5  # lead (days), hour sin/cos, day-of-year sin/cos
HOURS_PER_MONTH = 730.5  # 365.25 * 24 / 12: the nominal length of a calendar month
_MONTHS_PER_OFFSET = (("SemiMonth", 0), ("Month", 1), ("Quarter", 3), ("Year", 12))


@dataclass(frozen=True)
class TimeStep:
    """A model's time step: a fixed duration of ``hours``, or (``freq``, a pandas frequency such
    as ``"MS"``, month starts) a calendar step of varying length whose ``hours`` are nominal
    (730.5 h a month). Valid times of a calendar step follow the calendar (:meth:`after`)."""

    hours: float
    freq: str = ""

    @property
    def months(self) -> int:
        """Calendar months per step; 0 for a fixed step."""
        if not self.freq:
            return 0
        offset = to_offset(self.freq)
        name = type(offset).__name__
        return next((m * offset.n for key, m in _MONTHS_PER_OFFSET if key in name), 0)

    def times(self, n: int) -> TimeStep:
        """``n`` steps as one step."""
        freq = (to_offset(self.freq) * n).freqstr if self.freq else ""
        return TimeStep(self.hours * n, freq)

    def after(self, init: Any, k: Any) -> np.ndarray:
        """The times ``k`` (an int or an array of ints) steps after ``init``, datetime64[ns]."""
        ks = np.atleast_1d(np.asarray(k, dtype=np.int64))
        t0 = pd.Timestamp(init)
        if self.freq:
            offset = to_offset(self.freq)
            out = [t0 + int(j) * offset for j in ks]
        else:
            out = [t0 + pd.Timedelta(hours=self.hours * int(j)) for j in ks]
        return np.asarray(out, dtype="datetime64[ns]")

    def describe(self) -> str:
        if self.months:
            return f"{self.months} month{'s' * (self.months > 1)} ({self.freq}, a calendar step)"
        return f"{self.hours:g} h"


def _axis(values) -> str:
    """A grid axis in a few words: ``37 values, -90..90``."""
    v = np.asarray(values, dtype=float)
    return f"{v.size} values, {v.min():g}..{v.max():g}" if v.size else "0 values"


def infer_time_step(times: pd.DatetimeIndex, where: str = "data") -> TimeStep:
    """The step of regular ``times``: monthly, quarterly or yearly calendars (pandas'
    ``infer_freq``) as calendar steps, anything else as the first difference in hours."""
    if len(times) < 2:
        raise DataError(where, "needs at least 2 times to know the time step")
    if len(times) >= 3:
        with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return offsets
            warnings.simplefilter("ignore")
            freq = pd.infer_freq(times)
        if freq is not None:
            step = TimeStep(0.0, to_offset(freq).freqstr)
            if step.months:
                return TimeStep(step.months * HOURS_PER_MONTH, step.freq)
    return TimeStep(float((times[1] - times[0]) / pd.Timedelta(hours=1)))


_UNITS: dict[str, tuple[Literal["hours", "months", "steps"], float]] = {
    "step": ("steps", 1), "month": ("months", 1), "mo": ("months", 1), "year": ("months", 12),
    "y": ("months", 12), "week": ("hours", 168), "w": ("hours", 168), "day": ("hours", 24),
    "d": ("hours", 24), "hour": ("hours", 1), "h": ("hours", 1), "minute": ("hours", 1 / 60),
    "min": ("hours", 1 / 60), "m": ("hours", 1 / 60),
}  # fmt: skip
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(" + "|".join(_UNITS) + r")s?\s*")
DURATION_HELP = "72h, 3d, 90m (minutes), 3steps or 3months"


def parse_duration(text: str, flag: str) -> tuple[float, Literal["hours", "months", "steps"]]:
    """``"72h"`` -> ``(72, "hours")``, ``"3months"`` -> ``(3, "months")``, ``"2y"`` ->
    ``(24, "months")``, ``"4steps"`` -> ``(4, "steps")``; ``flag`` names the option in errors."""
    m = _DURATION.fullmatch(str(text).lower())
    if not m:
        raise ValueError(f"{flag} {text!r} is not a duration like {DURATION_HELP}")
    kind, factor = _UNITS[m[2]]
    return float(m[1]) * factor, kind


def _whole(x: float) -> int | None:
    return round(x) if x > 0 and abs(x - round(x)) < 1e-9 else None


def lead_steps(text: str, step: TimeStep, flag: str = "--lead") -> int:
    """How many model steps the lead ``text`` is: in steps, in calendar months or years on a
    calendar step, in fixed units (h, d, ...) on a fixed step; refused otherwise, naming
    ``flag`` and the model's step."""
    value, kind = parse_duration(text, flag)
    if kind == "steps":
        n = _whole(value)
    elif kind == "months":
        if not step.months:
            raise ValueError(f"{flag} {text}: months and years need a calendar (monthly, "
                             f"quarterly or yearly) step; this model steps {step.describe()}, "
                             "so give hours, days or steps")  # fmt: skip
        n = _whole(value / step.months)
    else:
        if step.months:
            raise ValueError(f"{flag} {text}: this model steps {step.describe()}, of varying "
                             f"length; give the lead in steps or months, e.g. {flag} 3steps or "
                             f"{flag} {3 * step.months}months")  # fmt: skip
        n = _whole(value / step.hours)
    if n is None:
        raise ValueError(f"{flag} {text} is not a positive whole number of the model's steps "
                         f"({step.describe()})")  # fmt: skip
    return n


@dataclass(frozen=True)
class WeatherLayout:
    """Channels, their statistics, the grid and the time step of a weather model."""

    variables: list[str]
    channels: list[str]  # "air" or "t@850" per channel
    mean: list[float]
    std: list[float]
    diff_std: list[float]
    lat: list[float]
    lon: list[float]
    step_hours: float
    context: int = 2
    residual: bool = True
    # Whether the grid goes all the way round in longitude (``is_global_lon`` of ``lon``), so the
    # networks pad it circularly; None in checkpoints written before it was recorded.
    periodic_lon: bool | None = None
    # pandas frequency of a calendar step ("MS": month starts; step_hours is then nominal);
    # "" for a fixed step (and in checkpoints written before it was recorded)
    step_freq: str = ""

    @property
    def step(self) -> TimeStep:
        return TimeStep(self.step_hours, self.step_freq)

    @property
    def periodic(self) -> bool:
        """Pad longitude circularly: recorded, or decided from ``lon`` for older checkpoints."""
        return is_global_lon(self.lon) if self.periodic_lon is None else self.periodic_lon

    def net_params(self, autoencoder: bool = False) -> dict[str, Any]:
        """The network arguments that follow from the layout (a DiT, or the latent codec's
        autoencoder): channel counts, scalar conditions, and circular longitude padding for
        global grids only."""
        if autoencoder:
            return {"in_channels": self.num_channels, "periodic_lon": self.periodic}
        return {
            "in_channels": self.num_channels,
            "context_channels": self.context_channels,
            "num_scalars": NUM_SCALARS,
            "scalar_scale": 100.0,
            "periodic_lon": self.periodic,
        }

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def static_channels(self) -> int:
        return 4  # lat/lon sin/cos

    @property
    def context_channels(self) -> int:
        return self.context * self.num_channels + self.static_channels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_store(
        cls,
        ds: xr.Dataset,
        variables: list[str] | None,
        context: int = 2,
        residual: bool = True,
        where: str | Path | None = None,
    ) -> WeatherLayout:
        """From a weather store of ``stdiff ingest`` (statistics stored beside the data);
        ``where`` (the store's path) is what its errors name."""
        where = where or ds.attrs.get("source", "weather store")
        if variables is None:
            variables = [
                v
                for v in ds.data_vars
                if "time" in ds[v].dims and {"lat", "lon"} <= set(ds[v].dims)
            ]
        channels, mean, std, dstd = [], [], [], []
        for v in variables:
            if v not in ds:
                raise DataError(
                    where, f"variable {v!r} is absent; variables are {list(ds.data_vars)}"
                )
            for stat in ("mean", "std", "diff_std"):
                if f"{v}_{stat}" not in ds:
                    raise DataError(
                        where, f"no {v}_{stat} statistics; ingest it with --kind weather"
                    )
            levels = ds[v]["level"].values.tolist() if "level" in ds[v].dims else [None]
            for i, lev in enumerate(levels):
                channels.append(v if lev is None else f"{v}@{lev:g}")
                for out, stat in ((mean, "mean"), (std, "std"), (dstd, "diff_std")):
                    s = np.atleast_1d(np.asarray(ds[f"{v}_{stat}"].values, dtype=np.float64))
                    out.append(float(s[i] if s.size > 1 else s[0]))
        step = infer_time_step(ds.indexes["time"], where)
        return cls(
            variables=list(variables),
            channels=channels,
            mean=mean,
            std=std,
            diff_std=dstd,
            lat=ds["lat"].values.astype(float).tolist(),
            lon=ds["lon"].values.astype(float).tolist(),
            step_hours=step.hours,
            step_freq=step.freq,
            context=context,
            residual=residual,
            periodic_lon=is_global_lon(ds["lon"].values),
        )

    def check(self, other: WeatherLayout, where: str) -> None:
        """Refuse data laid out differently from the model's (variables, levels, grid, step)."""
        if self.channels != other.channels:
            raise DataError(
                where, f"channels {other.channels} differ from the checkpoint's {self.channels}"
            )
        fix = "give data on the model's grid (e.g. stdiff ingest --coarsen N) or train on this one"
        if len(self.lat) != len(other.lat) or not np.allclose(self.lat, other.lat):
            raise DataError(
                where,
                f"latitudes differ from the checkpoint's grid (here {_axis(other.lat)}; "
                f"trained {_axis(self.lat)}); {fix}",
            )
        if len(self.lon) != len(other.lon) or not np.allclose(self.lon, other.lon):
            same = len(self.lon) == len(other.lon) and np.allclose(
                np.sort(np.mod(self.lon, 360)), np.sort(np.mod(other.lon, 360))
            )
            hint = (
                " (the same columns in another order: the model was trained on a store written "
                "with another longitude convention; ingest the data with the same stdiff version)"
                if same
                else f" (here {_axis(other.lon)}; trained {_axis(self.lon)}); {fix}"
            )
            raise DataError(where, f"longitudes differ from the checkpoint's grid{hint}")
        if self.step_hours != other.step_hours or self.step_freq != other.step_freq:
            raise DataError(
                where,
                f"time step {other.step.describe()} differs from the checkpoint's "
                f"{self.step.describe()}",
            )

    def static(self) -> torch.Tensor:
        """``(4, lat, lon)`` static fields of the grid."""
        grid = xr.Dataset(coords={"lat": self.lat, "lon": self.lon})
        fields = static_fields(grid)
        return torch.from_numpy(
            np.stack([fields[k].values for k in fields.data_vars]).astype(np.float32)
        )

    def scale(self, device=None) -> torch.Tensor:
        """``(C, 1, 1)``: residual units -> normalised-state units (``diff_std / std``)."""
        s = (
            np.asarray(self.diff_std) / np.asarray(self.std)
            if self.residual
            else np.ones(self.num_channels)
        )
        return torch.tensor(s, dtype=torch.float32, device=device)[:, None, None]


def time_scalars(target_times: np.ndarray, lead_hours: np.ndarray) -> torch.Tensor:
    """``(B, 5)``: lead in days and the calendar features of the target times."""
    cal = calendar_features(
        xr.Dataset(coords={"time": np.asarray(target_times, dtype="datetime64[ns]")})
    )
    cols = [np.asarray(lead_hours, dtype=np.float32) / 24.0]
    cols += [cal[k].values for k in ("hour_sin", "hour_cos", "doy_sin", "doy_cos")]
    return torch.from_numpy(np.stack(cols, axis=1).astype(np.float32))


def condition(history: torch.Tensor, static: torch.Tensor, scalars: torch.Tensor) -> Condition:
    """``history`` ``(B, context, C, H, W)`` normalised states (oldest first)."""
    b = history.shape[0]
    ctx = torch.cat([history.flatten(1, 2), static.to(history)[None].expand(b, -1, -1, -1)], dim=1)
    return Condition(context=ctx, scalars=scalars.to(history.device))


def forecast_batch(layout: WeatherLayout, times: np.ndarray, leads: list[int]):
    """``to_batch`` for ``ForecastWindows`` items: one lead per sample drawn from ``leads``; the
    target is the residual from the last context state (``residual``) or the state itself."""
    static = layout.static()

    def to_batch(batch: dict, gen: torch.Generator):
        ctx, target = batch["context"], batch["target"]  # (B, ctx, C, H, W), (B, nL, C, H, W)
        b = ctx.shape[0]
        pick = torch.randint(len(leads), (b,), generator=gen, device=gen.device).to(ctx.device)
        tgt = target[torch.arange(b, device=ctx.device), pick]  # (B, C, H, W)
        lead_steps = torch.tensor(leads, device=ctx.device)[pick]
        anchor = batch["time"].cpu().numpy()
        target_times = times[anchor + lead_steps.cpu().numpy()]
        scal = time_scalars(target_times, lead_steps.cpu().numpy() * layout.step_hours)
        x0 = (tgt - ctx[:, -1]) / layout.scale(ctx.device) if layout.residual else tgt
        return x0, condition(ctx, static, scal), None

    return to_batch


def rollout_batch(layout: WeatherLayout, times: np.ndarray, steps: int):
    """``to_batch`` for autoregressive training on ``ForecastWindows`` items with leads
    ``1..steps``: ``x0`` ``(B, steps, C, H, W)`` the true normalised states at each step, and the
    first step's condition whose ``scalars`` are ``(B, steps, 5)``: each step's lead (one model
    step) and calendar. Read by :func:`rollout_crps_loss`."""
    static = layout.static()

    def to_batch(batch: dict, gen: torch.Generator):
        ctx, target = batch["context"], batch["target"]  # (B, ctx, C, H, W), (B, steps, C, H, W)
        b = ctx.shape[0]
        when = times[batch["time"].cpu().numpy()[:, None] + np.arange(1, steps + 1)[None]]
        scal = time_scalars(when.ravel(), np.full(when.size, layout.step_hours))
        cond = condition(ctx, static, scal[:b])
        return target, replace(cond, scalars=scal.view(b, steps, -1).to(ctx.device)), None

    return to_batch


def rollout_crps_loss(layout: WeatherLayout, sigma: float):
    """The fair CRPS of two members rolled out autoregressively (FGN's and GenCast's rollout
    fine-tuning, here for a one-evaluation generator ``x = D(sigma z; sigma, cond)``): each member
    starts from the true history, draws its own noise at every step and is conditioned on its
    own previous states; the loss is the two-member CRPS of each step's state against the truth,
    in the residual units of one-step training (``/ layout.scale``), averaged over the steps, with
    gradients through the whole rollout. With one step it equals ``crps_loss``."""
    n_hist = layout.context * layout.num_channels

    def loss_fn(fwd, den, x0, cond, mask, gen):
        b, steps = x0.shape[:2]
        scale = layout.scale(x0.device)
        hist = cond.context[:, :n_hist].unflatten(1, (layout.context, layout.num_channels))
        hist, static = torch.cat([hist, hist]), torch.cat([cond.context[:, n_hist:]] * 2)
        drop = None if cond.drop is None else torch.cat([cond.drop, cond.drop])
        s = torch.full((2 * b,), float(sigma), device=x0.device, dtype=x0.dtype)
        total = x0.new_zeros(())
        for k in range(steps):
            c = Condition(context=torch.cat([hist.flatten(1, 2), static], 1),
                          scalars=torch.cat([cond.scalars[:, k]] * 2), drop=drop)  # fmt: skip
            z = torch.cat([randn_like(x0[:, k], gen), randn_like(x0[:, k], gen)])
            pred = fwd(float(sigma) * z, s, c)
            state = hist[:, -1] + pred * scale if layout.residual else pred
            total = total + fair_crps(state[:b] / scale, state[b:] / scale, x0[:, k] / scale, mask)
            hist = torch.cat([hist[:, 1:], state[:, None].to(hist.dtype)], 1)
        return total / steps

    return loss_fn


def _period(ds, period: list[str] | None, name: str) -> np.ndarray:
    """Positions on the store's time axis inside the inclusive ``[start, end]`` dates."""
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


class ForecastTask:
    """``task: forecast``: weather states on a grid (see the module docstring); read by
    ``stdiff forecast``."""

    name = "forecast"
    channel_dim = (
        1  # x0's weather channels (variables x levels): each clipped to its own training range
    )
    jobs = ("forecast",)

    def validate(self, data) -> None:
        if not data.train_period:
            raise ValueError(
                "train_period is required for the forecast task, e.g. [2013-01-01, 2013-11-30]"
            )

    def check_store(self, ds, data) -> None:
        require_kind(ds, data.store, "weather", ())

    def net_params(self, data, model) -> dict[str, Any]:
        """The DiT's channel counts follow from the data (filled in when the config omits them);
        circular longitude padding only for grids that go all the way round."""
        layout = WeatherLayout.from_store(
            open_store(data.store), data.variables, data.context, where=data.store
        )
        return {**layout.net_params(model.net == "autoencoder"), **model.params}

    def datasets(self, data) -> TaskData:
        ds = open_store(data.store)
        layout = WeatherLayout.from_store(
            ds, data.variables, data.context, data.residual, where=data.store
        )
        times = ds["time"].values
        kw = {"context": data.context, "leads": data.leads}
        pos = _period(ds, data.train_period, "train_period")
        train = ForecastWindows(data.store, layout.variables, times=pos, **kw)
        val_pos = _period(ds, data.valid_period, "valid_period")
        valid = (
            ForecastWindows(data.store, layout.variables, times=val_pos, **kw)
            if len(val_pos)
            else None
        )
        meta = {**store_metadata(ds, layout.variables), "weather": layout.to_dict()}
        return TaskData(train, valid, forecast_batch(layout, times, data.leads), meta)

    def rollout_data(self, data, steps: int) -> tuple[TaskData, WeatherLayout]:
        """:meth:`datasets` for autoregressive training over ``steps`` model steps (leads
        ``1..steps``, :func:`rollout_batch`), and the layout for :func:`rollout_crps_loss`."""
        full = self.datasets(replace(data, leads=list(range(1, steps + 1))))
        layout = WeatherLayout(**full.metadata["weather"])
        times = open_store(data.store)["time"].values
        to_batch = rollout_batch(layout, times, steps)
        return replace(full, to_batch=to_batch), layout

    def sample_dump(self, data, model, seed, items):
        return None  # forecasts are drawn and plotted by `stdiff forecast`


TASK = ForecastTask()
