"""The canonical weather form's names and order (see :mod:`datasets.weather`): axes found under
their many names (latitude/LAT/y/FNOCY/nav_lat, TIME/valid_time, lev/plev/isobaricInhPa, ...) or
by CF hints, regular 2-D coordinates made 1-D, non-standard calendars converted, latitudes
ascending, longitudes contiguous, packed integers decoded, data variables float32."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.store import as_float32

__all__ = ["canonicalize", "is_global_lon"]

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
    both lat and lon) dropped, static (lat, lon) fields kept; ERA5's ``expver`` dimension
    (final ERA5 and the preliminary ERA5T in one download) merged. ``where`` names the file in
    errors.
    """
    if any(k in v.attrs for v in ds.variables.values() for k in _PACKING):
        ds = xr.decode_cf(ds, decode_times=False, decode_timedelta=False)
    ds = _merge_expver(ds)
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


def _merge_expver(ds: xr.Dataset) -> xr.Dataset:
    """ERA5 downloads that reach the last months carry an ``expver`` dimension: 1 (final ERA5)
    where it exists, 5 (ERA5T) after, NaN in the other: merged into one field, final first."""
    if "expver" not in ds.dims:
        return ds
    parts = [ds.isel(expver=k, drop=True) for k in range(ds.sizes["expver"])]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.combine_first(part)
    return merged.assign_attrs(ds.attrs)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"
