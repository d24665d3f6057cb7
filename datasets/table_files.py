"""Reading one table file into a pandas frame, the format chosen by its extension.

* ``.csv`` / ``.txt`` (comma), ``.tsv`` (tab) and ``.psv`` (pipe), optionally compressed (``.gz``, ``.bz2``,
  ``.xz``, ``.zip``, ``.zst``), read as spreadsheets export them (:func:`_read_text`);
* ``.parquet`` / ``.pq``, ``.feather`` / ``.arrow``, ``.json`` (pandas' orientations) and
  ``.jsonl`` / ``.ndjson`` (one record a line);
* ``.xlsx`` / ``.xlsm`` (openpyxl): the first sheet holding data, with a warning naming any
  other sheet that holds data too;
* ``.h5`` / ``.hdf5``: a pandas HDF5 table (:mod:`datasets.pandas_hdf`);
* netCDF files and zarr stores of series over ``time`` or ``(time, station)``
  (:mod:`datasets.xarray_tables`).

A pandas index saved with a Parquet, Excel or HDF5 table (a DatetimeIndex, or time and
station) becomes columns; an unnamed DatetimeIndex becomes ``time``.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from stdiff.datasets.errors import DataError, StdiffWarning

__all__ = ["KINDS_TEXT", "is_table_file", "is_zarr_store", "read_table_file"]

_CSV = {".csv": ",", ".txt": ",", ".tsv": "\t", ".psv": "|"}  # .psv: PhysioNet 2019
_PARQUET = {".parquet", ".pq"}
_HDF = {".h5", ".hdf5", ".hdf"}  # pandas' DataFrame.to_hdf (METR-LA, PEMS-BAY)
_EXCEL = {".xlsx", ".xlsm"}
_OTHER = {  # extension -> (format name, reader)
    ".feather": ("Feather", pd.read_feather),
    ".arrow": ("Feather", pd.read_feather),
    ".json": ("JSON", pd.read_json),
    ".jsonl": ("JSON lines", lambda p: pd.read_json(p, lines=True)),
    ".ndjson": ("JSON lines", lambda p: pd.read_json(p, lines=True)),
}
_XARRAY = {".nc", ".nc4", ".cdf", ".netcdf", ".zarr"}  # series as xarray: (time[, station])
_COMPRESSION = {".gz", ".bz2", ".xz", ".zip", ".zst"}
KINDS_TEXT = (
    "CSV (.csv, .txt, .tsv, .psv), Parquet (.parquet, .pq), Feather (.feather), JSON (.json, "
    ".jsonl), Excel (.xlsx), netCDF / zarr series nor pandas HDF5 (.h5)"
)


def _kind(path: Path) -> str:
    """The format's extension, a compression suffix aside (``.csv.gz`` is ``.csv``)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def is_table_file(path: str | Path) -> bool:
    """A table file stdiff reads, by its extension."""
    kind = _kind(Path(path))
    if Path(path).is_dir():
        return is_zarr_store(Path(path))
    return any(kind in group for group in (_CSV, _PARQUET, _HDF, _EXCEL, _OTHER, _XARRAY))


def is_zarr_store(path: Path) -> bool:
    return any((path / m).is_file() for m in ("zarr.json", ".zgroup", ".zmetadata"))


def _hint(kind: str) -> str:
    if kind in (".xls", ".ods", ".numbers"):
        return f"; save the {kind} spreadsheet as .xlsx or CSV"
    return ""


def read_table_file(path: Path) -> pd.DataFrame:
    """The table in ``path`` as a frame with string column names (a saved index as columns),
    refusing an unknown extension, duplicated column names and an empty table."""
    kind = _kind(path)
    if not is_table_file(path):
        raise DataError(path, f"neither {KINDS_TEXT} by its extension{_hint(kind)}")
    if not path.exists():
        raise DataError(path, "no such file")
    if kind in _XARRAY or path.is_dir():
        from stdiff.datasets.xarray_tables import read_xarray_table

        frame = read_xarray_table(path)
    elif kind in _HDF:
        if path.suffix.lower() in _COMPRESSION:
            raise DataError(path, "a compressed HDF5 file: decompress it first")
        from stdiff.datasets.pandas_hdf import read_pandas_hdf

        frame = read_pandas_hdf(path)
    elif kind in _EXCEL:
        frame = _read_excel(path)
    else:
        frame = _read_file(path, kind)
    if kind not in _CSV and not isinstance(frame.index, pd.RangeIndex):
        # a pandas index saved with the table (a DatetimeIndex, or time and station): columns
        if isinstance(frame.index, pd.DatetimeIndex) and frame.index.name is None:
            frame.index.name = "time"
        frame = frame.reset_index()
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.columns.duplicated().any():
        dup = frame.columns[frame.columns.duplicated()][0]
        raise DataError(path, f"column {dup!r} appears more than once")
    if len(frame) == 0:
        raise DataError(path, "the table has no rows")
    return frame


