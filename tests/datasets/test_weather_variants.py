"""Gridded data as other people's files lay it out: WeatherBench2's (time, longitude, latitude)
order, model calendars (noleap, 360_day), extra dimensions (a single height, ensemble members),
missing values (SST over land, gaps in a series), several files of one series, and time axes
with gaps, which no training window or forecast history may straddle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.store import open_store
from stdiff.datasets.windows import ForecastWindows, regular_runs

TIMES = pd.date_range("2020-01-01", periods=40, freq="6h")
LAT = np.array([40.0, 30.0, 20.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])


def _ingest(*args) -> object:
    return CliRunner().invoke(
        app, ["ingest", *map(str, args), "--kind", "weather", "--no-progress"]
    )


def _grid(name: str = "t2m", times=TIMES, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    v = (270 + rng.standard_normal((len(times), LAT.size, LON.size))).astype(np.float32)
    return xr.Dataset(
        {name: (("time", "latitude", "longitude"), v)},
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )


def test_weatherbench_lon_lat_order_is_stored_lat_lon(tmp_path: Path) -> None:
    src = _grid()
    src.transpose("time", "longitude", "latitude").to_zarr(tmp_path / "wb2.zarr", mode="w")
    res = _ingest(tmp_path / "wb2.zarr", "--out", tmp_path / "o.zarr")
    assert res.exit_code == 0, res.output
    ds = open_store(tmp_path / "o.zarr")
    assert ds["t2m"].dims == ("time", "lat", "lon")
    expect = src["t2m"].values[:, ::-1, :]  # latitudes ascending
    np.testing.assert_array_equal(ds["t2m"].values, expect)


@pytest.mark.parametrize(("calendar", "kept", "gaps"), [("noleap", 40, 1), ("360_day", 36, 0)])
def test_model_calendars_become_standard_dates(
    tmp_path: Path, calendar: str, kept: int, gaps: int
) -> None:
    # 2020 is a leap year: noleap jumps from 28 February to 1 March (a gap of one day on the
    # standard calendar); 360_day's 30 February does not exist and is left out, its 29th is kept
    times = xr.date_range("2020-02-25", periods=40, freq="6h", calendar=calendar, use_cftime=True)
    _grid(times=times).to_netcdf(tmp_path / "c.nc")
    res = _ingest(tmp_path / "c.nc", "--out", tmp_path / "o.zarr")
    assert res.exit_code == 0, res.output
    t = open_store(tmp_path / "o.zarr").indexes["time"]
    assert isinstance(t, pd.DatetimeIndex) and len(t) == kept
    assert [str(d.date()) for d in t[::4][:4]] == [
        "2020-02-25",
        "2020-02-26",
        "2020-02-27",
        "2020-02-28",
    ]
    assert int(regular_runs(t.values)[-1]) == gaps


def test_extra_dimensions(tmp_path: Path) -> None:
    one = _grid().expand_dims(height=[2.0], axis=1)
    one.to_netcdf(tmp_path / "h.nc")
    res = _ingest(tmp_path / "h.nc", "--out", tmp_path / "h.zarr")
    assert res.exit_code == 0, res.output
    assert open_store(tmp_path / "h.zarr")["t2m"].dims == ("time", "lat", "lon")
    members = xr.concat([_grid(seed=s) for s in range(3)], "number").transpose("time", ...)
    members.to_netcdf(tmp_path / "m.nc")
    res = _ingest(tmp_path / "m.nc", "--out", tmp_path / "m.zarr")
    assert res.exit_code == 2
    assert "'number' of 3 values" in res.output and "isel(number=0)" in res.output
    assert not (tmp_path / "m.zarr").exists()


def test_missing_values_land_mask_filled_gaps_refused_or_filled(tmp_path: Path) -> None:
    sst = _grid("sst")
    sst["sst"][:, 0, 1] = np.nan  # land: missing at every time
    sst.to_netcdf(tmp_path / "land.nc")
    res = _ingest(tmp_path / "land.nc", "--out", tmp_path / "land.zarr")
    assert res.exit_code == 0, res.output
    assert "40 NaN set to its training mean (1 cells missing at every time)" in res.output
    ds = open_store(tmp_path / "land.zarr")
    cell = ds["sst"].values[:, 2, 1]  # ascending latitudes: row 0 -> 2
    np.testing.assert_allclose(cell, float(ds["sst_mean"]), rtol=1e-6)
    assert np.isfinite(ds["sst"].values).all()
    assert ds.attrs["filled_nan"] == {"sst": {"values": 40, "always_missing_cells": 1}}

    sst["sst"][5, 1, 1] = np.nan  # and a value missing at one time
    sst.to_netcdf(tmp_path / "gap.nc")
    res = _ingest(tmp_path / "gap.nc", "--out", tmp_path / "gap.zarr")
    assert res.exit_code == 2 and "gap.nc" in res.output and "--fill-nan mean" in res.output
    assert "1 missing values" in res.output and not (tmp_path / "gap.zarr").exists()
    res = _ingest(tmp_path / "gap.nc", "--out", tmp_path / "gap.zarr", "--fill-nan", "mean")
    assert res.exit_code == 0, res.output
    assert np.isfinite(open_store(tmp_path / "gap.zarr")["sst"].values).all()
    res = CliRunner().invoke(
        app, ["ingest", str(tmp_path / "gap.nc"), "--kind", "images", "--out",
              str(tmp_path / "i.zarr"), "--fill-nan", "mean"],
    )  # fmt: skip
    assert res.exit_code == 2 and "--fill-nan" in res.output


def test_several_files_are_one_series(tmp_path: Path) -> None:
    src = _grid()
    src.isel(time=slice(20, None)).to_netcdf(tmp_path / "b.nc")
    src.isel(time=slice(0, 20)).to_netcdf(tmp_path / "a.nc")
    res = _ingest(tmp_path / "b.nc", tmp_path / "a.nc", "--out", tmp_path / "o.zarr")
    assert res.exit_code == 0, res.output
    ds = open_store(tmp_path / "o.zarr")
    assert (ds.indexes["time"] == TIMES).all()
    np.testing.assert_array_equal(ds["t2m"].values, src["t2m"].values[:, ::-1, :])


def test_regular_runs() -> None:
    t = pd.DatetimeIndex(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12", "2020-01-02T06",
                          "2020-01-02T12", "2020-01-02T18"]).values  # fmt: skip
    assert regular_runs(t).tolist() == [0, 0, 0, 1, 1, 1]
    months = pd.date_range("2020-01-01", periods=14, freq="MS").values  # 29-31 days: regular
    assert regular_runs(months).tolist() == [0] * 14


def test_windows_and_forecasts_do_not_straddle_a_gap(tmp_path: Path) -> None:
    keep = [i for i in range(len(TIMES)) if i not in (10, 11, 12)]
    _grid().isel(time=keep).to_netcdf(tmp_path / "g.nc")
    assert _ingest(tmp_path / "g.nc", "--out", tmp_path / "g.zarr").exit_code == 0
    w = ForecastWindows(tmp_path / "g.zarr", ["t2m"], context=2, leads=[1])
    times = open_store(tmp_path / "g.zarr")["time"].values
    assert 9 not in w.anchors and 10 not in w.anchors  # (8, 9 -> 10) and (9, 10 -> 11) straddle
    for t in w.anchors:
        span = np.diff(times[t - 1 : t + 2]).astype("timedelta64[h]").astype(int)
        assert (span == 6).all()
    assert len(w) == len(times) - 1 - 1 - 2  # no anchor at 0 or the last step, two at the gap


def test_ocean_depth_levels_with_a_sea_floor(tmp_path: Path) -> None:
    """An ocean model's ``depth`` is the level axis; cells below the sea floor (NaN at every
    time on the deepest level only) take that level's own training mean."""
    rng = np.random.default_rng(3)
    v = (280 + rng.standard_normal((len(TIMES), 2, LAT.size, LON.size))).astype(np.float32)
    v[:, 1, 0, :] = np.nan  # the deep level is absent along the first latitude row
    ds = xr.Dataset(
        {"thetao": (("time", "depth", "lat", "lon"), v)},
        coords={"time": TIMES, "depth": [5.0, 500.0], "lat": LAT, "lon": LON},
    )
    ds.to_netcdf(tmp_path / "ocean.nc")
    res = _ingest(tmp_path / "ocean.nc", "--out", tmp_path / "o.zarr")
    assert res.exit_code == 0, res.output
    out = open_store(tmp_path / "o.zarr")
    assert out["thetao"].dims == ("time", "level", "lat", "lon")
    filled = out["thetao"].values[:, 1, 2, :]  # latitude 40 is the last row once ascending
    np.testing.assert_allclose(filled, float(out["thetao_mean"].values[1]), rtol=1e-6)
    np.testing.assert_array_equal(out["thetao"].values[:, 0, 2, :], v[:, 0, 0, :])


