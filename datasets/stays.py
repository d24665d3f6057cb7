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

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.table_files import read_table_file
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
    stays, dropped = [], set()
    for path in files:
        frame = _frame(path)
        present = [c for c in drop_columns if c in frame.columns]
        dropped.update(present)
        column = _time_column(frame, time_column)
        keep = [column] if column else []
        frame = encode_columns(
            path, frame, keep=keep, drop_columns=present, categorical=categorical
        )
        stays.append(_binned(path, frame, column, step))
    absent = [c for c in drop_columns if c not in dropped]
    if absent:
        raise DataError(files[0].parent, f"--drop-columns {absent[0]!r} is in none of the tables")
    names = list(variables) if variables else list(dict.fromkeys(c for s in stays for c in s))
    steps = max((len(s) for s in stays), default=0) if length is None else length
    values = np.full((len(stays), max(steps, 1), len(names)), np.nan, np.float32)
    for k, stay in enumerate(stays):
        table = stay.reindex(columns=names).to_numpy(np.float32)[:steps]
        values[k, : len(table)] = table
    if variables:
        unseen = [v for v in variables if not any(v in s.columns for s in stays)]
        if unseen:
            raise DataError(files[0].parent, f"variable {unseen[0]!r} is in none of the tables")
    return xr.Dataset(
        {
            "values": (("stay", "time", "feature"), values),
            "observed_mask": (("stay", "time", "feature"), (~np.isnan(values)).astype(np.uint8)),
        },
        coords={"stay": _stay_names(files), "time": np.arange(values.shape[1]), "feature": names},
        attrs={
            "kind": "timeseries",
            "layout": "stays",
            "source": str(files[0].parent),
            "time_step": f"{freq or '1h'} for datetimes; one unit or row otherwise",
        },
    )


def _frame(path: Path) -> pd.DataFrame:
    try:
        return read_table_file(path)
    except DataError as exc:
        if exc.what != "the table has no rows":
            raise
        return pd.DataFrame()  # a header without rows: a stay with nothing observed


def _step(freq: str | None) -> pd.Timedelta | None:
    try:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(freq or "1h"))
    except (ValueError, TypeError):
        raise DataError("--freq", f"{freq!r} is not a time step such as 1h or 30min") from None


def _time_column(frame: pd.DataFrame, given: str) -> str | None:
    if given in frame.columns:
        return given
    usual = [c for c in frame.columns if str(c).strip().lower() in _TIME_NAMES]
    return usual[0] if len(usual) == 1 else None


def _binned(path: Path, frame: pd.DataFrame, column: str | None, step) -> pd.DataFrame:
    """The stay's numeric columns, one row per step from its start (last observed value)."""
    data = pd.DataFrame(
        {str(c): _numeric(path, str(c), frame[c]) for c in frame.columns if c != column},
        index=frame.index,
    )
    if frame.empty:
        return data
    if column is None:
        index = np.arange(len(frame))
    else:
        times = parse_times(path, column, frame[column])
        if times.dtype.kind == "M":
            index = ((times - times.min()) // step.to_timedelta64()).astype(np.int64)
        else:
            index = np.floor(times.astype(np.float64) - times.min()).astype(np.int64)
    grouped = data.groupby(index, sort=True).last()  # last non-missing value per column
    return grouped.reindex(np.arange(int(index.max()) + 1))


def _stay_names(files: Sequence[Path]) -> list[str]:
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([f.absolute() for f in files]))
    return [str(f.absolute().relative_to(root)) for f in files]
