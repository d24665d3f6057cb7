"""Gridded weather data (netCDF, zarr, cloud zarr, GRIB) as canonical, lazy ``xarray.Dataset``s.

Canonical weather form (see :mod:`datasets`): dims ``time, lat, lon`` (+ ``level``), ``lat`` in
degrees north ascending, ``lon`` in degrees east ascending and contiguous (a global grid in
[0, 360); a regional grid from its western edge, with negative western longitudes when it crosses
0, e.g. -10..2; :func:`is_global_lon` tells them apart), data variables float32 with
their physical ``units`` in ``attrs`` (e.g. K for temperature), dataset attrs ``kind="weather"`` and
``source``. Static fields over ``(lat, lon)`` (orography, land-sea mask) are kept. Everything stays
dask-backed: nothing reads the bulk of a store until the caller computes.

Functions: :func:`open_weather`, :func:`canonicalize`, :func:`coarsen`, :func:`regrid`,
:func:`calendar_features`, :func:`is_global_lon`, :func:`lon_onto`, :func:`latitude_bounds`,
:func:`latitude_weights`, :func:`static_fields` (and, for ingest, ``datasets.weather_ingest``).
Every malformed input raises :class:`datasets.errors.DataError` naming the file.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Hashable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.store import as_float32

Source = str | PathLike[str]

# Names (compared lower-case) under which each canonical axis appears, most specific first.
_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("time", "valid_time", "times", "t"),
    "lat": ("lat", "latitude", "lats", "nav_lat", "fnocy", "grid_yt", "y"),
    "lon": ("lon", "longitude", "lons", "nav_lon", "fnocx", "grid_xt", "x"),
    "level": tuple(
        "level lev plev isobaricinhpa pressure_level pressure levels depth deptht olevel "
        "model_level hybrid".split()
    ),
}
# CF hints (``standard_name`` / ``units`` / ``axis``) for coordinates with unusual names.
_CF_HINTS: dict[str, tuple[set[str], set[str], str]] = {
    "time": ({"time"}, set(), "T"),
    "lat": ({"latitude"}, {"degrees_north", "degree_north", "degrees_n", "degree_n"}, "Y"),
    "lon": ({"longitude"}, {"degrees_east", "degree_east", "degrees_e", "degree_e"}, "X"),
    "level": ({"air_pressure"}, set(), "Z"),
}
_PACKING = ("scale_factor", "add_offset")
_PROBE_LIMIT = 1 << 24  # elements: larger variables are NaN-probed at one time step only


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def _is_url(source: Source) -> bool:
    return isinstance(source, str) and "://" in source and not source.startswith("file://")


def _open_file(path: Path) -> xr.Dataset:
    """One local netCDF / zarr / GRIB file or store, lazily, with CF decoding (mask_and_scale)."""
    if not path.exists():
        raise DataError(path, "no such file or directory")
    if path.is_dir():
        markers = (".zgroup", ".zarray", ".zmetadata", "zarr.json")
        if not any((path / m).exists() for m in markers):
            raise DataError(path, "directory is not a zarr store (no .zgroup or zarr.json)")
        try:
            return xr.open_zarr(path)
        except Exception as err:
            raise DataError(path, f"cannot open zarr store ({_one_line(err)})") from err
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(b"GRIB") or path.suffix.lower() in {".grib", ".grb", ".grib2", ".grb2"}:
        if importlib.util.find_spec("cfgrib") is None:
            raise DataError(path, "reading GRIB needs cfgrib: pip install stdiff[grib]")
        engines: tuple[str, ...] = ("cfgrib",)
    elif head.startswith(b"CDF"):
        engines = ("netcdf4",)
    elif head.startswith(b"\x89HDF\r\n\x1a\n"):
        engines = ("h5netcdf", "netcdf4") if importlib.util.find_spec("h5py") else ("netcdf4",)
    else:
        raise DataError(path, f"not a netCDF, zarr or GRIB file (starts with {head!r})")
    errors = []
    for engine in engines:
        kwargs: dict[str, Any] = {"indexpath": ""} if engine == "cfgrib" else {}
        try:
            ds = xr.open_dataset(path, engine=engine, chunks={}, backend_kwargs=kwargs or None)
        except Exception as err:
            errors.append(f"{engine}: {_one_line(err)}")
            continue
        return _grib_longitudes(ds) if engine == "cfgrib" else ds
    raise DataError(path, f"cannot read file ({'; '.join(errors)})")


def _grib_longitudes(ds: xr.Dataset) -> xr.Dataset:
    """The columns of a regular lat/lon GRIB grid in scan order, from its grid definition.

    cfgrib labels them with ecCodes' ``distinctLongitudes``, which are sorted: right for most
    grids, but a grid crossing 0 (GRIB encodes longitudes in [0, 360), so -10..2 is 350..2)
    gets the labels 2, 350, 354, ... on data that run 350, 354, ..., 2 (the same fault at 180
    is ecmwf/cfgrib#402). Other grids are returned unchanged."""
    if "longitude" not in ds.dims:
        return ds
    keys = ("GRIB_Nx", "GRIB_longitudeOfFirstGridPointInDegrees",
            "GRIB_iDirectionIncrementInDegrees", "GRIB_iScansNegatively")  # fmt: skip
    grids = {
        tuple(float(v.attrs[k]) for k in keys)
        for v in ds.data_vars.values()
        if v.attrs.get("GRIB_gridType") == "regular_ll" and all(k in v.attrs for k in keys)
    }
    if len(grids) != 1:
        return ds
    n, first, step, negative = next(iter(grids))
    lon = first + np.arange(int(n)) * (-step if negative else step)
    have = np.asarray(ds["longitude"].values, dtype=np.float64)
    if lon.size != have.size or not np.allclose(np.sort(lon % 360), np.sort(have % 360)):
        return ds  # not the grid the labels came from: leave them alone
    return ds.assign_coords(longitude=("longitude", lon, ds["longitude"].attrs))


def _open_url(url: str, storage_options: dict[str, Any] | None) -> xr.Dataset:
    """A zarr store behind any fsspec URL (gs://, s3://, https://, memory://), lazily."""
    try:
        return xr.open_zarr(url, storage_options=storage_options)
    except Exception as err:
        raise DataError(url, f"cannot open as a zarr store ({_one_line(err)})") from err


def _open_canonical(
    source: Source | Sequence[Source],
    storage_options: dict[str, Any] | None,
    require_time: bool = True,
) -> xr.Dataset:
    """Open and canonicalise one source, or several files combined along ``time``."""
    if isinstance(source, (str, PathLike)):
        if _is_url(source):
            return canonicalize(_open_url(str(source), storage_options), str(source), require_time)
        path = Path(str(source).removeprefix("file://"))
        return canonicalize(_open_file(path), str(path), require_time)
    paths = [str(s) for s in source]
    if not paths:
        raise DataError("source", "empty list of files")
    if len(paths) == 1:
        return _open_canonical(paths[0], storage_options, require_time)
    parts = [(p, _open_canonical(p, storage_options, True)) for p in paths]
    parts.sort(key=lambda item: item[1].indexes["time"][0])
    for (prev, a), (name, b) in itertools.pairwise(parts):
        if b.indexes["time"][0] <= a.indexes["time"][-1]:
            raise DataError(name, f"times overlap or duplicate those of {prev}")
    opts: dict[str, Any] = {"data_vars": "minimal", "coords": "minimal", "compat": "override"}
    try:
        return xr.concat(
            [d for _, d in parts], "time", join="exact", combine_attrs="override", **opts
        )
    except ValueError as err:
        raise DataError(", ".join(paths), f"files cannot be combined ({_one_line(err)})") from err


def open_weather(
    source: Source | Sequence[Source],
    *,
    variables: str | Sequence[str] | None = None,
    levels: float | Sequence[float] | None = None,
    storage_options: dict[str, Any] | None = None,
    check_values: bool = True,
) -> xr.Dataset:
    """Open gridded weather data lazily in the canonical form.

    ``source``: a netCDF file (or a list, combined along ``time``), a zarr store directory, any
    fsspec URL of a zarr store (``gs://``, ``s3://``, ``memory://``; ``storage_options`` go to
    fsspec, e.g. ``{"token": "anon"}``), or a GRIB file (needs ``pip install stdiff[grib]``).
    ``variables`` / ``levels`` select data variables and values of ``level`` (in the file's units,
    usually hPa). Returns dims ``time, lat, lon`` (+ ``level``), lat/lon in degrees, float32
    variables with ``units`` attrs, dask-backed. With ``check_values`` each selected variable is
    probed (first, middle and last time step) and must not be all NaN.
    """
    where = str(source) if isinstance(source, (str, PathLike)) else ", ".join(map(str, source))
    ds = _open_canonical(source, storage_options)
    if variables is not None:
        names = [variables] if isinstance(variables, str) else list(variables)
        missing = [n for n in names if n not in ds.data_vars]
        if missing:
            avail = sorted(map(str, ds.data_vars))
            raise DataError(where, f"variable(s) {missing} not found; available: {avail}")
        ds = ds[names]
    if levels is not None:
        if "level" not in ds.dims:
            raise DataError(where, "levels were requested but the data has no level dimension")
        have = np.asarray(ds["level"].values, dtype=np.float64)
        wanted = np.atleast_1d(np.asarray(levels, dtype=np.float64))
        absent = [float(v) for v in wanted if not np.isclose(have, v).any()]
        if absent:
            raise DataError(where, f"level(s) {absent} not found; available: {have.tolist()}")
        ds = ds.isel(level=[int(np.flatnonzero(np.isclose(have, v))[0]) for v in wanted])
    if check_values:
        _check_not_all_nan(ds, where)
    ds.attrs.update(kind="weather", source=where)
    return ds


def _check_not_all_nan(ds: xr.Dataset, where: str) -> None:
    """Raise if a data variable is NaN at every probed point (a few time steps, read lazily)."""
    probes = {}
    for name, da in ds.data_vars.items():
        if "time" in da.dims and da.sizes["time"] > 3:
            n = da.sizes["time"]
            steps = [0, n // 2, n - 1] if da.size // n * 3 <= _PROBE_LIMIT else [n // 2]
            da = da.isel(time=steps)
        probes[name] = da.notnull().any()
    values = dask.compute(*probes.values())
    bad = [str(n) for n, v in zip(probes, values, strict=True) if not bool(v)]
    if bad:
        raise DataError(where, f"variable(s) {bad} contain only NaN")


def _cf_axis(var: xr.Variable) -> str | None:
    attrs = {k: str(v).lower() for k, v in var.attrs.items() if isinstance(v, str)}
    for axis, (standard, units, letter) in _CF_HINTS.items():
        if attrs.get("standard_name") in standard or attrs.get("units") in units:
            return axis
        if attrs.get("axis") == letter.lower():
            return axis
    return None


def _rank(name: Hashable, axis: str) -> int | None:
    key = str(name).lower()
    return _ALIASES[axis].index(key) if key in _ALIASES[axis] else None


def _separable(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Replace 2-D lat/lon coordinates of a regular grid by 1-D ones; reject curvilinear grids."""
    for axis in ("lat", "lon"):
        for name in [n for n in ds.variables if _rank(n, axis) is not None]:
            var = ds.variables[name]
            if var.ndim != 2:
                continue
            values = np.asarray(var.values, dtype=np.float64)
            if np.allclose(values, values[:, :1]):
                dim, line = var.dims[0], values[:, 0]
            elif np.allclose(values, values[:1, :]):
                dim, line = var.dims[1], values[0, :]
            else:
                raise DataError(where, f"{name} is 2-D (curvilinear grid); regrid it first")
            ds = ds.drop_vars(name).assign_coords({name: (dim, line, var.attrs)})
    return ds


def _find_axis(ds: xr.Dataset, axis: str, taken: set[Hashable]) -> tuple[Hashable | None, Hashable]:
    """(coordinate variable or None, dimension) holding ``axis``, or raise KeyError."""
    ranked = [
        (r, str(n), n)
        for n, v in ds.variables.items()
        if v.ndim == 1 and v.dims[0] not in taken and (r := _rank(n, axis)) is not None
    ]
    if ranked:
        name = min(ranked)[2]
        return name, ds.variables[name].dims[0]
    for name, var in ds.coords.items():
        cf = _cf_axis(var.variable) or ("time" if var.dtype.kind == "M" else None)
        if var.ndim == 1 and var.dims[0] not in taken and cf == axis:
            return name, var.dims[0]
    dims = [(r, str(d), d) for d in ds.dims if d not in taken and (r := _rank(d, axis)) is not None]
    if dims:
        return None, min(dims)[2]
    raise KeyError(axis)


def _rename_axes(ds: xr.Dataset, where: str) -> xr.Dataset:
    taken: set[Hashable] = set()
    for axis in ("time", "lat", "lon", "level"):
        try:
            name, dim = _find_axis(ds, axis, taken)
        except KeyError:
            scalar = [n for n in ds.coords if ds[n].ndim == 0 and _rank(n, axis) is not None]
            if axis == "time" and scalar:  # a single-time file (e.g. GRIB analysis)
                ds = ds.rename_vars({scalar[0]: "time"}) if scalar[0] != "time" else ds
                ds = ds.expand_dims("time")
                taken.add("time")
            continue
        var = ds.variables[name] if name is not None else None
        drop = [n for n in (name, dim, axis) if n is not None and n in ds.variables]
        clash = [n for n in drop if n not in (name, dim) and ds.variables[n].ndim > 0]
        if clash:
            raise DataError(where, f"ambiguous {axis}: both {name or dim!r} and {clash[0]!r}")
        ds = ds.drop_vars(list(dict.fromkeys(drop)))
        if dim != axis:
            ds = ds.rename_dims({dim: axis})
        if var is not None:
            coord = xr.Variable(axis, var.values, var.attrs, var.encoding)
            ds = ds.assign_coords({axis: coord})
        taken.add(axis)
    return ds


def _standard_calendar(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Times of a model calendar (``noleap``, ``360_day``, ...: CMIP runs) on the standard one,
    each keeping its date; dates the standard calendar lacks (30 February) are left out, those
    only it has (29 February) are gaps, which no window straddles (``windows.regular_runs``)."""
    index = ds.indexes.get("time")
    if not isinstance(index, xr.CFTimeIndex):
        return ds
    cal = str(index.calendar)
    align = "date" if cal == "360_day" else None
    try:
        out = ds.convert_calendar("proleptic_gregorian", align_on=align, use_cftime=False)
    except (ValueError, TypeError, OverflowError) as err:
        raise DataError(
            where,
            f"times in the {cal!r} calendar cannot be put on the standard calendar "
            f"({_one_line(err)}); keep the years 1678-2261 or convert the times first",
        ) from err
    out.attrs["calendar_converted_from"] = cal
    return out


def _check_time(ds: xr.Dataset, where: str) -> None:
    index = ds.indexes["time"]
    if index.has_duplicates:
        first = index[index.duplicated()][0]
        raise DataError(where, f"duplicated timestamp {first} in time")
    if not index.is_monotonic_increasing:
        i = int(np.flatnonzero(~(index[1:] > index[:-1]))[0])
        raise DataError(where, f"time is not increasing: {index[i]} is followed by {index[i + 1]}")


def _sort_lat(ds: xr.Dataset, where: str) -> xr.Dataset:
    lat = np.asarray(ds["lat"].values, dtype=np.float64)
    if np.unique(lat).size != lat.size:
        raise DataError(where, "duplicated latitudes")
    if np.any(np.abs(lat) > 90):
        raise DataError(where, f"latitudes outside [-90, 90] (min {lat.min()}, max {lat.max()})")
    if lat.size > 1 and np.all(np.diff(lat) < 0):
        ds = ds.isel(lat=slice(None, None, -1))
    elif lat.size > 1 and not np.all(np.diff(lat) > 0):
        ds = ds.sortby("lat")
    attrs = {**ds["lat"].attrs, "units": "degrees_north"}
    return ds.assign_coords(lat=("lat", np.asarray(ds["lat"].values, np.float64), attrs))


def is_global_lon(lon: Any) -> bool:
    """Whether longitudes (degrees, any order, any convention) go all the way round: no gap
    between neighbouring columns, taken circularly, wider than 1.5 times the median spacing. Only
    such grids are periodic in longitude (regridding across the seam, circular padding)."""
    x = np.sort(np.mod(np.asarray(lon, dtype=np.float64).ravel(), 360.0))
    if x.size < 3:
        return False
    gaps = np.diff(np.concatenate([x, [x[0] + 360.0]]))
    return bool(gaps.max() <= 1.5 * np.median(gaps))


def _wrap_lon(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Longitudes ascending and contiguous, sorted by a lazy roll (or a sort for scattered
    columns): a global grid in [0, 360); a regional grid from its western edge (the column after
    the widest gap), in [0, 360) unless it crosses 0, where its western columns become negative
    (so a grid over -10..2 keeps -10..2, in (-180, 180] unless it also crosses 180)."""
    raw = np.asarray(ds["lon"].values, dtype=np.float64)
    lon = np.mod(raw, 360.0)
    lon[lon >= 360.0] = 0.0  # np.mod(-1e-20, 360) rounds to 360
    if lon.size > 1 and np.isclose(lon[-1], lon[0]) and np.isclose(abs(raw[-1] - raw[0]), 360):
        ds, lon = ds.isel(lon=slice(None, -1)), lon[:-1]  # periodic end column repeated
    if np.unique(lon).size != lon.size:
        raise DataError(where, "duplicated longitudes (modulo 360)")
    if lon.size > 1 and not is_global_lon(lon):
        ordered = np.sort(lon)
        gaps = np.diff(np.concatenate([ordered, [ordered[0] + 360.0]]))
        west = ordered[(int(np.argmax(gaps)) + 1) % ordered.size]
        lon = np.where(lon >= west, lon - 360.0, lon) if west > ordered[0] else lon
    attrs = {**ds["lon"].attrs, "units": "degrees_east"}
    ds = ds.assign_coords(lon=("lon", lon, attrs))
    shift = int(np.argmin(lon))
    if np.all(np.diff(np.roll(lon, -shift)) > 0):
        return ds.roll(lon=-shift, roll_coords=True) if shift else ds
    return ds.sortby("lon")


def canonicalize(ds: xr.Dataset, where: str, require_time: bool = True) -> xr.Dataset:
    """Rename, order and decode ``ds`` into the canonical weather form (see module docstring).

    Dims/coords named e.g. latitude/LAT/y/FNOCY/nav_lat, longitude/x/FNOCX, TIME/valid_time/t,
    lev/plev/isobaricInhPa/pressure_level/depth become ``lat, lon, time, level``; lat ascending; lon
    mapped to [0, 360) (a regional grid crossing 0 to negative western longitudes, so it stays
    contiguous) and rolled into order; packed integers decoded (scale_factor/add_offset)
    and data variables cast to float32 keeping ``units``; bounds/helper variables (those without
    both lat and lon) dropped, static (lat, lon) fields kept. ``where`` names the file in errors.
    """
    if any(k in v.attrs for v in ds.variables.values() for k in _PACKING):
        ds = xr.decode_cf(ds, decode_times=False, decode_timedelta=False)
    ds = _standard_calendar(_rename_axes(_separable(ds, where), where), where)
    needed = ("time", "lat", "lon") if require_time else ("lat", "lon")
    missing = [d for d in needed if d not in ds.dims]
    if missing:
        raise DataError(
            where, f"no {'/'.join(missing)} dimension (dims: {list(map(str, ds.dims))})"
        )
    for axis in ("time", "lat", "lon"):
        if axis in ds.dims and axis not in ds.coords:
            raise DataError(where, f"dimension {axis} has no coordinate values")
    if "time" in ds.dims:
        _check_time(ds, where)
    ds = _wrap_lon(_sort_lat(ds, where), where).transpose(..., "lat", "lon")
    bounds = {
        str(v.attrs[k])
        for v in ds.variables.values()
        for k in ("bounds", "climatology")
        if k in v.attrs
    }
    helpers = [
        n
        for n, v in ds.variables.items()
        if n not in ds.dims
        and (str(n) in bounds or str(n).endswith(("_bnds", "_bounds")) or "bnds" in v.dims)
    ]
    helpers += [n for n, v in ds.data_vars.items() if not {"lat", "lon"} <= set(v.dims)]
    ds = ds.drop_vars(list(dict.fromkeys(helpers)))
    if not ds.data_vars:
        raise DataError(where, "no data variable on the (lat, lon) grid")
    for name, da in ds.data_vars.items():
        if da.dtype.kind not in "fiub":
            raise DataError(where, f"variable {name} is not numeric ({da.dtype})")
        ds[name] = as_float32(da)
        ds[name].encoding = {}
    ds.attrs.update(kind="weather", source=where)
    return ds


def _float32(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign({n: as_float32(v) for n, v in ds.data_vars.items()})


def coarsen(
    ds: xr.Dataset, factor: int | tuple[int, int], *, boundary: Literal["exact", "trim"] = "exact"
) -> xr.Dataset:
    """Block mean over ``factor`` x ``factor`` (or (lat, lon) factors) grid cells.

    Coordinates become the block means of lat/lon (degrees). With ``boundary="exact"`` each factor
    must divide the grid size; ``"trim"`` drops the leftover rows/columns. NaNs are skipped.
    """
    f_lat, f_lon = (factor, factor) if isinstance(factor, int) else factor
    for dim, f in (("lat", f_lat), ("lon", f_lon)):
        if f < 1:
            raise DataError("--coarsen", f"the factor must be at least 1, got {f}")
        n = ds.sizes[dim]
        if boundary == "exact" and n % f:
            fits = [d for d in range(2, n + 1) if n % d == 0][:6]
            raise DataError(
                "--coarsen",
                f"{f} does not divide {dim} size {n}; choose one that does "
                f"({', '.join(map(str, fits)) or 'none'}) or 1 for no coarsening",
            )
    out = ds.coarsen(lat=f_lat, lon=f_lon, boundary=boundary).mean(keep_attrs=True)
    return _float32(out)


def lon_onto(lon: Any, grid: Any) -> np.ndarray:
    """Longitudes ``lon`` (degrees, any convention) in the convention of the canonical ``grid``:
    [0, 360) for a global grid, else [west, west + 360) from the grid's western edge (so -5 and
    355 both become -5 on a grid over -10..2). Values already in that range are kept exactly."""
    grid = np.asarray(grid, dtype=np.float64)
    west = 0.0 if is_global_lon(grid) else float(grid.min())
    x = np.asarray(lon, dtype=np.float64).ravel()
    away = (x < west - 1e-9) | (x >= west + 360.0)
    return np.where(away, west + np.mod(x - west + 1e-9, 360.0) - 1e-9, x)


def regrid(ds: xr.Dataset, lat: Any, lon: Any) -> xr.Dataset:
    """Bilinear interpolation onto ``lat`` x ``lon`` (1-D, degrees), periodic in longitude.

    A global grid (:func:`is_global_lon`) is padded with one column on each side across 0/360 so
    targets between the last and first source longitude interpolate across the seam; targets in
    any longitude convention are mapped onto the source's (a regional grid may cross 0). Targets
    outside the source latitude range (or outside a regional longitude range) are NaN. Data variables stay float32.
    """
    new_lat = np.asarray(lat, dtype=np.float64).ravel()
    src_lon = np.asarray(ds["lon"].values, dtype=np.float64)
    new_lon = lon_onto(lon, src_lon)
    src = ds
    if is_global_lon(src_lon):
        left = ds.isel(lon=[-1]).assign_coords(lon=[src_lon[-1] - 360.0])
        right = ds.isel(lon=[0]).assign_coords(lon=[src_lon[0] + 360.0])
        src = xr.concat([left, ds, right], dim="lon", data_vars="minimal", coords="minimal")
    return _interp_dim(_interp_dim(src, "lat", new_lat), "lon", new_lon)


def _interp_dim(ds: xr.Dataset, dim: str, dst: np.ndarray) -> xr.Dataset:
    """Linear interpolation along one sorted dim (lazy: two gathers and a weighted sum)."""
    src = np.asarray(ds[dim].values, dtype=np.float64)
    if src.size < 2:
        raise DataError("regrid", f"source grid needs at least 2 points along {dim}")
    hi = np.clip(np.searchsorted(src, dst, side="right"), 1, src.size - 1)
    lo = hi - 1
    w = xr.DataArray(np.clip((dst - src[lo]) / (src[hi] - src[lo]), 0.0, 1.0), dims=dim)
    inside = xr.DataArray((dst >= src[0]) & (dst <= src[-1]), dims=dim)
    fields = {n: v for n, v in ds.data_vars.items() if dim not in v.dims}
    for name, da in ds.data_vars.items():
        if dim in da.dims:
            a, b = (da.drop_vars(dim).isel({dim: i}) for i in (lo, hi))
            mixed = (a * (1 - w) + b * w).where(w != 0, a).where(w != 1, b).where(inside)
            fields[name] = mixed.astype(np.float32).assign_attrs(da.attrs)
    coords = {n: c for n, c in ds.coords.items() if dim not in c.dims}
    coords[dim] = xr.Variable(dim, dst, ds[dim].attrs)
    return xr.Dataset(fields, coords=coords, attrs=ds.attrs)


def calendar_features(ds: xr.Dataset) -> xr.Dataset:
    """Cyclic time encodings over ``time`` (float32, dimensionless, UTC).

    ``hour_sin/hour_cos``: angle 2*pi*(hour + minute/60 + second/3600)/24, so 06 UTC gives sin 1.
    ``doy_sin/doy_cos``: angle 2*pi*(day_of_year - 1 + hour/24)/365.25 (a 365.25-day year), so
    1 January 00 UTC gives (0, 1).
    """
    if "time" not in ds.coords:
        raise DataError(ds.attrs.get("source", "dataset"), "no time coordinate")
    t = ds["time"].dt
    hours = (t.hour + t.minute / 60 + t.second / 3600).astype(np.float64)
    day = (t.dayofyear - 1).astype(np.float64) + hours / 24
    angles = {"hour": 2 * np.pi * hours / 24, "doy": 2 * np.pi * day / 365.25}
    out = xr.Dataset(coords={"time": ds["time"]})
    for key, angle in angles.items():
        out[f"{key}_sin"] = np.sin(angle).astype(np.float32).assign_attrs(units="1")
        out[f"{key}_cos"] = np.cos(angle).astype(np.float32).assign_attrs(units="1")
    return out


def latitude_bounds(lat: Any) -> np.ndarray:
    """``(n + 1,)`` cell edges in degrees north, ascending, of latitude rows ``lat`` (degrees, any
    order, any spacing): midpoints between neighbours, and the outer edges half a grid step (the
    nearest spacing) beyond the first and last rows, clipped at the poles. A grid that reaches a
    pole, or comes within half a step of it, closes its outer cell there; a regional grid does
    not. A single row spans 1 degree."""
    rows = np.sort(np.asarray(lat, dtype=np.float64).ravel())
    if rows.size == 0:
        raise DataError("lat", "no latitude rows")
    if rows.size == 1:
        inner, lo, hi = np.empty(0), rows[0] - 0.5, rows[0] + 0.5
    else:
        inner = (rows[:-1] + rows[1:]) / 2
        lo, hi = rows[0] - (rows[1] - rows[0]) / 2, rows[-1] + (rows[-1] - rows[-2]) / 2
    return np.clip(np.concatenate([[lo], inner, [hi]]), -90.0, 90.0)


def latitude_weights(lat: xr.DataArray | Any) -> xr.DataArray:
    """Area weights of latitude rows from cell bounds, normalised to mean 1 (``lat`` in degrees,
    either order, uniform or not): a row's cell spans from the midpoints to its neighbours, the
    outer cells close half a grid step beyond the last rows (:func:`latitude_bounds`; at the poles
    only for a grid that reaches them), and its weight is ``sin(upper) - sin(lower)``, the exact
    area of the band. On a global equiangular grid with pole rows this is WeatherBench 2's
    ``metrics.get_lat_weights`` (Rasp et al. 2024); on any equiangular grid without pole rows it
    is cos(lat) up to a constant to second order in the step. (Closing a regional grid's outer
    cells at the poles, as a global rule would, gives NCEP's 15N row 64 % of the total.)"""
    values = np.asarray(lat, dtype=np.float64)
    coords = lat.coords if isinstance(lat, xr.DataArray) else {"lat": values}
    order = np.argsort(values)
    bounds = np.deg2rad(latitude_bounds(values))
    w = np.empty_like(values)
    w[order] = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    return xr.DataArray(w / w.mean(), dims=("lat",), coords=coords, name="latitude_weight")


def static_fields(
    ds: xr.Dataset, extra: xr.Dataset | xr.DataArray | Source | None = None
) -> xr.Dataset:
    """Static conditioning fields over (lat, lon), float32, dimensionless unless ``extra`` says.

    ``lat_sin, lat_cos, lon_sin, lon_cos`` of the grid, plus every variable of ``extra`` (a
    dataset, a named data array, or a file/store path, e.g. a land-sea mask), canonicalised,
    taken at its single time step if it has one, and regridded bilinearly onto ``ds``'s grid.
    """
    lat, lon = xr.broadcast(np.deg2rad(ds["lat"]), np.deg2rad(ds["lon"]))
    trig = {
        f"{n}_{f.__name__}": f(a) for n, a in (("lat", lat), ("lon", lon)) for f in (np.sin, np.cos)
    }
    out = xr.Dataset({k: v.astype(np.float32).assign_attrs(units="1") for k, v in trig.items()})
    if extra is None:
        return out
    if isinstance(extra, xr.DataArray):
        extra = extra.to_dataset(name=extra.name or "extra")
    if isinstance(extra, xr.Dataset):
        where = str(extra.attrs.get("source", "extra static fields"))
        fields = canonicalize(extra, where, require_time=False)
    else:
        where = str(extra)
        fields = _open_canonical(extra, None, require_time=False)
    if "time" in fields.dims:
        if fields.sizes["time"] != 1:
            raise DataError(where, f"static field has {fields.sizes['time']} time steps, not 1")
        fields = fields.isel(time=0, drop=True)
    same = fields.sizes["lat"] == ds.sizes["lat"] and fields.sizes["lon"] == ds.sizes["lon"]
    if not (
        same and np.allclose(fields["lat"], ds["lat"]) and np.allclose(fields["lon"], ds["lon"])
    ):
        fields = regrid(fields, ds["lat"].values, ds["lon"].values)
    fields = fields.assign_coords(lat=ds["lat"], lon=ds["lon"])
    return xr.merge([out, _float32(fields)], compat="override", combine_attrs="drop_conflicts")
