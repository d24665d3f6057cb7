"""PhysioNet/CinC Challenge 2012 (set-a) on CSDI's hourly grid, as a canonical ``timeseries`` Dataset.

Reference: Tashiro et al., *CSDI* (NeurIPS 2021), ``dataset_physio.py`` of
https://github.com/ermongroup/CSDI (read at commit 16478a9fdc4d87b3ae288caea9e6e6a8c065cbeb).
What that file does, and what :func:`load_physionet2012` replicates exactly:

* **35 attributes, in this order** (``attributes`` there): DiasABP, HR, Na, Lactate, NIDiasABP,
  PaO2, WBC, pH, Albumin, ALT, Glucose, SaO2, Temp, AST, Bilirubin, HCO3, BUN, RespRate, Mg, HCT,
  SysABP, FiO2, K, GCS, Cholesterol, NISysABP, TroponinT, MAP, TroponinI, PaCO2, Platelets, Urine,
  NIMAP, Creatinine, ALP.  Every other parameter is ignored, which includes the six descriptors
  (RecordID, Age, Gender, Height, ICUType, Weight, all at ``00:00``) and the time-varying Weight,
  MechVent, SpO2 and the others outside the list.
* **Hour of a row** = the integer before the colon of ``"HH:MM"`` (``extract_hour``: ``h, _ =
  map(int, x.split(":"))``): minutes are dropped, so ``47:59`` falls in hour 47.
* **48 hourly bins** ``for h in range(48)``: rows whose hour is 48 (``48:00``, 455 rows in set-a)
  or later fall in no bin and are **dropped**.
* **Several values of one parameter in one hour: the last row in file order wins**
  (``parse_data``: ``x.set_index("Parameter").to_dict()["Value"]``; a dict built from a
  duplicated index keeps the last value).  A last value that is empty (NaN) therefore hides an
  earlier valid value in the same hour, as in CSDI.
* **-1 is not treated as missing**: CSDI's mask is ``~np.isnan(values)``, so a ``-1`` among the
  35 attributes would be an observed value.  (In set-a ``-1`` occurs only in the Gender, Height and
  Weight descriptors, none of which is among the 35, so it never reaches the grid.)
* Stays are the files named by a 6-digit RecordID, sorted (``get_idlist``); CSDI silently skips
  a file that fails to parse (``except Exception: print``) -- here a malformed file raises
  :class:`~datasets.errors.DataError` instead.

Not done here (CSDI does it later, per experiment): the random choice of held-out targets, the
per-feature z-scoring over observed values and ``nan_to_num``.  ``values`` keeps raw units.

Parsing is one pass: every member's bytes are read straight from the tarball (no extraction),
each row is prefixed with its stay index, and the whole set is parsed by a single
``pandas.read_csv`` (``Time`` and ``Parameter`` as categoricals, so each distinct time string
is validated once).  The last-wins rule is applied with ``numpy.unique`` over the reversed flat
cell indices.  A file that breaks the fast path is re-read alone to name it in the error.
"""

from __future__ import annotations

import io
import re
import sys
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from stdiff.datasets.errors import DataError

__all__ = ["ATTRIBUTES", "N_HOURS", "load_physionet2012"]

ATTRIBUTES: tuple[str, ...] = (
    "DiasABP", "HR", "Na", "Lactate", "NIDiasABP", "PaO2", "WBC", "pH", "Albumin", "ALT",
    "Glucose", "SaO2", "Temp", "AST", "Bilirubin", "HCO3", "BUN", "RespRate", "Mg", "HCT",
    "SysABP", "FiO2", "K", "GCS", "Cholesterol", "NISysABP", "TroponinT", "MAP", "TroponinI",
    "PaCO2", "Platelets", "Urine", "NIMAP", "Creatinine", "ALP",
)  # fmt: skip
"""CSDI's 35 attributes, in CSDI's order (the ``feature`` coordinate)."""

N_HOURS = 48
"""Hourly bins 0..47; rows at hour 48 or later are dropped, as in CSDI."""

HEADER = "Time,Parameter,Value"
_MEMBER = re.compile(r"^(\d+)\.txt$")
_TIME = re.compile(r"^\s*(\d+):(\d{1,2})\s*$")
_FEATURE_INDEX = {name: k for k, name in enumerate(ATTRIBUTES)}
_CSDI = "ermongroup/CSDI dataset_physio.py (hourly bins 0..47, last value per hour)"


