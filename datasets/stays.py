"""Per-stay tables (``--layout stays``): a folder of tables, one per patient stay (PhysioNet /
CinC 2019's ``p000001.psv``, a hospital's export of one CSV per admission), as the canonical
``(stay, time, feature)`` series that CSDI-style imputation trains on, like PhysioNet 2012.

* **Stays** are the files, sorted by name; a stay is named by its file's stem (by its path
  under the folder when two stems agree). A file with a header and no rows is a stay with
  nothing observed (``stay_has_data`` is 0: the fold split leaves it out, as CSDI does).
* **Time** runs from each stay's own start: with a time column (``--time-column``, or one
  named like time / date / timestamp), datetimes fall in steps of ``--freq`` (default 1 h)
  after the stay's first time, and numbers (hours since admission, PhysioNet 2019's ``ICULOS``)
  count steps after the stay's smallest; without one, each row is one step. Several rows in
  one step keep each feature's last observed value (CSDI's rule for PhysioNet 2012).
* **Length** is ``--stay-length`` steps (later steps are left out), else the longest stay's.
* **Features** are the numeric columns in order of first appearance across files (or
  ``--variables``); text columns follow ``--categorical``; ``--drop-columns`` leaves out
  columns (a label such as ``SepsisLabel``) wherever they occur.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.errors import DataError, StdiffWarning
from stdiff.datasets.outputs import check_fits
from stdiff.datasets.table_files import _CSV, read_table_file
from stdiff.datasets.tabular import Categorical, _numeric, encode_columns
from stdiff.datasets.timecols import _TIME_NAMES, parse_times

__all__ = ["load_stays"]


def load_stays(
    files: Sequence[Path],
    *,
    time_column: str = "time",
    freq: str | None = None,
    length: int | None = None,
    variables: Sequence[str] | None = None,
    drop_columns: Sequence[str] = (),
    categorical: Categorical = "error",
) -> xr.Dataset:
    """The stays of ``files`` as ``values`` float32 (NaN = missing) and ``observed_mask`` uint8
    over ``(stay, time, feature)``; ``time`` counts steps from each stay's start."""
    if length is not None and length < 1:
        raise DataError("--stay-length", f"must be a positive number of steps, not {length}")
    step = _step(freq)
    where = Path(files[0]).parent
    frame = _read_all(files)
    absent = [c for c in drop_columns if c not in frame.columns]
    if absent:
        raise DataError(where, f"--drop-columns {absent[0]!r} is in none of the tables")
    column = _time_column(frame, time_column)
    keep = [_STAY] + ([column] if column else [])
    frame = encode_columns(where, frame, keep=keep, drop_columns=drop_columns,
                           categorical=categorical)  # fmt: skip
    names = [str(c) for c in frame.columns if c not in keep]
    if variables:
        unseen = [v for v in variables if v not in names]
        if unseen:
            raise DataError(where, f"variable {unseen[0]!r} is in none of the tables")
        names = list(variables)
    stay = frame[_STAY].to_numpy()

    def convert(at: Path, rows: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
        steps = _steps(at, rows, column, rows[_STAY].to_numpy(), step)
        return steps, pd.DataFrame({n: _numeric(at, n, rows[n]) for n in names})

    steps, data = _located(files, frame, stay, convert)
    last = data.groupby([stay, steps], sort=False).last()  # last observed value per step
    keys_stay, keys_step = (last.index.get_level_values(k).to_numpy() for k in (0, 1))
    total = int(keys_step.max()) + 1 if length is None and len(keys_step) else (length or 1)
    check_fits(where, 2 * 5 * float(len(files)) * total * len(names),
               f"{len(files)} stays x {total} steps x {len(names)} features",
               "set --stay-length, or select --variables")  # fmt: skip
    values = np.full((len(files), total, len(names)), np.nan, np.float32)
    inside = keys_step < total
    cut = np.unique(keys_stay[~inside])
    if cut.size:
        warnings.warn(StdiffWarning(
            f"{where}: {cut.size} of {len(files)} stays are longer than --stay-length {total}; "
            f"their later steps are left out (the longest has {int(keys_step.max()) + 1})"
        ), stacklevel=2)  # fmt: skip
    values[keys_stay[inside], keys_step[inside]] = last.to_numpy(np.float32)[inside]
    return xr.Dataset(
        {
            "values": (("stay", "time", "feature"), values),
            "observed_mask": (("stay", "time", "feature"), (~np.isnan(values)).astype(np.uint8)),
        },
        coords={"stay": _stay_names(files), "time": np.arange(total), "feature": names},
        attrs={
            "kind": "timeseries",
            "layout": "stays",
            "source": str(where),
            "time_step": f"{freq or '1h'} for datetimes; one unit or row otherwise",
        },
    )


_STAY = "__stay__"


def _read_all(files: Sequence[Path]) -> pd.DataFrame:
    """Every file's rows with a ``__stay__`` column (the file's position). Delimited text files
    that share one header line are parsed together, once (tens of thousands of stays); other
    files one by one. A header without rows is a stay without data."""
    fast = _one_parse(files)
    if fast is not None:
        return fast
    parts = [_frame(f).assign(**{_STAY: k}) for k, f in enumerate(files)]
    return pd.concat(parts, ignore_index=True, sort=False)


def _one_parse(files: Sequence[Path]) -> pd.DataFrame | None:
    sep = _CSV.get(Path(files[0]).suffix.lower())
    if sep is None or any(Path(f).suffix.lower() != Path(files[0]).suffix.lower() for f in files):
        return None
    header, rows = None, []
    for k, path in enumerate(files):
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            return None  # another encoding: the careful reader, file by file
        first, _, body = text.partition("\n")
        if header is None:
            header = first.rstrip("\r")
        elif first.rstrip("\r") != header:
            return None
        lines = [line for line in body.splitlines() if line.strip()]
        rows.extend(f"{k}{sep}{line}" for line in lines)
    if len(header.split(sep)) < 2:
        return None  # the header is not split by this separator: let the careful reader sniff
    text = f"{_STAY}{sep}{header}\n" + "\n".join(rows) + "\n"
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, low_memory=False)
    except (ValueError, pd.errors.ParserError):
        return None  # the careful reader names the file
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame if not frame.columns.duplicated().any() else None


