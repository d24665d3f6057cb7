"""Series kept as xarray (netCDF, zarr) read by ``--kind timeseries``: over time alone, or over
(time, station) with positions as site coordinates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.errors import DataError
from stdiff.datasets.sites import load_series

T = pd.date_range("2024-01-01", periods=5, freq="1h")


def _stations(positions_as: str) -> xr.Dataset:
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"pm25": (("valid_time", "sensor"), rng.normal(50, 5, (5, 3))),
         "elevation": (("sensor",), [10.0, 20.0, 30.0])},
        coords={"valid_time": T, "sensor": ["s1", "s2", "s3"]},
    )  # fmt: skip
    lat, lon = ("sensor", [39.9, 40.0, 40.1]), ("sensor", [116.3, 116.4, 116.5])
    return (
        ds.assign_coords(lat=lat, lon=lon)
        if positions_as == "coords"
        else ds.assign(latitude=lat, longitude=lon)
    )


@pytest.mark.parametrize(("store", "positions_as"), [("nc", "coords"), ("zarr", "variables")])
def test_station_series_with_positions(tmp_path, store, positions_as):
    ds = _stations(positions_as)
    path = tmp_path / f"aq.{store}"
    ds.to_netcdf(path) if store == "nc" else ds.to_zarr(path)
    out = load_series([path])
    assert out.feature.values.tolist() == ["s1/pm25", "s2/pm25", "s3/pm25"]  # no elevation
    np.testing.assert_array_equal(out.time.values, T.to_numpy("datetime64[ns]"))
    np.testing.assert_allclose(out["values"].values, ds["pm25"].values.astype(np.float32))
    np.testing.assert_array_equal(out["lat"].values, [39.9, 40.0, 40.1])


def test_one_series_and_refusals(tmp_path):
    xr.Dataset({"load": (("time",), np.arange(5.0))}, coords={"time": T}).to_netcdf(
        tmp_path / "one.nc"
    )
    out = load_series([tmp_path / "one.nc"])
    np.testing.assert_array_equal(out["values"].values[:, 0], np.arange(5.0))
    cube = xr.Dataset({"x": (("time", "a", "b"), np.zeros((5, 2, 2)))}, coords={"time": T})
    cube.to_netcdf(tmp_path / "cube.nc")
    with pytest.raises(DataError, match="variable 'x' is over"):
        load_series([tmp_path / "cube.nc"])
    grid = xr.Dataset({"air": (("time", "lat", "lon"), np.zeros((5, 2, 2)))}, coords={"time": T})
    grid.to_netcdf(tmp_path / "grid.nc")
    with pytest.raises(DataError, match=r"a gridded field over .*--kind weather"):
        load_series([tmp_path / "grid.nc"])
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "one.nc"), "--kind", "timeseries",
                                   "--out", str(tmp_path / "s.zarr"), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    with pytest.raises(DataError, match="already a stdiff timeseries store"):
        load_series([tmp_path / "s.zarr"])