def _read_file(path: Path, kind: str) -> pd.DataFrame:
    if kind in _CSV:
        what, read = "CSV", lambda p: _read_text(p, _CSV[kind])
    else:
        what, read = ("Parquet", pd.read_parquet) if kind in _PARQUET else _OTHER[kind]
    try:
        return read(path)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"cannot read as {what}: not UTF-8, UTF-16 or Windows-1252 text "
                        f"(byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None  # fmt: skip
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(path, f"cannot read as {what} ({first})") from None


_DECIMAL_COMMA = r"\s*[+-]?\d+,\d+\s*"
_INTEGER = r"\s*[+-]?\d+\s*"


def _read_text(path: Path, sep: str) -> pd.DataFrame:
    """A delimited text table as spreadsheets export it: UTF-8 (a BOM allowed), UTF-16 with its
    BOM, else Windows-1252 (Latin-1 and its superset; undecodable bytes still fail); a file
    whose header holds no ``sep`` but ``;``, tab or ``|`` is split on that instead; a ``;``
    table whose text columns are all decimal-comma numbers (``1,5``) is read with ``decimal=","``."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    utf16 = head in (b"\xff\xfe", b"\xfe\xff")
    for enc in ("utf-16",) if utf16 else ("utf-8-sig", "cp1252"):
        try:
            header = pd.read_csv(path, sep=sep, nrows=0, encoding=enc).columns  # the first line
            if len(header) == 1:
                sep = next((c for c in (";", "\t", "|") if c != sep and c in header[0]), sep)
            frame = pd.read_csv(path, sep=sep, low_memory=False, encoding=enc)
            break
        except UnicodeDecodeError:
            if enc != "utf-8-sig":
                raise
    if sep == ";" and _decimal_comma(frame):  # the only second read
        frame = pd.read_csv(path, sep=sep, low_memory=False, encoding=enc, decimal=",")
    return frame


def _decimal_comma(frame: pd.DataFrame) -> bool:
    """Whether some text column holds decimal-comma numbers and nothing but numbers."""
    found = False
    for name in frame.select_dtypes(include=["object", "string"]).columns:
        cells = frame[name].dropna().astype(str)
        comma = cells.str.fullmatch(_DECIMAL_COMMA)
        if comma.any():
            if not (comma | cells.str.fullmatch(_INTEGER)).all():
                return False
            found = True
    return found


def _read_excel(path: Path) -> pd.DataFrame:
    """The first sheet that holds data; other sheets with data are named in a warning."""
    if path.suffix.lower() in _COMPRESSION:
        raise DataError(path, "a compressed Excel file: decompress it first")
    try:
        sheets = pd.read_excel(path, sheet_name=None, engine="openpyxl", header=None)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(path, f"cannot read as Excel ({first})") from None
    full = [name for name, frame in sheets.items() if not frame.dropna(how="all").empty]
    if not full:
        raise DataError(path, "no sheet holds data")
    if len(full) > 1:
        others = ", ".join(map(repr, full[1:]))
        warnings.warn(
            StdiffWarning(f"{path}: read sheet {full[0]!r}; sheets {others} are left out"),
            stacklevel=3,
        )
    return _below_title(sheets[full[0]].dropna(axis=0, how="all").dropna(axis=1, how="all"))


def _below_title(cells: pd.DataFrame) -> pd.DataFrame:
    """A sheet's table: its header is the first row of text filling at least half the width
    (a title or notes above it, as reports have them, are left out); else the first row."""
    count = cells.notna().sum(axis=1).to_numpy()
    text = cells.apply(lambda row: all(isinstance(v, str) for v in row.dropna()), axis=1)
    header_like = text.to_numpy() & (count >= max(2, cells.shape[1] / 2))
    top = int(np.flatnonzero(header_like)[0]) if header_like.any() else 0
    header = [str(c).strip() if pd.notna(c) else f"Unnamed: {k}" for k, c in
              enumerate(cells.iloc[top])]  # fmt: skip
    body = cells.iloc[top + 1 :].reset_index(drop=True)
    body.columns = header
    return body.dropna(axis=1, how="all").infer_objects()
