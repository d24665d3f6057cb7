"""The time column of a table (``datasets.tabular``, ``datasets.sites``): parsing it (datetimes
in UTC; numbers kept, except compact dates ``20210131[23[59[59]]]`` and Unix epoch times, which
become datetimes; numeric dates read day first when only that reading is in order), composing
it from year / month / day columns, and finding it under another name."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stdiff.datasets.errors import DataError, StdiffWarning

_TIME_PARTS = ("year", "month", "day", "hour", "minute", "second")


def columns_text(frame: pd.DataFrame) -> str:
    """The columns of ``frame`` for a message: ``'time', 'a', 'b'``."""
    return ", ".join(map(repr, frame.columns))


def parse_times(path: Path, column: str, series: pd.Series) -> np.ndarray:
    """Parse a time column (numeric kept as is, else datetimes), raising on any bad entry."""
    if series.isna().any():
        row = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise DataError(path, f"time column {column!r} is empty in data row {row + 1}")
    if pd.api.types.is_bool_dtype(series):
        raise DataError(path, f"time column {column!r} holds booleans, not times")
    if pd.api.types.is_numeric_dtype(series):
        return numeric_times(path, column, series)
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
    if pd.api.types.is_datetime64_any_dtype(series):
        return series.to_numpy("datetime64[ns]")
    text = series.astype(str).str.strip()
    parsed = None
    for fmt in (None, "mixed"):  # one inferred format (fast), else element by element
        try:
            with warnings.catch_warnings():  # pandas warns when it falls back to dateutil
                warnings.simplefilter("ignore", UserWarning)
                parsed = pd.to_datetime(text, format=fmt, utc=True)  # offsets may differ (DST)
            break
        except (ValueError, TypeError, OverflowError):
            continue
    if parsed is None:
        parsed = pd.to_datetime(text, format="mixed", errors="coerce", utc=True)
        if not parsed.isna().any():  # pragma: no cover - coerce and raise disagree
            raise DataError(path, f"time column {column!r} cannot be parsed")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(
            path, f"time column {column!r}: cannot parse {text.iloc[row]!r} (data row {row + 1})"
        )
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return _day_first(path, column, text, parsed.to_numpy("datetime64[ns]"))


# Unix epoch times from 1980 to 2100 in each unit: the ranges do not overlap, and times counted
# from a study's start (hours, steps, seconds over a few years) stay below them.
_EPOCH_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_EPOCH_LOW, _EPOCH_HIGH = 315_532_800, 4_102_444_800  # 1980-01-01, 2100-01-01 in seconds
_COMPACT = {8: "YYYYMMDD", 10: "YYYYMMDDhh", 12: "YYYYMMDDhhmm", 14: "YYYYMMDDhhmmss"}
_STRPTIME = {"YYYY": "%Y", "MM": "%m", "DD": "%d", "hh": "%H", "mm": "%M", "ss": "%S"}


def numeric_times(path: Path, column: str, series: pd.Series) -> np.ndarray:
    """A numeric time column: compact dates (``20210131``, ``2021013123``, all of one length
    and all valid) and Unix epoch times (every value within 1980-2100 in seconds, ms, us or ns)
    become datetimes, with one warning saying which reading was taken; other numbers (hours,
    steps) are kept."""
    values = series.to_numpy()
    whole = bool(np.all(values == np.round(values)))
    if whole and values.min() > 0:
        digits = {len(str(int(v))) for v in (values.min(), values.max())}
        fmt = _COMPACT.get(next(iter(digits))) if len(digits) == 1 else None
        if fmt is not None:
            text = pd.Series(values.astype(np.int64)).astype(str)
            strptime = re.sub("YYYY|MM|DD|hh|mm|ss", lambda m: _STRPTIME[m[0]], fmt)
            parsed = pd.to_datetime(text, format=strptime, errors="coerce")
            if (
                parsed.notna().all()
                and 1800 <= parsed.dt.year.min() <= parsed.dt.year.max() <= 2200
            ):
                return _read_as(path, column, parsed.to_numpy("datetime64[ns]"), f"dates {fmt}")
    for unit, per_second in _EPOCH_UNITS.items():
        if _EPOCH_LOW * per_second <= values.min() <= values.max() < _EPOCH_HIGH * per_second:
            scale = 10**9 // per_second
            ns = values.astype(np.int64) * scale if whole else np.round(values * scale)
            times = ns.astype(np.int64).astype("datetime64[ns]")
            return _read_as(path, column, times, f"Unix epoch times in {unit}")
    return values


def _read_as(path: Path, column: str, times: np.ndarray, reading: str) -> np.ndarray:
    """``times``, after one warning naming the reading and the dates it gives."""
    span = f"{show_time(times.min())} to {show_time(times.max())}"
    warnings.warn(
        StdiffWarning(f"{path}: numeric time column {column!r} read as {reading} ({span})"),
        stacklevel=3,
    )
    return times


_NUMERIC_DATE = re.compile(r"\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}\b")


def _monotonic(t: np.ndarray) -> bool:
    return bool((t[1:] > t[:-1]).all() or (t[1:] < t[:-1]).all())


def _day_first(path: Path, column: str, text: pd.Series, parsed: np.ndarray) -> np.ndarray:
    """Dates written ``31/12/2021`` or ``31.12.2021``: pandas reads them month first whenever
    its first entry allows it (``01/02/2021``), and element by element (a mix of both orders)
    once one does not fit. So: a first field above 12 anywhere means day first for every entry,
    a second field above 12 month first; when every entry is ambiguous, the day-first reading
    is taken only if it alone is in time order."""
    if len(parsed) < 2 or not _NUMERIC_DATE.match(str(text.iloc[0])):
        return parsed
    fields = text.str.extract(r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-]")
    if fields.isna().any().any():
        return parsed  # not all numeric dates: pandas' reading stands
    first, second = fields[0].astype(int), fields[1].astype(int)
    if (first > 12).any() and (second > 12).any():
        raise DataError(path, f"time column {column!r} mixes day-first and month-first dates "
                              f"({text[first > 12].iloc[0]!r}, {text[second > 12].iloc[0]!r})")  # fmt: skip
    if (second > 12).any() or (not (first > 12).any() and _monotonic(parsed)):
        return parsed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:  # one format guessed day first, else entry by entry
                alt = pd.to_datetime(text, dayfirst=True, utc=True)
            except ValueError:
                alt = pd.to_datetime(text, dayfirst=True, format="mixed", utc=True)
    except (ValueError, TypeError, OverflowError):
        return parsed
    if isinstance(alt.dtype, pd.DatetimeTZDtype):
        alt = alt.dt.tz_convert("UTC").dt.tz_localize(None)
    alt = alt.to_numpy("datetime64[ns]")
    return alt if (first > 12).any() or _monotonic(alt) else parsed


def show_time(t: object) -> str:
    return str(pd.Timestamp(t)) if isinstance(t, np.datetime64) else str(t)


def compose_time(path: Path, frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Datetimes from split integer columns in the order year, month, day[, hour[, minute[, second]]]."""
    columns = list(columns)
    if not 3 <= len(columns) <= len(_TIME_PARTS):
        raise DataError(
            path,
            f"time_columns {columns} must name year, month, day[, hour[, minute[, second]]] "
            "columns, in that order (3 to 6 columns)",
        )
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataError(path, f"no time column {absent[0]!r}; columns are {columns_text(frame)}")
    parts = {}
    for part, column in zip(_TIME_PARTS, columns, strict=False):
        number = pd.to_numeric(frame[column], errors="coerce")
        bad = number.isna() | (number != number.round())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                path,
                f"time column {column!r} ({part}) holds {frame[column].iloc[row]!r}, not an "
                f"integer (data row {row + 1})",
            )
        parts[part] = number.astype(np.int64)
    try:
        return pd.to_datetime(pd.DataFrame(parts))
    except (ValueError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(path, f"cannot compose times from {columns} ({first})") from None


_TIME_NAMES = ("time", "date", "datetime", "timestamp", "date_time", "date time", "time_stamp",
               "datetime_utc", "dt", "ds")  # fmt: skip


def with_time_column(path: Path, frame: pd.DataFrame, time_column: str) -> pd.DataFrame:
    """``frame`` with its time under ``time_column`` when that column is absent: a ``Date``
    and a ``Time`` column joined (``10/03/2004`` + ``18.00.00``, UCI's air-quality table),
    else the column :func:`guess_time_column` finds, renamed."""
    lower = {str(c).strip().lower(): c for c in frame.columns}
    if "date" in lower and "time" in lower:
        clock = frame[lower["time"]].astype(str).str.strip()
        clock = clock.str.replace(r"^(\d{1,2})\.(\d{2})(?:\.(\d{2}))?$", _colons, regex=True)
        joined = frame[lower["date"]].astype(str).str.strip() + " " + clock
        where = frame[lower["date"]].isna() | frame[lower["time"]].isna()
        return frame.drop(columns=[lower["date"], lower["time"]]).assign(
            **{time_column: joined.where(~where)}
        )
    return frame.rename(columns={guess_time_column(path, frame, time_column): time_column})


def _colons(m: re.Match) -> str:
    return ":".join(g for g in m.groups() if g is not None)


def guess_time_column(path: Path, frame: pd.DataFrame, time_column: str) -> str:
    """The one column that names time when ``time_column`` is absent: a usual name (``date``,
    ``timestamp``, ``Date Time``, ...), else the only column whose name holds date or time,
    else the only column without a name whose entries are dates (an exported index, as in the
    UCI electricity table); several or none are refused, naming the flag."""
    names = [str(c) for c in frame.columns]
    found = [c for c in names if c.strip().lower() in _TIME_NAMES]
    found = found or [c for c in names if re.search(r"date|time", c, re.IGNORECASE)]
    blank = [c for c in names if not c.strip() or re.fullmatch(r"Unnamed: \d+", c)]
    found = found or [c for c in blank if _dates(frame[c])]
    if len(found) == 1:
        return found[0]
    hint = (
        f"; several could be: {', '.join(map(repr, found))}; name one with --time-column, or "
        "compose date and time columns with --time-columns"
        if found
        else "; name it with --time-column"
    )
    raise DataError(
        path, f"no time column {time_column!r}; columns are {columns_text(frame)}{hint}"
    )


def _dates(column: pd.Series) -> bool:
    """Whether the first entries of a text column all read as dates."""
    head = column.dropna().head(20)
    if head.empty or pd.api.types.is_numeric_dtype(head):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(head.astype(str), format="mixed", errors="coerce")
    return bool(parsed.notna().all())