def _located(files: Sequence[Path], frame: pd.DataFrame, stay: np.ndarray, fn):
    """``fn(folder, frame)``; when it finds bad data, it is run on each stay's rows alone so the
    error names the file and the row inside it."""
    try:
        return fn(Path(files[0]).parent, frame)
    except DataError:
        for k in np.unique(stay):
            fn(Path(files[k]), frame[stay == k].reset_index(drop=True))
        raise


def _frame(path: Path) -> pd.DataFrame:
    try:
        return read_table_file(path)
    except DataError as exc:
        if exc.what != "the table has no rows":
            raise
        return pd.DataFrame()  # a header without rows: a stay with nothing observed


def _step(freq: str | None) -> pd.Timedelta:
    try:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(freq or "1h"))
    except (ValueError, TypeError):
        raise DataError("--freq", f"{freq!r} is not a time step such as 1h or 30min") from None


def _time_column(frame: pd.DataFrame, given: str) -> str | None:
    """``given``, else the one column with a usual time name, else None (rows are steps); a
    name other than the default ``time`` must be there."""
    if given in frame.columns:
        return given
    if given != "time":
        shown = ", ".join(repr(c) for c in frame.columns if c != _STAY)
        raise DataError("--time-column", f"{given!r} is in none of the tables; columns are {shown}")
    usual = [c for c in frame.columns if str(c).strip().lower() in _TIME_NAMES]
    return usual[0] if len(usual) == 1 else None


def _steps(where: Path, frame: pd.DataFrame, column, stay: np.ndarray, step) -> np.ndarray:
    """Each row's step from its stay's start: by its time (datetimes in ``step``s, numbers in
    units), else by its position in the stay."""
    if column is None:
        return frame.groupby(stay, sort=False).cumcount().to_numpy()
    times = parse_times(where, column, frame[column])
    start = pd.Series(times).groupby(stay).transform("min").to_numpy()
    if times.dtype.kind == "M":
        return ((times - start) // step.to_timedelta64()).astype(np.int64)
    return np.floor(times.astype(np.float64) - start).astype(np.int64)


def _stay_names(files: Sequence[Path]) -> list[str]:
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([f.absolute() for f in files]))
    return [str(f.absolute().relative_to(root)) for f in files]
