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

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.weather import calendar_features, is_global_lon, static_fields
from stdiff.diffusion.conditioning import Condition

NUM_SCALARS = 5  # lead (days), hour sin/cos, day-of-year sin/cos


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
        cls, ds: xr.Dataset, variables: list[str] | None, context: int = 2, residual: bool = True
    ) -> WeatherLayout:
        """From a weather store of ``stdiff ingest`` (statistics stored beside the data)."""
        where = ds.attrs.get("source", "weather store")
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
        times = ds.indexes["time"]
        step = (times[1] - times[0]) / pd.Timedelta(hours=1)
        return cls(
            variables=list(variables),
            channels=channels,
            mean=mean,
            std=std,
            diff_std=dstd,
            lat=ds["lat"].values.astype(float).tolist(),
            lon=ds["lon"].values.astype(float).tolist(),
            step_hours=float(step),
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
        if len(self.lat) != len(other.lat) or not np.allclose(self.lat, other.lat):
            raise DataError(where, "latitudes differ from the checkpoint's grid")
        if len(self.lon) != len(other.lon) or not np.allclose(self.lon, other.lon):
            same = len(self.lon) == len(other.lon) and np.allclose(
                np.sort(np.mod(self.lon, 360)), np.sort(np.mod(other.lon, 360))
            )
            hint = (
                " (the same columns in another order: the model was trained on a store written "
                "with another longitude convention; ingest the data with the same stdiff version)"
                if same
                else ""
            )
            raise DataError(where, f"longitudes differ from the checkpoint's grid{hint}")
        if self.step_hours != other.step_hours:
            raise DataError(
                where,
                f"time step {other.step_hours} h differs from the checkpoint's {self.step_hours} h",
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
