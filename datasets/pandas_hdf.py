"""Tables that pandas saved to HDF5 (``DataFrame.to_hdf``), read with h5py alone.

Traffic-sensor benchmarks ship this way (METR-LA's ``metr-la.h5``, PEMS-BAY's ``pems-bay.h5``:
one frame, times as its index, one column per sensor). pandas itself needs PyTables to read
them; stdiff reads both of its layouts directly:

* ``format="fixed"`` (the default): a group with ``axis0`` (column names), ``axis1`` (the
  index) and ``block{k}_items`` / ``block{k}_values`` pairs (one per dtype);
* ``format="table"``: a compound dataset ``table`` with an ``index`` field and
  ``values_block_{k}`` fields; the column names are kept in a pickle (protocol 0) attribute,
  which is read opcode by opcode with :mod:`pickletools` and never unpickled.

A datetime index (any unit, ``kind`` ``datetime64[...]``, with an optional time zone) becomes
naive UTC datetimes; any other index is kept as it is. One frame per file: a file holding
several is refused, naming them.
"""

from __future__ import annotations

import pickletools
from pathlib import Path

import numpy as np
import pandas as pd

from stdiff.datasets.errors import DataError

__all__ = ["read_pandas_hdf"]


def read_pandas_hdf(path: Path) -> pd.DataFrame:
    """The one pandas frame in the HDF5 file ``path``, its index as the frame's index."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            frames = {}
            f.visititems(lambda name, obj: _collect(frames, name, obj))
            if not frames:
                raise DataError(
                    path,
                    "holds no pandas table (DataFrame.to_hdf, fixed or table format); an MRI "
                    "volume in HDF5 (fastMRI) is read with --kind medical",
                )
            if len(frames) > 1:
                names = ", ".join(sorted(frames))
                raise DataError(
                    path, f"holds {len(frames)} pandas tables ({names}); save one per file"
                )
            group = next(iter(frames.values()))
            if _text(group.attrs["pandas_type"]) == "frame":
                return _fixed(path, group)
            return _table(path, group)
    except DataError:
        raise
    except OSError as exc:
        raise DataError(path, f"cannot read as HDF5 ({str(exc).splitlines()[0]})") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(path, f"not a pandas table layout stdiff reads ({exc})") from None


def _collect(frames: dict, name: str, obj) -> None:
    kind = obj.attrs.get("pandas_type") if hasattr(obj, "attrs") else None
    if kind is not None and _text(kind) in ("frame", "frame_table"):
        frames[name] = obj


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def _labels(node) -> list:
    values = node[()]
    return [_text(v) if isinstance(v, bytes | np.bytes_) else v.item() for v in values]


def _index(values: np.ndarray, kind: str) -> pd.Index:
    """The index: datetimes (``datetime64`` alone means ns, as older pandas wrote it) as naive
    UTC; a zone-aware index is stored as UTC instants with its zone beside, so it needs nothing."""
    if not kind.startswith("datetime64"):
        return pd.Index(values)
    unit = kind[len("datetime64[") : -1] if "[" in kind else "ns"
    return pd.DatetimeIndex(np.asarray(values, np.int64).astype(f"datetime64[{unit}]"))


def _fixed(path: Path, group) -> pd.DataFrame:
    axis1 = group["axis1"]
    index = _index(axis1[()], _text(axis1.attrs.get("kind", "")))
    columns: dict = {}
    for k in range(int(group.attrs["nblocks"])):
        items = _labels(group[f"block{k}_items"])
        values = group[f"block{k}_values"]
        if values.dtype.kind not in "biuf":
            raise DataError(path, f"columns {items[:3]} are not numbers (pandas object block)")
        data = values[()]
        for j, name in enumerate(items):
            columns[name] = data[:, j]
    order = _labels(group["axis0"])
    return pd.DataFrame({name: columns[name] for name in order}, index=index)


def _table(path: Path, group) -> pd.DataFrame:
    table = group["table"]
    rows = table[()]
    kind = _text(table.attrs.get("index_kind", ""))
    index = _index(rows["index"], kind)
    columns: dict = {}
    for field in rows.dtype.names:
        if field == "index":
            continue
        names = _pickled_labels(table.attrs[f"{field}_kind"])
        block = rows[field].reshape(len(rows), -1)
        if block.dtype.kind not in "biuf" or block.shape[1] != len(names):
            raise DataError(path, f"field {field!r} is not a block of {len(names)} number columns")
        for j, name in enumerate(names):
            columns[name] = block[:, j]
    return pd.DataFrame(columns, index=index)


def _pickled_labels(blob) -> list:
    """The column names of a protocol-0 pickled list (``(lp0\\nI773869\\na...``): the values of
    its INT / FLOAT / STRING / UNICODE opcodes, read without unpickling anything."""
    raw = blob if isinstance(blob, bytes) else bytes(blob)
    labels = []
    for op, arg, _ in pickletools.genops(raw):
        if op.name in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "BUILD"):
            raise ValueError("column names are pickled objects, not plain labels")
        if op.name in ("INT", "LONG", "FLOAT", "STRING", "UNICODE", "BININT", "BINUNICODE"):
            labels.append(arg)
    return labels
