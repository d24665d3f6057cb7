"""datasets.weather: canonical form from awkward files, bad inputs, grid ops, conditioning fields."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.weather import (
    calendar_features,
    canonicalize,
    coarsen,
    latitude_bounds,
    latitude_weights,
    open_weather,
    regrid,
    static_fields,
)

TIMES = pd.date_range("2013-01-01", periods=4, freq="6h")
LAT_DESC = np.array([60.0, 30.0, 0.0, -30.0, -60.0])
LON_PM180 = np.arange(-180.0, 180.0, 45.0)  # 8 columns, global
NEEDS_H5PY = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None, reason="h5netcdf needs h5py, not installed"
)
PACK = {"dtype": "int16", "scale_factor": 0.01, "add_offset": 250.0, "_FillValue": -32768}


def _air(times: pd.DatetimeIndex = TIMES) -> np.ndarray:
    """A smooth temperature field in K, already rounded to the packing precision."""
    t = np.arange(len(times))[:, None, None]
    field = 250 + 30 * np.cos(np.deg2rad(LAT_DESC))[None, :, None] + np.sin(t + LON_PM180 / 60)
    return np.round((field - 250.0) / 0.01) * 0.01 + 250.0


def _awkward(
    dims: tuple[str, str, str] = ("TIME", "FNOCY", "FNOCX"), times: pd.DatetimeIndex = TIMES
) -> xr.Dataset:
    """Descending lat, lon in [-180, 180), int16 packing, a static field and a bounds helper."""
    t, y, x = dims
    ds = xr.Dataset(
        {
            "air": ((t, y, x), _air(times), {"units": "K"}),
            "lsm": ((y, x), (LAT_DESC[:, None] > 0) * np.ones((1, 8)), {"units": "1"}),
            "time_bnds": ((t, "nv"), np.zeros((len(times), 2))),
        },
        coords={t: times, y: LAT_DESC, x: LON_PM180},
    )
    ds["air"].encoding = dict(PACK)
    return ds


def _expected_air(times: pd.DatetimeIndex = TIMES) -> np.ndarray:
    """The decoded field in canonical order: lat ascending, lon rolled to 0, 45, ..., 315."""
    return np.roll(_air(times)[:, ::-1, :], -4, axis=2).astype(np.float32)


def _check_canonical(ds: xr.Dataset) -> None:
    assert ds["air"].dims == ("time", "lat", "lon")
    assert ds["air"].dtype == np.float32
    assert isinstance(ds["air"].data, dask.array.Array)
    np.testing.assert_array_equal(ds["lat"], LAT_DESC[::-1])
    np.testing.assert_array_equal(ds["lon"], np.arange(0.0, 360.0, 45.0))
    np.testing.assert_allclose(ds["air"].values, _expected_air(), rtol=0, atol=1e-4)
    assert ds["air"].attrs["units"] == "K"
    assert ds["lsm"].dims == ("lat", "lon")  # static field kept
    assert "time_bnds" not in ds  # helper dropped
    assert ds.attrs["kind"] == "weather"


@pytest.mark.parametrize(
    ("dims", "engine", "fmt"),
    [
        pytest.param(("TIME", "FNOCY", "FNOCX"), "h5netcdf", "NETCDF4", marks=NEEDS_H5PY),
        (("time", "latitude", "longitude"), "netcdf4", "NETCDF3_64BIT"),
        (("valid_time", "LAT", "LON"), "netcdf4", "NETCDF4"),
        (("t", "y", "x"), "netcdf4", "NETCDF4_CLASSIC"),
    ],
)
def test_netcdf_awkward_conventions(tmp_path: Path, dims, engine: str, fmt: str) -> None:
    path = tmp_path / "awkward.nc"
    _awkward(dims).to_netcdf(path, engine=engine, format=fmt)
    ds = open_weather(path)
    _check_canonical(ds)
    assert ds.attrs["source"] == str(path)


def test_multiple_files_combined_along_time(tmp_path: Path) -> None:
    full = _awkward()
    first, second = tmp_path / "a.nc", tmp_path / "b.nc"
    full.isel(TIME=slice(0, 2)).to_netcdf(first, engine="netcdf4")
    full.isel(TIME=slice(2, None)).to_netcdf(second, engine="netcdf4")
    ds = open_weather([second, first])  # order does not matter
    _check_canonical(ds)
    np.testing.assert_array_equal(ds["time"], TIMES.values)
    with pytest.raises(DataError, match=r"a\.nc"):
        open_weather([first, first])


@pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata")
def test_zarr_local_and_fsspec_url_give_same_dataset(tmp_path: Path) -> None:
    nc = tmp_path / "ref.nc"
    _awkward().to_netcdf(nc, engine="netcdf4")
    reference = open_weather(nc)
    store = tmp_path / "awkward.zarr"
    _awkward().to_zarr(store, zarr_format=2, consolidated=True)  # WeatherBench2 layout
    url = f"memory://{uuid.uuid4().hex}/awkward.zarr"
    _awkward().to_zarr(url, zarr_format=3, consolidated=False)
    for source in (store, str(store), url):
        ds = open_weather(source)
        _check_canonical(ds)
        xr.testing.assert_equal(ds, reference)
        assert ds.attrs["source"] == str(source)


def test_variable_and_level_selection(tmp_path: Path) -> None:
    levels = np.array([850.0, 500.0])
    ds = xr.Dataset(
        {"t": (("time", "isobaricInhPa", "lat", "lon"), np.ones((4, 2, 5, 8)), {"units": "K"})},
        coords={"time": TIMES, "isobaricInhPa": levels, "lat": LAT_DESC, "lon": LON_PM180},
    )
    ds["z"] = ds["t"] * 9.8
    path = tmp_path / "levels.nc"
    ds.to_netcdf(path, engine="netcdf4")
    out = open_weather(path, variables="t", levels=[500])
    assert list(out.data_vars) == ["t"]
    assert out["t"].dims == ("time", "level", "lat", "lon")
    np.testing.assert_array_equal(out["level"], [500.0])
    with pytest.raises(DataError, match=r"levels\.nc.*300.*available"):
        open_weather(path, levels=[500, 300])
    with pytest.raises(DataError, match=r"levels\.nc.*'q'.*available.*'t', 'z'"):
        open_weather(path, variables=["t", "q"])


def _write_times(path: Path, times: list[str]) -> Path:
    ds = _awkward(times=pd.DatetimeIndex(times))
    ds.to_netcdf(path, engine="netcdf4")
    return path


@pytest.mark.parametrize(
    ("name", "times", "message"),
    [
        ("dup.nc", ["2013-01-01T00", "2013-01-01T06", "2013-01-01T06"], "duplicated timestamp"),
        ("back.nc", ["2013-01-01T00", "2013-01-01T12", "2013-01-01T06"], "not increasing"),
    ],
)
def test_bad_times(tmp_path: Path, name: str, times: list[str], message: str) -> None:
    path = _write_times(tmp_path / name, times)
    with pytest.raises(DataError, match=message) as err:
        open_weather(path)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_folder_of_files_split_by_time_and_by_variable(tmp_path: Path) -> None:
    """A folder of netCDF files (one per variable and half-year, as ERA5 downloads come): the
    halves join along time, the variables merge (a static field in each kind of file too); a
    time-varying variable in two kinds of file, or variables over different times, are refused."""
    full = _awkward()
    full["air2"] = full["air"] + 1
    full["air2"].encoding = dict(PACK)
    folder = tmp_path / "era5"
    folder.mkdir()
    for name in ("air", "air2"):
        for k, part in enumerate((slice(0, 2), slice(2, None))):
            full[[name, "lsm"]].isel(TIME=part).to_netcdf(folder / f"{name}_{k}.nc")
    (folder / "README.txt").write_text("not a grid")
    ds = open_weather(folder)
    _check_canonical(ds)
    np.testing.assert_allclose(ds["air2"].values, _expected_air() + 1, atol=1e-4)
    np.testing.assert_array_equal(ds["time"], TIMES.values)
    full[["air", "air2"]].to_netcdf(tmp_path / "both.nc")
    with pytest.raises(DataError, match="variable 'air' is in files that hold different"):
        open_weather([folder / "air_0.nc", tmp_path / "both.nc"])
    with pytest.raises(DataError, match="the files of air, lsm and of air2, lsm cover different"):
        open_weather([folder / "air_0.nc", folder / "air2_1.nc"])


def test_bad_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.nc"
    text.write_text("this is not a netCDF file\n")
    with pytest.raises(DataError, match=r"notes\.nc.*not a netCDF, zarr or GRIB"):
        open_weather(text)
    with pytest.raises(DataError, match="no such file"):
        open_weather(tmp_path / "absent.nc")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder.*neither a zarr store .* nor holds netCDF"):
        open_weather(tmp_path / "folder")
    nan = _awkward()
    nan["air"] = nan["air"] * np.nan
    nan["air"].encoding = {}
    nan.to_netcdf(tmp_path / "nan.nc", engine="netcdf4")
    with pytest.raises(DataError, match=r"nan\.nc.*\['air'\] contain only NaN"):
        open_weather(tmp_path / "nan.nc")
    nolat = xr.Dataset({"air": (("time", "station"), np.ones((4, 3)))}, coords={"time": TIMES})
    nolat.to_netcdf(tmp_path / "nolat.nc", engine="netcdf4")
    with pytest.raises(DataError, match=r"nolat\.nc.*no lat/lon dimension"):
        open_weather(tmp_path / "nolat.nc")
    notime = _awkward().isel(TIME=0).drop_vars("TIME")
    notime.to_netcdf(tmp_path / "notime.nc", engine="netcdf4")
    with pytest.raises(DataError, match=r"notime\.nc.*no time dimension"):
        open_weather(tmp_path / "notime.nc")
    with pytest.raises(DataError, match=r"memory://.*cannot open"):
        open_weather(f"memory://{uuid.uuid4().hex}/absent.zarr")


def test_grib_without_cfgrib_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # as if cfgrib were not installed
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "cfgrib" else find_spec(name, *a),
    )
    path = tmp_path / "era5.grib"
    path.write_bytes(b"GRIB" + bytes(100))
    with pytest.raises(DataError, match=r"era5\.grib.*pip install stdiff\[grib\]"):
        open_weather(path)


def test_canonicalize_2d_regular_coordinates() -> None:
    lat2d, lon2d = np.meshgrid(LAT_DESC, LON_PM180, indexing="ij")
    ds = xr.Dataset(
        {"sst": (("t", "y", "x"), _air(), {"units": "K"})},
        coords={"t": TIMES, "nav_lat": (("y", "x"), lat2d), "nav_lon": (("y", "x"), lon2d)},
    )
    out = canonicalize(ds, "nemo.nc")
    assert out["sst"].dims == ("time", "lat", "lon")
    np.testing.assert_allclose(out["sst"].values, _expected_air(), atol=1e-4)
    with pytest.raises(DataError, match=r"nemo\.nc.*curvilinear"):
        canonicalize(ds.assign_coords(nav_lat=(("y", "x"), lat2d + lon2d / 100)), "nemo.nc")


def _grid(lat: np.ndarray, lon: np.ndarray, values: np.ndarray) -> xr.Dataset:
    da = xr.DataArray(values.astype(np.float32), dims=("lat", "lon"), attrs={"units": "K"})
    ds = da.expand_dims(time=TIMES[:2]).to_dataset(name="f")
    return ds.assign_coords(lat=lat, lon=lon)


def test_coarsen_block_mean() -> None:
    lat, lon = np.arange(-75.0, 90.0, 30.0)[:4], np.arange(0.0, 360.0, 45.0)
    values = np.arange(32.0).reshape(4, 8)
    out = coarsen(_grid(lat, lon, values), 2)
    expected = values.reshape(2, 2, 4, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out["f"].isel(time=0), expected)
    np.testing.assert_allclose(out["lat"], [-60.0, 0.0])
    assert out["f"].dtype == np.float32 and out["f"].attrs["units"] == "K"
    with pytest.raises(DataError, match="does not divide lat size 4"):
        coarsen(_grid(lat, lon, values), 3)
    assert coarsen(_grid(lat, lon, values), 3, boundary="trim").sizes == {
        "time": 2,
        "lat": 1,
        "lon": 2,
    }


def test_regrid_identity_linear_and_periodic() -> None:
    lat, lon = np.arange(-80.0, 81.0, 10.0), np.arange(0.0, 360.0, 2.0)
    linear = _grid(lat, lon, (2 * lat[:, None] + 1) * np.ones((1, lon.size)))
    same = regrid(linear, lat, lon)
    xr.testing.assert_allclose(same, linear)
    assert same["f"].dtype == np.float32 and same["f"].attrs["units"] == "K"
    new_lat = np.array([-75.0, -3.3, 12.5, 77.7])
    out = regrid(linear, new_lat, [1.0, 359.0])
    np.testing.assert_allclose(out["f"].isel(time=0, lon=0), 2 * new_lat + 1, rtol=1e-6)
    wave = _grid(lat, lon, np.ones((lat.size, 1)) * np.sin(np.deg2rad(lon)))
    targets = np.array([359.5, 0.5, -0.5, 1.0])
    out = regrid(wave, [0.0], targets)
    np.testing.assert_allclose(out["lon"], [359.5, 0.5, 359.5, 1.0])
    np.testing.assert_allclose(out["f"].isel(time=0, lat=0), np.sin(np.deg2rad(targets)), atol=2e-4)


def test_calendar_features_known_values() -> None:
    times = pd.DatetimeIndex(["2013-01-01T00", "2013-01-01T06", "2013-01-01T12", "2013-07-02T18"])
    feats = calendar_features(xr.Dataset(coords={"time": times}))
    assert set(feats.data_vars) == {"hour_sin", "hour_cos", "doy_sin", "doy_cos"}
    assert all(v.dtype == np.float32 and v.dims == ("time",) for v in feats.data_vars.values())
    np.testing.assert_allclose(feats["hour_sin"], [0, 1, 0, -1], atol=1e-6)
    np.testing.assert_allclose(feats["hour_cos"], [1, 0, -1, 0], atol=1e-6)
    np.testing.assert_allclose([feats["doy_sin"][0], feats["doy_cos"][0]], [0, 1], atol=1e-6)
    half = 2 * np.pi * (182 + 0.75) / 365.25  # 2 July is day 183
    np.testing.assert_allclose(feats["doy_cos"][3], np.cos(half), atol=1e-6)


def _brute_area_weights(lat: np.ndarray) -> np.ndarray:
    """Each row's share of the area by numerical integration of cos(lat) over the points of the
    covered band closer to that row than to any other; the band ends half the outer spacing
    beyond the outer rows, clipped at the poles."""
    rows = np.sort(lat)
    lo = max(-90.0, rows[0] - (rows[1] - rows[0]) / 2)
    hi = min(90.0, rows[-1] + (rows[-1] - rows[-2]) / 2)
    n = 400_000
    theta = lo + (np.arange(n) + 0.5) * (hi - lo) / n  # midpoint rule
    nearest = np.abs(theta[:, None] - lat[None, :]).argmin(axis=1)
    area = np.bincount(nearest, weights=np.cos(np.deg2rad(theta)), minlength=lat.size)
    return area / area.mean()


GRIDS = {
    "ncep regional 15..75N": np.arange(15.0, 75.1, 2.5),
    "southern regional": np.arange(-60.0, -9.9, 5.0),
    "global with poles": np.arange(-90.0, 90.1, 2.5),
    "global offset (no pole rows)": np.arange(-88.75, 88.8, 2.5),
    "non-uniform regional": np.array([10.0, 11.0, 13.0, 16.0, 20.0, 25.0, 31.0]),
    "non-uniform reaching the pole": np.array([60.0, 70.0, 76.0, 82.0, 86.0, 90.0]),
}


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("descending", [False, True])
def test_latitude_weights_match_integrated_cos(name: str, descending: bool) -> None:
    lat = GRIDS[name][::-1] if descending else GRIDS[name]
    w = latitude_weights(lat)
    assert w.dims == ("lat",)
    np.testing.assert_allclose(w["lat"].values, lat)  # weights stay in the given order
    np.testing.assert_allclose(float(w.mean()), 1.0)
    np.testing.assert_allclose(w.values, _brute_area_weights(lat), rtol=2e-4)


def test_latitude_weights_regional_rows_follow_cos() -> None:
    """On NCEP's 15-75N grid the outer rows are cells like the others: every weight is cos(lat)
    up to one constant (second order in the 2.5 degree step), and the 15N row holds under 6 %
    of the total (closing its cell at the pole gave it 64 %)."""
    lat = np.arange(75.0, 14.9, -2.5)
    w = latitude_weights(lat).values
    ratio = w / np.cos(np.deg2rad(lat))
    np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-3)
    assert w[-1] / w.sum() == pytest.approx(np.cos(np.deg2rad(15)) / np.cos(np.deg2rad(lat)).sum())
    assert w[-1] / w.sum() < 0.06


def test_latitude_weights_global_grid_closes_at_the_poles() -> None:
    lat = np.arange(-90.0, 90.1, 2.5)
    bounds = latitude_bounds(lat)
    assert bounds[0] == -90.0 and bounds[-1] == 90.0
    w = latitude_weights(lat)
    np.testing.assert_allclose(w.values, w.values[::-1])
    assert float(w.sel(lat=0.0)) == pytest.approx(float(w.max()))
    assert float(w[0]) > 0  # pole rows have an area
    # WeatherBench 2's formula for grids with pole rows: sin of the midpoints, poles at the ends
    edges = np.deg2rad(np.concatenate([[-90], (lat[:-1] + lat[1:]) / 2, [90]]))
    ref = np.diff(np.sin(edges))
    np.testing.assert_allclose(w.values, ref / ref.mean(), rtol=1e-12)
    regional = latitude_bounds(np.arange(15.0, 75.1, 2.5))
    assert (regional[0], regional[-1]) == (13.75, 76.25)
    assert latitude_weights(np.array([45.0])).values.tolist() == [1.0]


def test_static_fields_with_extra_from_file(tmp_path: Path) -> None:
    path = tmp_path / "awkward.nc"
    _awkward().to_netcdf(path, engine="netcdf4")
    ds = open_weather(path)
    lsm = tmp_path / "lsm.nc"
    _awkward()[["lsm"]].expand_dims(TIME=TIMES[:1]).to_netcdf(lsm, engine="netcdf4")
    out = static_fields(ds, extra=lsm)
    assert {"lat_sin", "lat_cos", "lon_sin", "lon_cos", "lsm"} <= set(out.data_vars)
    assert all(v.dims == ("lat", "lon") and v.dtype == np.float32 for v in out.data_vars.values())
    np.testing.assert_allclose(out["lat_sin"][:, 0], np.sin(np.deg2rad(ds["lat"])), atol=1e-6)
    np.testing.assert_allclose(out["lon_cos"][0], np.cos(np.deg2rad(ds["lon"])), atol=1e-6)
    np.testing.assert_array_equal(out["lsm"][:, 0], (ds["lat"] > 0).astype(np.float32))
    coarse = ds["lsm"].isel(lat=[0, 2, 4]).rename("mask")
    out = static_fields(ds, extra=coarse)  # regridded onto ds's grid
    np.testing.assert_allclose(out["mask"][:, 0], [0, 0, 0, 0.5, 1])


@pytest.mark.realdata
def test_ncep_air_temperature(shared_data: Path) -> None:
    ds = open_weather(shared_data / "ncep_air_temperature" / "air_temperature.zarr")
    air = ds["air"]
    assert air.dims == ("time", "lat", "lon")
    assert air.shape == (2920, 25, 53)
    assert isinstance(air.data, dask.array.Array)
    assert air.dtype == np.float32 and air.attrs["units"] == "degK"
    assert ds["lat"][0] == 15.0 and ds["lat"][-1] == 75.0
    assert bool((ds["lat"].diff("lat") > 0).all())
    assert ds["lon"][0] == 200.0 and ds["lon"][-1] == 330.0
    low, high = float(air.min()), float(air.max())
    assert 180.0 < low < high < 330.0
