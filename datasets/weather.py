"""Gridded weather data (netCDF, zarr, cloud zarr, GRIB) as canonical, lazy ``xarray.Dataset``s.

Canonical weather form (see :mod:`datasets`): dims ``time, lat, lon`` (+ ``level``), ``lat`` in
degrees north ascending, ``lon`` in degrees east ascending and contiguous (a global grid in
[0, 360); a regional grid from its western edge, with negative western longitudes when it crosses
0, e.g. -10..2; :func:`is_global_lon` tells them apart), data variables float32 with
their physical ``units`` in ``attrs`` (e.g. K for temperature), dataset attrs ``kind="weather"`` and
``source``. Static fields over ``(lat, lon)`` (orography, land-sea mask) are kept. Everything stays
dask-backed: nothing reads the bulk of a store until the caller computes.

Sources: one file or store; several files, or a folder of netCDF / GRIB files, split by time
(joined along it) and/or by variable (merged when their times agree, as ERA5 downloads come).
The canonicalisation itself is :mod:`datasets.weather_canon`.

Functions: :func:`open_weather`, :func:`canonicalize`, :func:`coarsen`, :func:`regrid`,
:func:`calendar_features`, :func:`is_global_lon`, :func:`lon_onto`, :func:`latitude_bounds`,
:func:`latitude_weights`, :func:`static_fields` (and, for ingest, ``datasets.weather_ingest``).
Every malformed input raises :class:`datasets.errors.DataError` naming the file.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.store import as_float32
from stdiff.datasets.weather_canon import canonicalize, is_global_lon

Source = str | PathLike[str]

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
            raise DataError(
                path, "folder is neither a zarr store (no zarr.json) nor holds netCDF / GRIB files"
            )
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
        files = _grid_files(path)
        if files:
            return _open_canonical(files, storage_options, require_time)
        return canonicalize(_open_file(path), str(path), require_time)
    paths = [str(s) for s in source]
    if not paths:
        raise DataError("source", "empty list of files")
    if len(paths) == 1:
        return _open_canonical(paths[0], storage_options, require_time)
    parts = [(p, _open_canonical(p, storage_options, True)) for p in paths]
    groups: dict[frozenset, list[tuple[str, xr.Dataset]]] = {}
    for name, ds in parts:  # files split by time share variables; split by variable, times
        varying = frozenset(str(n) for n, v in ds.data_vars.items() if "time" in v.dims)
        groups.setdefault(varying, []).append((name, ds))  # static fields may repeat
    shared = [v for a, b in itertools.combinations(groups, 2) for v in sorted(a & b)]
    if shared:
        raise DataError(", ".join(paths), f"variable {shared[0]!r} is in files that hold different "
                        "variables; give each variable once per time")  # fmt: skip
    try:
        joined = [_along_time(group) for group in groups.values()]
        if len(joined) == 1:
            return joined[0]
        first = joined[0]
        for ds in joined[1:]:
            if not first.indexes["time"].equals(ds.indexes["time"]):
                a, b = (", ".join(sorted(map(str, d.data_vars))) for d in (first, ds))
                raise DataError(", ".join(paths), f"the files of {a} and of {b} cover different "
                                "times; give files that cover the same times")  # fmt: skip
        return xr.merge(joined, join="exact", compat="override", combine_attrs="override")
    except DataError:
        raise
    except ValueError as err:
        raise DataError(", ".join(paths), f"files cannot be combined ({_one_line(err)})") from err


_GRID_SUFFIXES = {".nc", ".nc4", ".netcdf", ".cdf", ".grib", ".grb", ".grib2", ".grb2"}


def _grid_files(path: Path) -> list[str]:
    """The netCDF / GRIB files of a folder that is not a zarr store (one per year, or per
    variable as ERA5 downloads come), sorted; an empty list for anything else."""
    markers = (".zgroup", ".zarray", ".zmetadata", "zarr.json")
    if not path.is_dir() or any((path / m).exists() for m in markers):
        return []
    return sorted(
        str(q)
        for q in path.iterdir()
        if q.is_file() and not q.name.startswith(".") and q.suffix.lower() in _GRID_SUFFIXES
    )


def _along_time(parts: list[tuple[str, xr.Dataset]]) -> xr.Dataset:
    """Files holding the same variables, joined along ``time`` (overlaps refused)."""
    if len(parts) == 1:
        return parts[0][1]
    parts = sorted(parts, key=lambda item: item[1].indexes["time"][0])
    for (prev, a), (name, b) in itertools.pairwise(parts):
        if b.indexes["time"][0] <= a.indexes["time"][-1]:
            raise DataError(name, f"times overlap or duplicate those of {prev}")
    opts: dict[str, Any] = {"data_vars": "minimal", "coords": "minimal", "compat": "override"}
    return xr.concat([d for _, d in parts], "time", join="exact", combine_attrs="override", **opts)


def open_weather(
    source: Source | Sequence[Source],
    *,
    variables: str | Sequence[str] | None = None,
    levels: float | Sequence[float] | None = None,
    storage_options: dict[str, Any] | None = None,
    check_values: bool = True,
) -> xr.Dataset:
    """Open gridded weather data lazily in the canonical form.

    ``source``: a netCDF file (or a list or a folder of them, joined along ``time`` and merged
    across variables), a zarr store directory, any
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