def test_scores_leave_out_the_filled_land(tmp_path: Path) -> None:
    """SST over land is filled at ingest and marked in ``sst_filled``; ``stdiff score`` leaves
    those cells out, so a forecast that is 1 K off at sea and 100 K off on land scores RMSE 1."""
    import json

    sst = _grid("sst", times=pd.date_range("2020-01-01", periods=80, freq="6h"))
    sst["sst"][:, 0, 1] = np.nan
    sst.to_netcdf(tmp_path / "sst.nc")
    assert _ingest(tmp_path / "sst.nc", "--out", tmp_path / "sst.zarr").exit_code == 0
    data = open_store(tmp_path / "sst.zarr")
    land = data["sst_filled"].values.astype(bool)
    assert land.sum() == 1 and land[2, 1]  # ascending latitudes: row 0 -> 2
    inits = np.array(["2020-01-15T00", "2020-01-16T00"], dtype="datetime64[ns]")
    leads = pd.to_timedelta([6, 12], "h").values
    valid = xr.DataArray(inits[:, None] + leads[None, :], dims=("time", "prediction_timedelta"))
    fc = data["sst"].sel(time=valid).values + 1.0
    fc[..., land] += 99.0
    xr.Dataset(
        {"sst": (("time", "prediction_timedelta", "lat", "lon"), fc)},
        coords={"time": inits, "prediction_timedelta": leads, "lat": data["lat"].values,
                "lon": data["lon"].values},
    ).to_zarr(tmp_path / "det.zarr")  # fmt: skip
    res = CliRunner().invoke(app, ["score", "--forecast", f"det={tmp_path / 'det.zarr'}", "--data",
                                   str(tmp_path / "sst.zarr"), "--out", str(tmp_path / "s")])  # fmt: skip
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s/scores.json").read_text())["scores"]["sst"]["det"]
    np.testing.assert_allclose(s["rmse"], 1.0, atol=1e-5)
    np.testing.assert_allclose(s["crps"], 1.0, atol=1e-5)


def test_era5_expver_is_merged(tmp_path) -> None:
    """ERA5 + ERA5T in one download: ``expver`` 1 up to a date, 5 after, NaN in the other."""
    from stdiff.datasets.weather import open_weather

    t = pd.date_range("2024-01-01", periods=6, freq="6h")
    lat, lon = np.linspace(60, -60, 3), np.arange(0, 360, 90.0)
    field = np.random.default_rng(0).normal(280, 5, (6, 2, 3, 4)).astype(np.float32)
    field[4:, 0], field[:4, 1] = np.nan, np.nan
    xr.Dataset(
        {"t2m": (("time", "expver", "latitude", "longitude"), field)},
        coords={"time": t, "expver": [1, 5], "latitude": lat, "longitude": lon},
    ).to_netcdf(tmp_path / "era5.nc")
    ds = open_weather(tmp_path / "era5.nc")
    assert ds["t2m"].dims == ("time", "lat", "lon")
    expected = np.where(np.isnan(field[:, 0]), field[:, 1], field[:, 0])[:, ::-1]
    np.testing.assert_array_equal(ds["t2m"].values, expected)
