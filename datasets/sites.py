"""One long series over many sites (a sensor network) from per-site CSV / Parquet files.

The files (a folder of them, several paths, or one file holding every site) are wide tables: a
time column, or split ``time_columns`` (e.g. ``year, month, day, hour``), the variables, and the
site either in a column (``station_column``; by default ``station`` when every file has one) or,
without one, in the file name (its stem). They become one canonical ``timeseries`` Dataset with
dims ``(time, feature)``, one feature per (station, variable) pair named ``"<station>/<variable>"``
(stations sorted, variables in column order), non-dimension coordinates ``station`` and
``variable`` along ``feature``, ``values`` float32 (NaN = missing) and the real ``observed_mask``.

Why ``(time, feature)`` and not ``(time, station, variable)``: it is the layout of every other
table store, the one CSDI's network takes (K features attend to each other, so stations and
variables are related alike) and the one the normalisation statistics, checkpoints and
imputation outputs already index; the ``station`` / ``variable`` coordinates give the structure
back (``ds.set_index(feature=["station", "variable"]).unstack("feature")``).

The time axis is the sorted union of every site's times; with ``freq`` (a pandas frequency such as
``"1h"``) it is the full regular grid from the first to the last time, and a time off that grid
is an error (one table without stations too: the steps it lacks become empty rows). A
(station, variable) pair without a single value is left out and listed in the
attribute ``empty_features``. Text columns are refused, dropped or one-hot encoded
(``categorical``; :func:`datasets.tabular.encode_columns`), so every site gets the same
categories. A site with two rows at one time is an error naming its file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.outputs import check_fits
from stdiff.datasets.table_files import (
    _CSV,
    KINDS_TEXT,
    is_table_file,
    is_zarr_store,
)
from stdiff.datasets.table_files import read_table_file as _read
from stdiff.datasets.tabular import Categorical, _numeric, encode_columns
from stdiff.datasets.timecols import compose_time, parse_times, show_time, with_time_column
from stdiff.datasets.xarray_tables import LATITUDES, LONGITUDES

__all__ = [
    "attach_site_coords",
    "is_table_file",
    "load_series",
    "load_sites",
    "read_site_coords",
    "table_files",
]

_FILE = "__file__"


def table_files(sources: Sequence[str | Path]) -> list[Path]:
    """The table files of ``sources`` (files, or folders whose table files are taken sorted)."""
    files: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir() and is_zarr_store(src):  # a zarr store of series: one table
            files.append(src)
        elif src.is_dir():
            found = sorted(p for p in src.iterdir() if is_table_file(p))
            if not found:
                raise DataError(
                    src, "folder holds no table files (CSV, Parquet, Excel, JSON, HDF5, netCDF)"
                )
            files.extend(found)
        elif src.is_file():
            if not is_table_file(src):
                raise DataError(src, f"neither {KINDS_TEXT} by its extension")
            files.append(src)
        else:
            raise DataError(src, "no such file or folder")
    if len(set(files)) != len(files):
        raise DataError(files[0], "the same file is given twice")
    return files


def _station_column(frames: list[tuple[Path, pd.DataFrame]], given: str | None) -> str | None:
    if given is not None:
        for path, frame in frames:
            if given not in frame.columns:
                raise DataError(path, f"no station column {given!r}")
        return given
    return "station" if all("station" in f.columns for _, f in frames) else None


def _frame(
    path: Path,
    frame: pd.DataFrame,
    station: str | None,
    time_column: str,
    time_columns: Sequence[str] | None,
) -> pd.DataFrame:
    """One file with a ``time_column`` of parsed times, a ``station`` column and its file name."""
    if time_columns:
        times = compose_time(path, frame, time_columns)
        frame = frame.drop(columns=list(time_columns))
    else:
        if time_column not in frame.columns:  # a usual name, a Date + Time pair, ...
            try:
                frame = with_time_column(path, frame, time_column)
            except DataError as exc:
                raise DataError(path, f"{exc.what}; if each table is one patient stay, read "
                                "them with --layout stays") from None  # fmt: skip
        times = pd.Series(parse_times(path, time_column, frame[time_column]), index=frame.index)
        frame = frame.drop(columns=[time_column])
    if station is None:
        names = pd.Series(path.name.split(".")[0], index=frame.index)
    else:
        names = frame[station]
        if names.isna().any():
            row = int(np.flatnonzero(names.isna().to_numpy())[0])
            raise DataError(path, f"station column {station!r} is empty in data row {row + 1}")
        frame = frame.drop(columns=[station])
    return frame.assign(__time__=times.to_numpy(), __station__=names.astype(str).str.strip(),
                        **{_FILE: str(path)})  # fmt: skip


def _axis(times: np.ndarray, freq: str | None, where: Path) -> np.ndarray:
    axis = np.unique(times)
    if freq is None:
        return axis
    if axis.dtype.kind != "M":
        raise DataError(where, f"freq={freq!r} needs dates, but the times are numbers")
    try:
        grid = pd.date_range(axis[0], axis[-1], freq=freq).to_numpy("datetime64[ns]")
    except ValueError as exc:
        raise DataError("freq", f"{freq!r} is not a pandas frequency ({exc})") from None
    off = ~np.isin(axis, grid)
    if off.any():
        raise DataError(where, f"time {show_time(axis[off][0])} is not on the {freq} grid from "
                               f"{show_time(axis[0])}")  # fmt: skip
    return grid


def load_sites(
    sources: Sequence[str | Path],
    *,
    time_column: str = "time",
    time_columns: Sequence[str] | None = None,
    station_column: str | None = None,
    variables: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    categorical: Categorical = "error",
    freq: str | None = None,
) -> xr.Dataset:
    """Read per-site tables into one ``(time, feature)`` Dataset (see the module docstring).

    ``variables`` selects (and orders) the per-site variables (after one-hot encoding, so
    ``wd=N`` is a variable name). Returns ``values`` float32 ``(time, feature)``,
    ``observed_mask`` uint8 and the ``station`` / ``variable`` coordinates along ``feature``.
    """
    files = table_files(sources)
    raw = [(p, _read(p)) for p in files]
    station = _station_column(raw, station_column)
    parts = [_frame(p, f, station, time_column, time_columns) for p, f in raw]
    kinds = {p["__time__"].dtype.kind == "M" for p in parts}
    if len(kinds) > 1:
        raise DataError(files[0], "some files have dates as times and others numbers")
    frame = pd.concat(parts, ignore_index=True, sort=False)
    keep = ["__time__", "__station__", _FILE]
    frame = encode_columns(
        files[0], frame, keep=keep, drop_columns=drop_columns, categorical=categorical
    )
    names = [c for c in frame.columns if c not in keep]
    if variables is not None:
        absent = [v for v in variables if v not in names]
        if absent:
            raise DataError(files[0], f"variable {absent[0]!r} is absent; variables are {names}")
        names = list(variables)
    names, coords = _coordinate_columns(frame, names, variables is None)
    if not names:
        raise DataError(files[0], "no variable columns besides the time and station columns")
    ds = _pivot(frame, names, _axis(frame["__time__"].to_numpy(), freq, files[0]))
    if coords is None:
        return ds
    stations = [str(s) for s in ds["station"].values]
    lat, lon = (np.array([coords[k][s] for s in stations], np.float64) for k in (0, 1))
    return ds.assign_coords(lat=("feature", lat, {"units": "degrees_north"}),
                            lon=("feature", lon, {"units": "degrees_east"}))  # fmt: skip


def _coordinate_columns(
    frame: pd.DataFrame, names: list[str], free: bool
) -> tuple[list[str], tuple[dict, dict] | None]:
    """Latitude and longitude columns that hold one position per station (an OpenAQ-style
    export repeats them on every row) become site coordinates, not variables; moving sensors
    (positions that change) and an explicit ``variables`` list keep them as variables."""
    lower = {n.strip().lower(): n for n in names}
    lat = next((lower[k] for k in LATITUDES if k in lower), None)
    lon = next((lower[k] for k in LONGITUDES if k in lower), None)
    if not free or lat is None or lon is None:
        return names, None
    per_station = []
    for column in (lat, lon):
        number = pd.to_numeric(frame[column], errors="coerce")
        grouped = number.groupby(frame["__station__"])
        if (grouped.nunique() > 1).any() or grouped.count().eq(0).any():
            return names, None
        per_station.append({str(k): float(v) for k, v in grouped.first().items()})
    return [n for n in names if n not in (lat, lon)], (per_station[0], per_station[1])


def _number(frame: pd.DataFrame, name: str) -> np.ndarray:
    """The column as float32; a non-number is reported with its own file and row."""
    try:
        return _numeric(Path("tables"), name, frame[name])
    except DataError:
        number = pd.to_numeric(frame[name], errors="coerce")
        text = frame[name].astype(str).str.strip()
        bad = number.isna() & frame[name].notna() & text.ne("")
        row = int(np.flatnonzero(bad.to_numpy())[0])
        path = frame[_FILE].iloc[row]
        local = row - int(np.flatnonzero((frame[_FILE] == path).to_numpy())[0])
        raise DataError(
            path, f"{name!r} holds a non-number {frame[name].iloc[row]!r} (data row {local + 1})"
        ) from None


def _pivot(frame: pd.DataFrame, names: list[str], axis: np.ndarray) -> xr.Dataset:
    """Rows (time, station, variables...) onto the ``(time, station x variable)`` grid."""
    stations = sorted(frame["__station__"].unique())
    t = np.searchsorted(axis, frame["__time__"].to_numpy())
    s = np.searchsorted(np.asarray(stations), frame["__station__"].to_numpy())
    cell = t * len(stations) + s
    order = np.argsort(cell, kind="stable")
    repeat = np.flatnonzero(np.diff(cell[order]) == 0)
    if repeat.size:
        row = int(order[repeat[0] + 1])
        raise DataError(
            frame[_FILE].iloc[row],
            f"station {frame['__station__'].iloc[row]!r} has two rows at "
            f"{show_time(frame['__time__'].iloc[row])}",
        )
    shape = (len(axis), len(stations), len(names))
    check_fits(frame[_FILE].iloc[0], 2 * 5 * np.prod(shape, dtype=np.float64),
               f"a grid of {shape[0]} times x {shape[1]} stations x {shape[2]} variables",
               "select --variables, fewer stations, or a coarser --freq")  # fmt: skip
    grid = np.full(shape, np.nan, dtype=np.float32)
    for k, name in enumerate(names):
        grid[t, s, k] = _number(frame, name)
    values = grid.reshape(len(axis), -1)
    station = np.repeat(np.asarray(stations, dtype=object), len(names))
    variable = np.tile(np.asarray(names, dtype=object), len(stations))
    feature = np.array([f"{a}/{b}" for a, b in zip(station, variable, strict=True)], dtype=object)
    empty = np.isnan(values).all(axis=0)
    attrs = {
        "kind": "timeseries",
        "layout": "sites",
        "stations": len(stations),
        "source": ", ".join(sorted(frame[_FILE].unique())),
        "empty_features": ", ".join(feature[empty]),
    }
    keep = ~empty
    observed = ~np.isnan(values[:, keep])
    return xr.Dataset(
        {
            "values": (("time", "feature"), values[:, keep]),
            "observed_mask": (
                ("time", "feature"),
                observed.astype(np.uint8),
                {"flag_values": [0, 1], "flag_meanings": "missing observed"},
            ),
        },
        coords={
            "time": ("time", axis),
            "feature": ("feature", feature[keep]),
            "station": ("feature", station[keep]),
            "variable": ("feature", variable[keep]),
        },
        attrs=attrs,
    )


def _has_column(path: Path, column: str) -> bool:
    if Path(path).is_dir() or Path(path).suffix.lower() not in _CSV:  # not delimited text
        return column in _read(path).columns
    try:
        header = pd.read_csv(path, sep=_CSV.get(Path(path).suffixes[0].lower(), ","), nrows=0)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError):
        return False  # the full read reports it
    return column in [str(c).strip() for c in header.columns]


def load_series(
    sources: Sequence[str | Path],
    *,
    layout: str = "wide",
    targets: str | None = None,
    time_column: str = "time",
    time_columns: Sequence[str] | None = None,
    station_column: str | None = None,
    variables: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    categorical: Categorical = "error",
    freq: str | None = None,
) -> xr.Dataset:
    """Tables as one ``(time, feature)`` series: one file without a station column (or in the long
    layout, or with ``targets``) through :func:`datasets.tabular.load_table`, several files or a
    file with a station column through :func:`load_sites`."""
    from stdiff.datasets.tabular import load_table

    files = table_files(sources)
    one = len(files) == 1
    site = station_column or ("station" if one and _has_column(files[0], "station") else None)
    if one and (targets or layout == "long" or site is None):
        ds = load_table(files[0], time_column=time_column, layout=layout, variables=variables,
                        targets=targets, time_columns=time_columns, drop_columns=drop_columns,
                        categorical=categorical)  # fmt: skip
        if not freq:
            return ds
        grid = _axis(ds["time"].values, freq, files[0])  # the missing steps become empty rows
        fill = {"values": np.nan, "observed_mask": 0, "target_mask": 0}
        return ds.reindex(time=grid, fill_value={k: v for k, v in fill.items() if k in ds})
    if targets or layout == "long":
        raise DataError(files[0], "targets and the long layout apply to one table file")
    return load_sites(files, time_column=time_column, time_columns=time_columns,
                      station_column=station_column, variables=variables,
                      drop_columns=drop_columns, categorical=categorical, freq=freq)  # fmt: skip


_LAT, _LON = (*LATITUDES, "y"), (*LONGITUDES, "x")  # a site-coordinates file may say x / y


def read_site_coords(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{station: (lat, lon)}`` from a small CSV with a station column (``station``, ``site``
    or ``name``) and latitude / longitude columns (``lat``/``latitude``, ``lon``/``longitude``),
    in degrees; any other column is ignored. Every error names the file and the row."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, skipinitialspace=True, comment="#")
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(path, f"cannot be read as a CSV of site coordinates ({e})") from None
    cols = {str(c).strip().lower(): c for c in frame.columns}

    def column(names: tuple[str, ...], what: str):
        hit = next((cols[n] for n in names if n in cols), None)
        if hit is None:
            raise DataError(path, f"no {what} column (one of {', '.join(names)}); "
                                  f"the columns are {list(frame.columns)}")  # fmt: skip
        return frame[hit]

    names = column(("station", "site", "name"), "station").astype(str).str.strip()
    lat = pd.to_numeric(column(_LAT, "latitude"), errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(column(_LON, "longitude"), errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90)
                           & (lon >= -180) & (lon <= 360)))  # fmt: skip
    if bad.size:
        row = int(bad[0])
        raise DataError(path, f"row {row + 1} ({names.iloc[row]!r}): latitude must be a number "
                              "in [-90, 90] and longitude in [-180, 360] degrees")  # fmt: skip
    dup = names[names.duplicated()]
    if len(dup):
        raise DataError(path, f"station {dup.iloc[0]!r} appears twice")
    return {n: (float(a), float(b)) for n, a, b in zip(names, lat, lon, strict=True)}


def attach_site_coords(ds: xr.Dataset, path: str | Path) -> xr.Dataset:
    """``ds`` (a per-site series store) with ``lat`` / ``lon`` coordinates along ``feature``,
    each feature's from its station's row of the CSV at ``path`` (:func:`read_site_coords`);
    a station of the store missing from the file is an error naming both."""
    if "station" not in ds.coords:
        raise DataError(path, "site coordinates apply to per-station tables (a store with "
                              "stations); this series has none")  # fmt: skip
    table = read_site_coords(path)
    stations = [str(s) for s in ds["station"].values]
    missing = sorted({s for s in stations if s not in table})
    if missing:
        raise DataError(path, f"has no row for station {missing[0]!r} "
                              f"({len(missing)} missing; the store's stations are "
                              f"{sorted(set(stations))})")  # fmt: skip
    lat = np.array([table[s][0] for s in stations], dtype=np.float64)
    lon = np.array([table[s][1] for s in stations], dtype=np.float64)
    return ds.assign_coords(lat=("feature", lat, {"units": "degrees_north"}),
                            lon=("feature", lon, {"units": "degrees_east"}))  # fmt: skip
