"""Generic CSV / Parquet time series as a canonical ``timeseries`` Dataset (dims ``time, feature``).

Layouts
-------
* ``"wide"``: one row per timestamp, one column per variable (``time_column`` plus the variables).
  Rows in another order (newest first, shuffled) are sorted by time; a timestamp on two rows is
  an error.
* ``"long"``: one row per observation, columns ``time_column`` and ``long_columns`` =
  (variable name, value); rows may come in any order, the time axis is the sorted set of distinct
  times, features appear in order of first appearance (or in the order of ``variables``).  A
  duplicated (time, variable) pair is an error.

Times are parsed with :func:`pandas.to_datetime` unless the column is already numeric: then
compact dates (``20240131``, ``2024013123``) and Unix epoch times (s, ms, us, ns within 1980-2100)
become datetimes with a warning, and other numbers (hours, steps) are kept.  Time-zone-aware times are converted to naive UTC.  Numeric dates
(``01/02/2021``) are read day first when a first field exceeds 12, or, all being ambiguous,
when only that reading is in time order; both orders in one column are refused.  Without a ``time_column`` column, the one column with a usual name (``date``,
``timestamp``, ``Date Time``), else the only one naming date or time, else an unnamed column of
dates is taken; separate ``Date`` and ``Time`` columns are joined.  Empty trailing columns and
rows (``a;b;;``, ``;;;``) are left out.  The format is chosen by extension
(:mod:`datasets.table_files`: CSV / TSV / TXT, optionally compressed, read as spreadsheets export
them; Parquet; Excel; pandas HDF5).  Infinite values (and numbers beyond float32) are refused, never stored.

Evaluation targets (``target_mask``)
------------------------------------
* ``targets="<column>"`` (long layout only): a 0/1 column; rows with 1 are held-out targets.  Their
  values stay in ``values`` (the ground truth) but are 0 in ``observed_mask``; a target row without
  a value is an error.
* ``targets=<second file>`` of the same shape (wide or long, read with the same options): the pair
  convention of the Beijing PM2.5 benchmark (``pm25_ground.txt`` / ``pm25_missing.txt`` in CSDI's
  ``dataset_pm25.py``).  The *ground-truth* file is the one whose observations are a superset of the
  other's; the pair may be given in either order (``path`` and ``targets`` are interchangeable).
  Then ``values`` come from the ground truth, ``observed_mask`` = observed in the *other* (reduced)
  file, i.e. what a model may condition on, and ``target_mask`` = observed in the ground truth but
  missing in the reduced file.  In CSDI's names: their ``observed_mask`` (ground truth) is our
  ``observed_mask | target_mask`` and their ``gt_mask`` is our ``observed_mask``.  Columns, times
  and the values observed in both files must agree, else :class:`DataError`.

Split time columns and other columns (wide layout)
--------------------------------------------------
* ``time_columns=("year", "month", "day", "hour")``: the timestamp is composed from separate
  integer columns taken in the order year, month, day[, hour[, minute[, second]]] (any names).
* ``drop_columns``: columns left out (e.g. a row number ``No``).
* ``categorical``: what to do with a column that holds text, not numbers (e.g. a wind direction
  ``wd``): ``"error"`` (the default: refuse and name it), ``"drop"``, or ``"onehot"`` (one 0/1
  feature ``<column>=<category>`` per category, sorted; a missing entry is missing in all of them).

Every fault raises :class:`~datasets.errors.DataError` with one line naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.errors import DataError, StdiffWarning
from stdiff.datasets.table_files import read_table_file
from stdiff.datasets.timecols import (
    columns_text,
    compose_time,
    parse_times,
    show_time,
    with_time_column,
)

__all__ = ["Categorical", "compose_time", "encode_columns", "load_table"]

Categorical = Literal["error", "drop", "onehot"]


@dataclass
class _Table:
    """One file on its (time, feature) grid; ``targets`` only for a long target column."""

    path: Path
    times: np.ndarray
    features: list[str]
    values: np.ndarray  # float32 (time, feature), NaN = missing
    targets: np.ndarray | None = None  # bool (time, feature)


def load_table(
    path: str | Path,
    *,
    time_column: str = "time",
    layout: str = "wide",
    variables: Sequence[str] | None = None,
    targets: str | Path | None = None,
    long_columns: tuple[str, str] = ("variable", "value"),
    time_columns: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    categorical: Categorical = "error",
) -> xr.Dataset:
    """Read a CSV or Parquet time series into dims ``(time, feature)``.

    Returns ``values`` float32 (NaN = missing), ``observed_mask`` uint8 and, when ``targets`` is
    given, ``target_mask`` uint8 (1 = held-out evaluation target; see the module docstring for the
    column and two-file conventions).  ``variables`` selects (and orders) the features;
    ``time_columns``, ``drop_columns`` and ``categorical`` as in the module docstring.
    """
    path = Path(path)
    if layout not in ("wide", "long"):
        raise DataError("layout", f"must be 'wide' or 'long', not {layout!r}")
    if isinstance(long_columns, str) or len(long_columns) != 2:
        raise DataError("long_columns", "must be a pair (variable column, value column)")
    frame = read_table_file(path)
    frame = _prepare(path, frame, time_column, time_columns, drop_columns, categorical, layout)

    target_column: str | None = None
    target_file: Path | None = None
    if isinstance(targets, str) and targets in frame.columns:
        if layout == "wide":
            raise DataError(
                path,
                f"targets={targets!r} names a column, which applies only to layout='long'; "
                "in the wide layout pass the ground-truth file instead",
            )
        target_column = targets
    elif targets is not None:
        target_file = Path(targets)
        if not target_file.is_file():
            raise DataError(target_file, "targets is neither a column of the table nor a file")

    options = {
        "time_column": time_column,
        "layout": layout,
        "variables": variables,
        "long_columns": tuple(long_columns),
    }
    table = _grid(path, frame, target_column=target_column, **options)
    prep = (time_column, time_columns, drop_columns, categorical, layout)
    attrs = {"kind": "timeseries", "source": str(path), "layout": layout}
    observed = ~np.isnan(table.values)
    values = table.values
    target_mask: np.ndarray | None = None
    if table.targets is not None:
        target_mask = table.targets
        observed &= ~target_mask
        attrs["target_column"] = target_column
    elif target_file is not None:
        other_frame = _prepare(target_file, read_table_file(target_file), *prep)
        other = _grid(target_file, other_frame, target_column=None, **options)
        ground, reduced = _pair(table, other)
        values = ground.values
        observed = ~np.isnan(reduced.values)
        target_mask = ~np.isnan(ground.values) & ~observed
        attrs |= {"source": str(reduced.path), "ground_truth": str(ground.path)}

    data = {
        "values": (("time", "feature"), values),
        "observed_mask": (
            ("time", "feature"),
            observed.astype(np.uint8),
            {"flag_values": [0, 1], "flag_meanings": "missing observed"},
        ),
    }
    if target_mask is not None:
        data["target_mask"] = (
            ("time", "feature"),
            target_mask.astype(np.uint8),
            {"flag_values": [0, 1], "flag_meanings": "not_target target"},
        )
    return xr.Dataset(
        data,
        coords={"time": ("time", table.times), "feature": ("feature", table.features)},
        attrs=attrs,
    )


def _numeric(path: Path, name: str, series: pd.Series, rounding: bool = True) -> np.ndarray:
    """A value column as float32, NaN = missing; refuses text and values that are infinite
    (``inf`` cells, or beyond float32's range) naming the first bad row; warns when float32
    rounds it noticeably (``rounding``: off for pieces of a column, such as one stay's)."""
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(np.float32)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(np.float64, na_value=np.nan)
    else:
        coerced = pd.to_numeric(series, errors="coerce")
        bad = coerced.isna().to_numpy() & series.notna().to_numpy()
        bad &= series.astype(str).str.strip().ne("").to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                path, f"{name!r} holds a non-number {series.iloc[row]!r} (data row {row + 1})"
            )
        values = coerced.to_numpy(np.float64, na_value=np.nan)
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    infinite = np.isinf(out)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        cell = series.iloc[row]
        why = "an infinite value" if np.isinf(values[row]) else "a number beyond float32's range"
        raise DataError(
            path,
            f"{name!r} holds {why}, {str(cell)!r} (data row {row + 1}); leave the cell "
            "empty if it is missing",
        )
    if rounding:
        _warn_rounding(path, name, values, out)
    return out


def _warn_rounding(path: Path, name: str, values: np.ndarray, stored: np.ndarray) -> None:
    """One warning when float32 storage rounds a column by more than 0.1 % of its spread:
    large numbers that vary little (a meter reading of 1.6e8 that moves by tens, an id)."""
    seen = ~np.isnan(values)
    if seen.sum() < 10:  # a spread needs a few values
        return
    spread = float(np.std(values[seen]))
    error = float(np.max(np.abs(stored[seen].astype(np.float64) - values[seen])))
    if spread > 0 and error > 1e-3 * spread:
        warnings.warn(
            StdiffWarning(
                f"{path}: {name!r} is stored as float32, which rounds it by up to {error:.3g} "
                f"against a spread of {spread:.3g}; subtract an offset or take differences "
                "before ingesting, or drop it with --drop-columns if it is an identifier"
            ),
            stacklevel=2,
        )


# --------------------------------------------------------------------------- columns


def _is_text(series: pd.Series) -> bool:
    """True for a categorical column: most of its non-empty entries are not numbers (a stray word
    among numbers is a fault that the numeric reader reports with its row)."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    text = series.dropna().astype(str).str.strip()
    text = text[text.ne("")]
    return bool(pd.to_numeric(text, errors="coerce").isna().mean() > 0.5) if len(text) else False


def encode_columns(
    path: Path,
    frame: pd.DataFrame,
    *,
    keep: Sequence[str],
    drop_columns: Sequence[str] = (),
    categorical: Categorical = "error",
) -> pd.DataFrame:
    """``frame`` without ``drop_columns`` and with its text columns (other than ``keep``) refused,
    dropped or one-hot encoded (``<column>=<category>``, categories sorted, 0/1 floats, NaN where
    the entry is missing)."""
    if categorical not in ("error", "drop", "onehot"):
        raise DataError("categorical", f"must be 'error', 'drop' or 'onehot', not {categorical!r}")
    absent = [c for c in drop_columns if c not in frame.columns]
    if absent:
        raise DataError(
            path, f"cannot drop column {absent[0]!r}; columns are {columns_text(frame)}"
        )
    frame = frame.drop(columns=list(drop_columns))
    text = [c for c in frame.columns if c not in keep and _is_text(frame[c])]
    if not text or categorical == "drop":
        return frame.drop(columns=text)
    if categorical == "error":
        numeric = [c for c in frame.columns if c not in keep and c not in text]
        long = len(text) == 1 and len(numeric) == 1 and frame[text[0]].nunique() > 1
        raise DataError(
            path,
            f"column {text[0]!r} holds text (e.g. {frame[text[0]].dropna().iloc[0]!r}); "
            "drop it (--drop-columns, --categorical drop) or one-hot encode it "
            "(--categorical onehot)"
            + (
                f"; if each row is one observation (time, {text[0]}, {numeric[0]}), read it "
                "with --layout long, its columns named variable and value"
                if long
                else ""
            ),
        )
    out = {}
    for column in frame.columns:
        if column not in text:
            out[column] = frame[column]
            continue
        entries = frame[column].astype("string").str.strip()
        missing = entries.isna() | entries.eq("")
        for category in sorted(entries[~missing].unique()):
            onehot = entries.eq(category).astype(np.float32)
            out[f"{column}={category}"] = onehot.where(~missing)
    return pd.DataFrame(out, index=frame.index)


def _prepare(path, frame, time_column, time_columns, drop_columns, categorical, layout):
    """Compose split time columns, then drop / encode columns (the wide layout only)."""
    if time_columns:
        if time_column in frame.columns and time_column not in time_columns:
            raise DataError(path, f"time_columns would replace the existing column {time_column!r}")
        times = compose_time(path, frame, time_columns)
        frame = frame.drop(columns=list(time_columns)).assign(**{time_column: times})
    empty = [c for c in frame.columns if str(c).startswith("Unnamed: ") and frame[c].isna().all()]
    frame = frame.drop(columns=empty)  # columns of trailing separators (``a;b;;``)
    rows = np.flatnonzero(frame.notna().any(axis=1).to_numpy())
    frame = frame.iloc[: rows[-1] + 1 if rows.size else 0]  # trailing empty rows (``;;;``)
    if time_column not in frame.columns:
        frame = with_time_column(path, frame, time_column)
    if layout == "wide":
        keep = [time_column]
        frame = encode_columns(
            path, frame, keep=keep, drop_columns=drop_columns, categorical=categorical
        )
    elif drop_columns or categorical != "error":
        raise DataError(path, "drop_columns and categorical apply to the wide layout only")
    return frame


# --------------------------------------------------------------------------- layouts


def _grid(
    path: Path,
    frame: pd.DataFrame,
    *,
    time_column: str,
    layout: str,
    variables: Sequence[str] | None,
    long_columns: tuple[str, str],
    target_column: str | None,
) -> _Table:
    if time_column not in frame.columns:
        raise DataError(path, f"no time column {time_column!r}; columns are {columns_text(frame)}")
    times = parse_times(path, time_column, frame[time_column])
    if layout == "wide":
        table = _wide(path, frame, times, time_column, variables)
    else:
        table = _long(path, frame, times, time_column, variables, long_columns, target_column)
    empty = np.isnan(table.values).all(axis=0)
    if empty.any():
        name = table.features[int(np.flatnonzero(empty)[0])]
        raise DataError(path, f"variable {name!r} has no values (all NaN)")
    return table


def _wide(path, frame, times, time_column, variables) -> _Table:
    names = [c for c in frame.columns if c != time_column] if variables is None else list(variables)
    if not names:
        raise DataError(path, f"no variable columns besides the time column {time_column!r}")
    for name in names:
        if name not in frame.columns or name == time_column:
            raise DataError(path, f"variable {name!r} is absent; columns are {columns_text(frame)}")
    if len(times) > 1 and not (times[1:] > times[:-1]).all():  # rows in another order: sorted
        order = np.argsort(times, kind="stable")
        ordered = times[order]
        same = np.flatnonzero(ordered[1:] == ordered[:-1])
        if same.size:
            k = int(same[0])
            rows = sorted(int(r) + 1 for r in order[k : k + 2])
            raise DataError(
                path,
                f"timestamp {show_time(ordered[k])} is on two rows (data rows {rows[0]} and "
                f"{rows[1]}); keep one row per time (or use --layout long for one row per "
                "observation)",
            )
        frame, times = frame.iloc[order], ordered
    values = np.stack([_numeric(path, n, frame[n]) for n in names], axis=1)
    return _Table(path, times, [str(n) for n in names], values.astype(np.float32))


def _long(path, frame, times, time_column, variables, long_columns, target_column) -> _Table:
    var_col, val_col = long_columns
    for column in (var_col, val_col):
        if column not in frame.columns:
            raise DataError(
                path, f"no column {column!r} for the long layout; columns are {columns_text(frame)}"
            )
    if frame[var_col].isna().any():
        row = int(np.flatnonzero(frame[var_col].isna().to_numpy())[0])
        raise DataError(path, f"empty variable name in data row {row + 1}")
    var_names = frame[var_col].astype(str).str.strip().to_numpy()
    present = list(dict.fromkeys(var_names))
    if variables is None:
        names = present
    else:
        names = [str(v) for v in variables]
        for name in names:
            if name not in present:
                shown = ", ".join(map(repr, present[:20]))
                raise DataError(path, f"variable {name!r} is absent; variables are {shown}")
    value = _numeric(path, val_col, frame[val_col])
    target = None
    if target_column is not None:
        raw = pd.to_numeric(frame[target_column], errors="coerce")
        if not raw.isin([0, 1]).all():
            row = int(np.flatnonzero(~raw.isin([0, 1]).to_numpy())[0])
            shown = str(frame[target_column].iloc[row])
            raise DataError(
                path, f"target column {target_column!r} must be 0 or 1, found {shown} "
                f"(data row {row + 1})",
            )  # fmt: skip
        target = raw.to_numpy().astype(bool)

    feature_of = {n: k for k, n in enumerate(names)}
    feature = np.array([feature_of.get(v, -1) for v in var_names], dtype=np.int64)
    rows = np.flatnonzero(feature >= 0)
    axis, time_index = np.unique(times[rows], return_inverse=True)
    cell = time_index * len(names) + feature[rows]
    _, first, counts = np.unique(cell, return_index=True, return_counts=True)
    if (counts > 1).any():
        twice = cell == cell[first[np.flatnonzero(counts > 1)[0]]]
        dup = int(rows[np.flatnonzero(twice)[1]])  # the second row of the first repeated cell
        raise DataError(
            path,
            f"duplicated (time, variable) pair ({show_time(times[dup])}, {var_names[dup]!r}) "
            f"(data row {dup + 1})",
        )
    values = np.full(len(axis) * len(names), np.nan, dtype=np.float32)
    values[cell] = value[rows]
    table = _Table(path, axis, names, values.reshape(len(axis), len(names)))
    if target is not None:
        missing = target[rows] & np.isnan(value[rows])
        if missing.any():
            row = int(rows[np.flatnonzero(missing)[0]])
            raise DataError(path, f"target row without a value (data row {row + 1})")
        mask = np.zeros(len(axis) * len(names), dtype=bool)
        mask[cell] = target[rows]
        table.targets = mask.reshape(len(axis), len(names))
    return table


def _pair(first: _Table, second: _Table) -> tuple[_Table, _Table]:
    """Check that two tables match; return (ground truth, reduced)."""
    if first.features != second.features:
        raise DataError(
            second.path,
            f"columns {second.features} differ from those of {first.path} ({first.features})",
        )
    if first.values.shape != second.values.shape:
        raise DataError(
            second.path,
            f"shape {second.values.shape} differs from {first.values.shape} of {first.path}",
        )
    if (first.times.dtype.kind == "M") != (second.times.dtype.kind == "M"):
        raise DataError(
            second.path, f"times are of another kind than those of {first.path} (numbers vs dates)"
        )
    if not np.array_equal(first.times, second.times):
        k = int(np.flatnonzero(first.times != second.times)[0])
        raise DataError(
            second.path,
            f"times differ from those of {first.path} at row {k + 1} "
            f"({show_time(second.times[k])} vs {show_time(first.times[k])})",
        )
    a, b = ~np.isnan(first.values), ~np.isnan(second.values)
    if (a & ~b).any() and (b & ~a).any():
        raise DataError(
            second.path,
            f"neither this file nor {first.path} is the ground truth: each has values "
            "the other lacks",
        )
    ground, reduced = (second, first) if (b & ~a).any() else (first, second)
    both = a & b
    differ = both & ~np.isclose(first.values, second.values, rtol=1e-6, atol=0.0, equal_nan=True)
    if differ.any():
        t, f = (int(i[0]) for i in np.nonzero(differ))
        raise DataError(
            second.path,
            f"value of {first.features[f]!r} at {show_time(first.times[t])} differs from "
            f"{first.path} ({second.values[t, f]} vs {first.values[t, f]})",
        )
    return ground, reduced