def load_physionet2012(
    path: str | Path, *, outcomes: str | Path | None = None, progress: bool = False
) -> xr.Dataset:
    """Read PhysioNet 2012 stays onto CSDI's 48 x 35 hourly grid.

    ``path`` is the official ``set-a.tar.gz`` (members ``set-a/<RecordID>.txt`` are read from the
    archive, nothing is extracted) or a folder of ``<RecordID>.txt`` files.  ``outcomes`` is an
    ``Outcomes-a.txt``; when ``None``, one named ``Outcomes-<set>.txt`` beside the tarball (or in
    or beside the folder) is used if it exists.  ``progress`` prints a count to stderr.

    Returns dims ``(stay, time, feature)``: ``values`` float32 (NaN = missing, raw units),
    ``observed_mask`` uint8; coords ``stay`` (RecordID, int64, ascending), ``time`` (hours 0..47),
    ``feature`` (:data:`ATTRIBUTES`); ``in_hospital_death`` (stay) int8 when outcomes are known.
    Raises :class:`DataError` naming the file (and member) for any malformed input.
    """
    path = Path(path)
    if path.is_dir():
        files = list(_read_folder(path))
    elif path.is_file():
        files = _read_tarball(path)
    else:
        raise DataError(path, "no such file or folder")
    if not files:
        what = "archive" if path.is_file() else "folder"
        raise DataError(path, f"{what} holds no <RecordID>.txt stay files")

    ids = np.array([rid for _, rid, _ in files], dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(path, f"RecordID {uniq[counts > 1][0]} appears in more than one file")

    values = _parse(path, files, progress)
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    mask = (~np.isnan(values)).astype(np.uint8)

    ds = xr.Dataset(
        {
            "values": (
                ("stay", "time", "feature"),
                values,
                {"long_name": "last value in the hour (CSDI)", "units": "native PhysioNet units"},
            ),
            "observed_mask": (
                ("stay", "time", "feature"),
                mask,
                {"flag_values": [0, 1], "flag_meanings": "missing observed"},
            ),
        },
        coords={
            "stay": ("stay", ids, {"long_name": "RecordID"}),
            "time": ("time", np.arange(N_HOURS, dtype=np.int64), {"units": "h"}),
            "feature": ("feature", list(ATTRIBUTES)),
        },
        attrs={"kind": "timeseries", "source": str(path), "preprocessing": _CSDI},
    )
    outcome_file = Path(outcomes) if outcomes is not None else _find_outcomes(path)
    if outcome_file is not None:
        ds["in_hospital_death"] = ("stay", _read_outcomes(outcome_file, ids), {"units": "1"})
        ds.attrs["outcomes"] = str(outcome_file)
    return ds


# --------------------------------------------------------------------------- reading the files


def _read_tarball(path: Path) -> list[tuple[str, int, bytes]]:
    files: list[tuple[str, int, bytes]] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                match = _MEMBER.match(Path(member.name).name)
                if not member.isfile() or match is None:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has data
                files.append((f"{path}:{member.name}", int(match.group(1)), handle.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(path, f"corrupt or truncated tar.gz archive ({exc})") from None
    return files


def _read_folder(path: Path) -> Iterable[tuple[str, int, bytes]]:
    for file in sorted(path.iterdir()):
        match = _MEMBER.match(file.name)
        if match is not None and file.is_file():
            yield str(file), int(match.group(1)), file.read_bytes()


def _body(where: str, raw: bytes) -> bytes:
    """Check the header; return the rows after it, ``\\n``-separated, no blank lines or final newline."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    first, _, body = raw.partition(b"\n")
    header = first.decode("utf-8", "replace").lstrip("\ufeff").strip()
    if header.replace(" ", "") != HEADER:
        shown = header[:60] or "empty"
        raise DataError(where, f"first line is {shown!r}, expected the header {HEADER!r}")
    while b"\n\n" in body:
        body = body.replace(b"\n\n", b"\n")
    return body.strip(b"\n")


# --------------------------------------------------------------------------- the one-pass parse


def _parse(path: Path, files: list[tuple[str, int, bytes]], progress: bool) -> np.ndarray:
    n = len(files)
    chunks: list[bytes] = []
    starts = np.zeros(n + 1, dtype=np.int64)  # first combined row of each stay
    bodies: list[bytes] = []
    for i, (where, _, raw) in enumerate(files):
        body = _body(where, raw)
        bodies.append(body)
        rows = body.count(b"\n") + 1 if body else 0
        starts[i + 1] = starts[i] + rows
        if rows:
            prefix = b"%d," % i
            chunks.append(prefix + body.replace(b"\n", b"\n" + prefix) + b"\n")
        if progress and ((i + 1) % 500 == 0 or i + 1 == n):
            print(f"physionet2012: read {i + 1}/{n} stays", file=sys.stderr)

    values = np.full((n, N_HOURS, len(ATTRIBUTES)), np.nan, dtype=np.float32)
    if starts[-1] == 0:
        return values
    try:
        table = pd.read_csv(
            io.BytesIO(b"".join(chunks)),
            header=None,
            names=["stay", "Time", "Parameter", "Value"],
            dtype={"stay": np.int64, "Time": "category", "Parameter": "category"},
            engine="c",
            skip_blank_lines=False,
            na_filter=True,
        )
        value = table["Value"].to_numpy(dtype=np.float64)
    except (ValueError, pd.errors.ParserError) as exc:
        for (where, _, _), body in zip(files, bodies, strict=True):
            _diagnose(where, body)
        raise DataError(path, f"cannot parse the stay files ({exc})") from None

    stay = table["stay"].to_numpy()

    def where_row(row: int) -> str:
        i = int(stay[row])
        return f"{files[i][0]}: line {row - starts[i] + 2}"

    # hour of each distinct time string (validated once per distinct string)
    time = table["Time"].cat
    time_codes = time.codes.to_numpy()
    if (time_codes < 0).any():
        raise DataError(where_row(int(np.flatnonzero(time_codes < 0)[0])), "empty time")
    hour_of = np.empty(len(time.categories), dtype=np.int64)
    for k, text in enumerate(time.categories):
        match = _TIME.match(str(text))
        if match is None or int(match.group(2)) >= 60:
            row = int(np.flatnonzero(time_codes == k)[0])
            raise DataError(where_row(row), f"bad time {text!r}, expected HH:MM")
        hour_of[k] = int(match.group(1))
    hour = hour_of[time_codes]

    param = table["Parameter"].cat
    param_codes = param.codes.to_numpy()
    if (param_codes < 0).any():
        raise DataError(where_row(int(np.flatnonzero(param_codes < 0)[0])), "no parameter name")
    feature_of = np.array([_FEATURE_INDEX.get(str(p), -1) for p in param.categories], np.int64)
    feature = feature_of[param_codes]

    _check_record_ids(files, stay, param, param_codes, value, where_row)

    keep = (feature >= 0) & (hour < N_HOURS)  # hour 48 (48:00) falls in no CSDI bin
    flat = (stay[keep] * N_HOURS + hour[keep]) * len(ATTRIBUTES) + feature[keep]
    kept_values = value[keep]
    # last row in file order wins: first occurrence in the reversed order
    cells, first_rev = np.unique(flat[::-1], return_index=True)
    values.reshape(-1)[cells] = kept_values[::-1][first_rev]
    return values


def _check_record_ids(files, stay, param, param_codes, value, where_row) -> None:
    """A ``RecordID`` descriptor row must agree with the file name."""
    cats = list(param.categories)
    if "RecordID" not in cats:
        return
    rows = np.flatnonzero(param_codes == cats.index("RecordID"))
    expected = np.array([files[i][1] for i in stay[rows]], dtype=np.float64)
    bad = rows[value[rows] != expected]
    if bad.size:
        row = int(bad[0])
        raise DataError(
            where_row(row),
            f"RecordID {value[row]:g} disagrees with the file name {files[stay[row]][1]}",
        )


def _diagnose(where: str, body: bytes) -> None:
    """Re-read one stay alone and raise a DataError naming its first bad line, if it has one."""
    if not body:
        return
    for lineno, line in enumerate(body.split(b"\n"), start=2):
        fields = line.decode("utf-8", "replace").split(",")
        if len(fields) != 3:
            raise DataError(where, f"line {lineno}: expected 3 fields, found {len(fields)}")
        text = fields[2].strip()
        if text and text.lower() not in ("nan", "na"):
            try:
                float(text)
            except ValueError:
                raise DataError(where, f"line {lineno}: value {text!r} is not a number") from None


# --------------------------------------------------------------------------- outcomes


def _find_outcomes(path: Path) -> Path | None:
    match = re.search(r"set-([A-Za-z0-9]+)", path.name)
    name = f"Outcomes-{match.group(1) if match else 'a'}.txt"
    places = [path / name, path.parent / name] if path.is_dir() else [path.parent / name]
    return next((p for p in places if p.is_file()), None)


def _read_outcomes(path: Path, ids: np.ndarray) -> np.ndarray:
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(path, "outcomes file not found") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot parse the outcomes table ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in ("RecordID", "In-hospital_death"):
        if column not in table.columns:
            raise DataError(path, f"no column {column!r} (columns: {', '.join(table.columns)})")
    record = pd.to_numeric(table["RecordID"], errors="coerce")
    death = pd.to_numeric(table["In-hospital_death"], errors="coerce")
    if record.isna().any() or record.duplicated().any():
        raise DataError(path, "RecordID column has missing, non-numeric or duplicated entries")
    if not death.isin([0, 1]).all():
        raise DataError(path, "In-hospital_death must be 0 or 1 in every row")
    lookup = pd.Series(death.to_numpy(), index=record.astype(np.int64).to_numpy())
    missing = np.setdiff1d(ids, lookup.index.to_numpy())
    if missing.size:
        raise DataError(path, f"{missing.size} stays have no outcome (first RecordID {missing[0]})")
    return lookup.loc[ids].to_numpy().astype(np.int8)
