"""Longitude conventions of weather grids: a regional grid crossing 0 stays contiguous at ingest,
only a grid that goes all the way round is periodic (regridding across the seam, circular
padding in the networks), and the decision travels in the weather layout. Exact comparisons
except float32 round-off (atol 1e-4 K)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from stdiff.datasets.ingest import IngestOptions, ingest
from stdiff.datasets.store import open_store
from stdiff.datasets.weather import canonicalize, is_global_lon, lon_onto, open_weather, regrid
from stdiff.diffusion.nets.dit import DiT
from stdiff.pipelines.jobs.score import to_internal
from stdiff.pipelines.tasks.forecast import NUM_SCALARS, WeatherLayout, condition

TIMES = pd.date_range("2013-01-01", periods=40, freq="6h")
LAT = np.array([40.0, 45.0, 50.0])


def _field(lon_signed: np.ndarray) -> np.ndarray:
    """``(time, lat, lon)`` values that depend on the signed longitude: a jump at a cut shows."""
    t = np.arange(len(TIMES))[:, None, None]
    return (280 + 0.5 * lon_signed[None, None, :] + LAT[None, :, None] / 10 + np.sin(t)).astype(
        np.float32
    )


def _grid(lon: np.ndarray, values: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"air": (("time", "lat", "lon"), values, {"units": "K"})},
        coords={"time": TIMES, "lat": LAT, "lon": lon},
    )


EUROPE = np.arange(-10.0, 2.01, 0.25)  # crosses 0


@pytest.mark.parametrize(
    "stored",
    [
        "cut",  # as older ingests stored it: [0..2, 350..359.75]
        "signed",  # -10..2
        "unsorted 0..360",  # 350..359.75 then 0..2, as a WRF-like file lists it
        "descending",
    ],
)
def test_regional_grid_crossing_zero_is_contiguous(stored: str) -> None:
    mod = np.mod(EUROPE, 360.0)
    order = {
        "cut": np.argsort(mod),
        "signed": np.arange(EUROPE.size),
        "unsorted 0..360": np.arange(EUROPE.size),
        "descending": np.arange(EUROPE.size)[::-1],
    }[stored]
    lon = (EUROPE if stored == "signed" else mod)[order]
    ds = canonicalize(_grid(lon, _field(EUROPE)[..., order]), "europe")
    np.testing.assert_allclose(ds["lon"], EUROPE)
    assert ds["lon"].attrs["units"] == "degrees_east"
    np.testing.assert_allclose(ds["air"].values, _field(EUROPE), atol=1e-4)
    assert not is_global_lon(ds["lon"].values)


def test_which_grids_are_global() -> None:
    assert is_global_lon(np.arange(-180.0, 180.0, 2.5))
    assert is_global_lon(np.arange(0.0, 360.0, 1.5)[::-1])
    assert is_global_lon(np.concatenate([np.arange(180.0, 360.0, 5), np.arange(0.0, 180.0, 5)]))
    assert not is_global_lon(np.arange(200.0, 330.1, 2.5))  # NCEP
    assert not is_global_lon(EUROPE)
    assert not is_global_lon(np.arange(0.0, 350.0, 5.0))  # a 15-degree hole is two steps
    assert not is_global_lon(np.array([10.0, 20.0]))
    # a regional grid that does not cross 0 keeps its [0, 360) longitudes, even past 180
    pacific = np.arange(150.0, 250.1, 5.0)
    ds = canonicalize(_grid(pacific, _field(pacific)), "pacific")
    np.testing.assert_allclose(ds["lon"], pacific)
    # a grid that crosses both 0 and 180 starts at its western edge
    wide = np.mod(np.arange(100.0, 391.0, 10.0), 360.0)
    ds = canonicalize(_grid(np.sort(wide), _field(np.sort(wide))), "wide")
    np.testing.assert_allclose(ds["lon"], np.arange(-260.0, 31.0, 10.0))


def test_regrid_onto_and_from_a_grid_crossing_zero() -> None:
    src = canonicalize(_grid(EUROPE, _field(EUROPE)), "europe")
    for targets in ([-5.1, 0.0, 1.3], [354.9, 0.0, 1.3]):  # either convention
        out = regrid(src, LAT, targets)
        np.testing.assert_allclose(out["lon"], [-5.1, 0.0, 1.3])
        expected = _field(np.array([-5.1, 0.0, 1.3]))
        np.testing.assert_allclose(out["air"].values, expected, atol=1e-3)
    outside = regrid(src, LAT, [3.0, -11.0])
    assert np.isnan(outside["air"].values).all()


def _layout_of(tmp_path: Path, ds: xr.Dataset, name: str) -> WeatherLayout:
    src = tmp_path / f"{name}.nc"
    ds.to_netcdf(src, engine="netcdf4")
    opt = IngestOptions(kind="weather", train_period=("2013-01-01", "2013-01-06"),
                        test_period=("2013-01-07", "2013-01-10"))  # fmt: skip
    result = ingest(str(src), tmp_path / f"{name}.zarr", opt, progress=False)
    return WeatherLayout.from_store(open_store(result.store), None)


def test_layout_records_periodicity_and_networks_follow_it(tmp_path: Path) -> None:
    europe = _layout_of(tmp_path, _grid(np.mod(EUROPE, 360), _field(EUROPE)), "europe")
    np.testing.assert_allclose(europe.lon, EUROPE)
    assert europe.periodic_lon is False and europe.net_params()["periodic_lon"] is False
    full = np.arange(-180.0, 180.0, 7.5)
    world = _layout_of(tmp_path, _grid(full, _field(full)), "world")
    np.testing.assert_allclose(world.lon, np.mod(full, 360)[np.argsort(np.mod(full, 360))])
    assert world.periodic_lon is True and world.net_params(autoencoder=True)["periodic_lon"]
    # a checkpoint written before the field existed decides from its coordinates
    old = {k: v for k, v in world.to_dict().items() if k != "periodic_lon"}
    assert WeatherLayout(**old).periodic and not WeatherLayout(**{**old, "lon": EUROPE}).periodic
    # an old store cut at 0 against a model of the contiguous grid: the message says why
    cut = WeatherLayout(**{**europe.to_dict(), "lon": np.sort(np.mod(EUROPE, 360)).tolist()})
    with pytest.raises(ValueError, match="another order"):
        europe.check(cut, "old.zarr")


def test_dit_built_from_the_layout_pads_global_grids_circularly(tmp_path: Path) -> None:
    full = np.arange(0.0, 360.0, 24.0)  # 15 columns: a 2-patch grid pads one
    for lon, periodic in ((full, True), (EUROPE[::4], False)):
        layout = _layout_of(tmp_path, _grid(lon, _field(lon)), f"g{periodic}")
        net = DiT(**layout.net_params(), patch_size=2, depth=1, hidden=16, num_heads=2)
        assert net.periodic_lon is periodic
        b, c, h, w = 2, layout.num_channels, len(layout.lat), len(layout.lon)
        history = torch.zeros(b, layout.context, c, h, w)
        cond = condition(history, layout.static(), torch.zeros(b, NUM_SCALARS))
        assert net(torch.randn(b, c, h, w), torch.zeros(b), cond).shape == (b, c, h, w)


@pytest.mark.realdata
def test_ncep_rolled_across_zero_stays_contiguous(shared_data: Path, tmp_path: Path) -> None:
    """NCEP's 200..330E grid moved 100 degrees east (300..430 = -60..70) and stored cut at 0,
    as [0..70, 300..357.5]: it ingests as -60..70 with the original columns in order."""
    ncep = open_weather(shared_data / "ncep_air_temperature" / "air_temperature.zarr")
    ncep = ncep.isel(time=slice(0, 40)).load()
    moved = ncep.assign_coords(lon=np.mod(ncep["lon"].values + 100.0, 360.0)).sortby("lon")
    assert moved["lon"].values[0] == 0.0 and moved["lon"].values[-1] == 357.5
    path = tmp_path / "rolled.nc"
    moved.to_netcdf(path, engine="netcdf4")
    ds = open_weather(path)
    np.testing.assert_allclose(ds["lon"], np.arange(-60.0, 70.1, 2.5))
    np.testing.assert_allclose(ds["air"].values, ncep["air"].values, atol=1e-4)
    layout = _layout_of(tmp_path, moved, "rolled_store")
    np.testing.assert_allclose(layout.lon, np.arange(-60.0, 70.1, 2.5))
    assert layout.periodic_lon is False
    assert (
        WeatherLayout.from_store(open_store(tmp_path / "rolled_store.zarr"), ["air"]).lat[0] == 15.0
    )


def test_forecasts_in_other_conventions_are_scored_on_the_data_grid() -> None:
    np.testing.assert_allclose(lon_onto([355.0, -5.0, 2.0, 362.0], EUROPE), [-5, -5, 2, 2])
    np.testing.assert_allclose(lon_onto([-90.0, 359.99], np.arange(0.0, 360, 10)), [270, 359.99])
    data = canonicalize(_grid(EUROPE, _field(EUROPE)), "europe")
    mod = np.mod(EUROPE, 360.0)
    cut = np.argsort(mod)  # a WB2-style store of another model, in [0, 360), cut at 0
    fc = xr.Dataset(
        {"air": (("time", "prediction_timedelta", "latitude", "longitude"),
                 data["air"].values[:2, None][..., cut])},
        coords={"time": TIMES[:2], "prediction_timedelta": [np.timedelta64(6, "h")],
                "latitude": LAT, "longitude": mod[cut]},
    )  # fmt: skip
    internal = to_internal(fc, data, "other.zarr")
    np.testing.assert_allclose(internal["lon"], EUROPE)
    np.testing.assert_allclose(internal["air"].values[:, 0], data["air"].values[:2], atol=1e-6)
