"""Series kept as xarray (a netCDF file, a zarr store) read as a table for ``--kind timeseries``:
variables over ``time`` alone (one series), or over ``(time, station)`` with any name for the
station dimension (``site``, ``sensor``, ``node``, ...). The station dimension becomes a
``station`` column (so the per-station reader makes ``station/variable`` features), and its
latitude / longitude coordinates become site coordinates. Variables without ``time`` (static
fields such as an elevation) are left out; a variable over another dimension as well is
refused, naming it. The time dimension is found by name (``time``, ``valid_time``, ``date``,
``t``) or as the one holding datetimes, and is named ``time`` in the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.errors import one_line as _why

__all__ = ["LATITUDES", "LONGITUDES", "read_xarray_table"]

LATITUDES, LONGITUDES = ("lat", "latitude"), ("lon", "long", "longitude", "lng")

_TIME = ("time", "valid_time", "date", "datetime", "t")


def read_xarray_table(path: Path) -> pd.DataFrame:
    """The series in the netCDF file or zarr store ``path`` as a long table (see the module)."""
    try:
        ds = xr.open_zarr(path) if path.is_dir() else xr.open_dataset(path)
    except Exception as exc:
        raise DataError(path, f"cannot open as netCDF or zarr ({_why(exc)})") from None
    if "stdiff_version" in ds.attrs:
        raise DataError(path, f"already a stdiff {ds.attrs.get('kind', '')} store: pass it to "
                              "train / impute / forecast as it is")  # fmt: skip
    time = _time_dim(path, ds)
    series = [n for n, v in ds.data_vars.items() if time in v.dims]
    if not series:
        raise DataError(path, f"no variable over {time!r}")
    others = {d for n in series for d in ds[n].dims if d != time}
    if len(others) > 1 and sum(_is_position(d) for d in others) == 2:
        raise DataError(path, f"a gridded field over {sorted(map(str, others))}: ingest it with "
                              "--kind weather")  # fmt: skip
    if len(others) > 1:
        bad = next(n for n in series if len(ds[n].dims) > 2 or set(ds[n].dims) - {time} != others)
        raise DataError(path, f"variable {bad!r} is over {ds[bad].dims}; one dimension besides "
                              f"{time!r} (the stations) is read; leave it out with --variables")  # fmt: skip
    if others:
        station = others.pop()
        where = [n for n in ds.variables if ds[n].dims == (station,) and _is_position(n)]
        ds = _coordinates_as_columns(ds[series + [n for n in where if n in ds.data_vars]], station)
        ds = ds.rename({station: "station"})
    else:
        ds = ds[series]
    frame = ds.to_dataframe().reset_index()
    frame = frame.rename(columns={time: "time"}) if "time" not in frame.columns else frame
    return frame


def _time_dim(path: Path, ds: xr.Dataset) -> str:
    for name in ds.dims:
        if str(name).lower() in _TIME:
            return str(name)
    dated = [
        str(d) for d in ds.dims if d in ds.coords and np.issubdtype(ds[d].dtype, np.datetime64)
    ]
    if len(dated) == 1:
        return dated[0]
    raise DataError(path, f"no time dimension (dims: {list(map(str, ds.dims))})")


def _is_position(name) -> bool:
    return str(name).lower() in LATITUDES + LONGITUDES


def _coordinates_as_columns(ds: xr.Dataset, station: str) -> xr.Dataset:
    """Keep the station dimension's labels and its positions (lat / lon, as coordinates or as
    variables) as columns; other coordinates are dropped."""
    extra = [n for n, c in ds.coords.items() if c.dims == (station,) and _is_position(n)]
    out = ds.reset_coords(extra)
    return out.drop_vars([n for n in out.coords if n not in out.dims])
