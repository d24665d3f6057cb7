"""Volumes stored as a text header and raw voxels: ITK's MetaImage (``.mha``, or ``.mhd`` with
its ``.raw`` / ``.zraw`` file; LUNA16's CT scans) and NRRD (``.nrrd``, or ``.nhdr`` with a
detached data file; 3D Slicer's format), read without SimpleITK or pynrrd.

Both store the fastest axis first (x, then y, then z): the array is read as ``(z, y, x)`` =
``(slice, y, x)``, rows and columns as stored (display with ``origin="upper"``, as DICOM).
Supported: 2-D and 3-D scalar volumes of 8-64-bit integers or floats; raw, zlib / gzip
compressed (MetaImage ``CompressedData``, NRRD ``encoding: gzip``) or NRRD ``ascii`` data; either
byte order. ``spacing_mm`` is (z, y, x) from ``ElementSpacing`` / the lengths of NRRD's
``space directions``; a CT modality (MetaImage ``Modality = MET_MOD_CT``) sets units HU.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError

__all__ = ["RAW_SUFFIXES", "load_raw_volume"]

RAW_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_MET_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
    "MET_UINT": "u4", "MET_LONG": "i8", "MET_ULONG": "u8", "MET_LONG_LONG": "i8",
    "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}  # fmt: skip
_NRRD_TYPES = {
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i1": ("signed char", "int8", "int8_t", "char"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_NRRD_DTYPE = {name: code for code, names in _NRRD_TYPES.items() for name in names}


def load_raw_volume(path: str | Path) -> xr.Dataset:
    """A MetaImage or NRRD volume as the canonical ``slice, y, x`` medical dataset."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    nrrd = path.suffix.lower() in (".nrrd", ".nhdr")
    volume, spacing, ct = (_nrrd if nrrd else _metaimage)(path)
    if volume.ndim == 2:
        volume, spacing = volume[None], [float("nan"), *spacing]
    if volume.ndim != 3:
        raise DataError(path, f"a {volume.ndim}-D image; a 2-D or 3-D volume is expected")
    volume = volume.astype(np.float32)
    if not np.isfinite(volume).all():
        raise DataError(path, "the volume holds NaN or infinite voxels")
    return xr.Dataset(
        {"image": (("slice", "y", "x"), volume, {"units": "HU"} if ct else {})},
        attrs={
            "kind": "medical",
            "source": str(path),
            "spacing_mm": [float(v) for v in spacing],
            "modality": "CT" if ct else "",
        },
    )


def _header_lines(path: Path, limit: int = 1 << 16) -> tuple[list[str], int]:
    """The header's lines and its length in bytes (it ends at a blank line for NRRD, after the
    ``ElementDataFile`` line for MetaImage)."""
    with open(path, "rb") as fh:
        head = fh.read(limit)
    lines, offset = [], 0
    for raw in head.split(b"\n"):
        offset += len(raw) + 1
        line = raw.decode("latin-1").rstrip("\r")
        if not line.strip() and path.suffix.lower() in (".nrrd", ".nhdr"):
            break
        lines.append(line)
        if line.split("=")[0].strip() == "ElementDataFile":
            break
    return lines, offset


def _metaimage(path: Path) -> tuple[np.ndarray, list[float], bool]:
    lines, offset = _header_lines(path)
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in lines) if v}
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        dtype = np.dtype(_MET_TYPES[fields["ElementType"]])
        where = fields["ElementDataFile"]
    except (KeyError, ValueError):
        raise DataError(
            path, "not a MetaImage header (DimSize, ElementType, ElementDataFile)"
        ) from None
    if int(fields.get("ElementNumberOfChannels", "1")) != 1:
        raise DataError(path, "several channels per voxel; a scalar volume is expected")
    msb = fields.get("ElementByteOrderMSB", fields.get("BinaryDataByteOrderMSB", "False"))
    dtype = dtype.newbyteorder(">" if msb.lower() == "true" else "<")
    if where.upper() == "LOCAL":
        data_file, skip = path, offset
    elif where.upper().startswith("LIST") or "%" in where:
        raise DataError(path, f"ElementDataFile {where!r}: one data file is supported")
    else:
        data_file, skip = path.parent / where, 0
    raw = _read_data(path, data_file, skip)
    if fields.get("CompressedData", "False").lower() == "true":
        raw = _inflate(path, raw)
    volume = _shaped(path, raw, dtype, dims)
    spacing = [float(v) for v in fields.get("ElementSpacing", "").split()] or [float("nan")] * 3
    return volume, spacing[::-1][: volume.ndim], fields.get("Modality") == "MET_MOD_CT"


def _nrrd(path: Path) -> tuple[np.ndarray, list[float], bool]:
    lines, offset = _header_lines(path)
    if not lines or not lines[0].startswith("NRRD"):
        raise DataError(path, "not an NRRD file (no NRRD magic line)")
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    try:
        dims = [int(v) for v in fields["sizes"].split()]
        dtype = np.dtype(_NRRD_DTYPE[fields["type"].lower()])
    except (KeyError, ValueError):
        raise DataError(path, f"NRRD type {fields.get('type')!r} or sizes not understood") from None
    if len(dims) != int(fields.get("dimension", len(dims))):
        raise DataError(path, "NRRD sizes do not match its dimension")
    dtype = dtype.newbyteorder(">" if fields.get("endian", "little") == "big" else "<")
    detached = fields.get("data file", fields.get("datafile"))
    data_file, skip = (path.parent / detached, 0) if detached else (path, offset)
    encoding = fields.get("encoding", "raw").lower()
    raw = _read_data(path, data_file, skip)
    if encoding in ("gzip", "gz"):
        raw = _inflate(path, raw)
    elif encoding in ("ascii", "text", "txt"):
        raw = np.array(raw.split(), dtype=np.float64).astype(dtype).tobytes()
    elif encoding != "raw":
        raise DataError(path, f"NRRD encoding {encoding!r}: raw, gzip or ascii is supported")
    volume = _shaped(path, raw, dtype, dims)
    spacing = _nrrd_spacing(fields, len(dims))
    return volume, spacing[::-1], False


def _nrrd_spacing(fields: dict[str, str], n: int) -> list[float]:
    if "spacings" in fields:
        values = [
            float(v) if v.lower() != "nan" else float("nan") for v in fields["spacings"].split()
        ]
        return values[:n]
    directions = fields.get("space directions", "")
    vectors = [v for v in directions.replace(")", "").split("(") if v.strip()]
    lengths = [float(np.linalg.norm([float(c) for c in v.split(",")])) for v in vectors]
    return lengths[:n] if len(lengths) >= n else [float("nan")] * n


def _read_data(path: Path, data_file: Path, skip: int) -> bytes:
    if not data_file.is_file():
        raise DataError(path, f"its data file {data_file.name!r} is not beside it")
    with open(data_file, "rb") as fh:
        fh.seek(skip)
        return fh.read()


def _inflate(path: Path, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else zlib.decompress(raw)
    except (zlib.error, OSError, EOFError) as exc:
        raise DataError(path, f"cannot decompress its voxels ({exc})") from None


def _shaped(path: Path, raw: bytes, dtype: np.dtype, dims: list[int]) -> np.ndarray:
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) < need:
        raise DataError(path, f"{len(raw)} bytes of voxels, {need} expected for {dims} {dtype}")
    return np.frombuffer(raw[-need:] if len(raw) > need else raw, dtype).reshape(dims[::-1])
