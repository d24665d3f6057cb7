"""Zarr v3 stores of canonical datasets: chunked for their access pattern, written atomically,
re-ingestion detected by a content hash, provenance in the attrs.

``write_store(ds, out, content_hash=...)`` is a no-op when ``out`` already holds a store with the
same hash; otherwise the dataset is written (lazily, chunk by chunk) to a temporary sibling and
renamed into place, so a killed ingest never leaves a half-written store.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from stdiff.datasets.atomic import atomic_path
from stdiff.datasets.errors import DataError

STORE_FORMAT = 1  # bump when the canonical layout changes: old hashes then no longer match

# Stores are chunked only along the dimension windows index (time steps of a grid, stays, images,
# slices), with every other dimension whole, and about CHUNK_BYTES (uncompressed) per chunk: a
# window then touches one or two chunks, which the windows' chunk cache keeps decoded. A large grid
# (ERA5 at 0.25 deg, ~4 MB per field) gets one time step per chunk; NCEP air (5 kB) ~400 steps.
LEADING_DIM: dict[str, str] = {
    "weather": "time",
    "timeseries": "stay",
    "images": "sample",
    "medical": "slice",
}
CHUNK_BYTES = 2 << 20


def stdiff_version() -> str:
    try:
        return version("stdiff")
    except PackageNotFoundError:  # running from a source tree without installation
        return "unknown"


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(p, "no such file or folder")
    return out


def content_hash(paths: Iterable[str | Path], options: dict[str, Any] | None = None) -> str:
    """SHA-256 over the bytes of every input file (folders walked in sorted order), the ingest
    options and the store format version. Remote URLs are hashed by name only."""
    h = hashlib.sha256(f"stdiff-store-{STORE_FORMAT}".encode())
    local = [p for p in paths if "://" not in str(p)]
    for p in sorted({str(p) for p in paths} - {str(p) for p in local}):
        h.update(p.encode())
    for f in _files(local):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(json.dumps(options or {}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def store_hash(path: str | Path) -> str | None:
    """The content hash recorded in an existing store, or None when there is none."""
    p = Path(path)
    if not (p / "zarr.json").is_file():
        return None
    try:
        return xr.open_zarr(p, consolidated=False).attrs.get("content_hash")
    except (OSError, ValueError, KeyError):
        return None


def default_chunks(ds: xr.Dataset, target_bytes: int = CHUNK_BYTES) -> dict[str, int]:
    """Chunks for the dataset's kind: ~``target_bytes`` along the leading dim, others whole.

    A table without a ``stay`` dim (dims ``time, feature``) is chunked along ``time``.
    """
    lead = LEADING_DIM.get(ds.attrs.get("kind", ""))
    if lead not in ds.dims:
        lead = "time" if "time" in ds.dims else None
    chunks = {d: n for d, n in ds.sizes.items()}
    if lead is not None:
        row = max(
            (
                v.dtype.itemsize * v.size // max(v.sizes[lead], 1)
                for v in ds.data_vars.values()
                if lead in v.dims
            ),
            default=1,
        )
        chunks[lead] = int(min(ds.sizes[lead], max(1, target_bytes // max(row, 1))))
    return chunks


def write_store(
    ds: xr.Dataset,
    out: str | Path,
    *,
    content_hash: str,
    chunks: dict[str, int] | None = None,
    progress: bool = False,
) -> bool:
    """Write ``ds`` to the zarr v3 store ``out`` atomically; return False if it was already there.

    Attributes added: ``content_hash``, ``created`` (UTC ISO time), ``stdiff_version``,
    ``store_format``. Data variables are written with zstd compression (zarr v3's default codec).
    """
    out = Path(out)
    if store_hash(out) == content_hash:
        return False
    if out.exists() and not (out / "zarr.json").is_file():
        raise DataError(out, "exists and is not a zarr store; refusing to replace it")
    ds = ds.copy()
    # fixed-width unicode has no zarr v3 spec; variable-length strings do
    ds = ds.assign_coords({k: ds[k].astype(object) for k in ds.coords if ds[k].dtype.kind == "U"})
    ds = ds.assign({k: ds[k].astype(object) for k in ds.data_vars if ds[k].dtype.kind == "U"})
    ds.attrs.update(
        content_hash=content_hash,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        stdiff_version=stdiff_version(),
        store_format=STORE_FORMAT,
    )
    chunks = {**default_chunks(ds), **(chunks or {})}
    ds = ds.chunk({d: c for d, c in chunks.items() if d in ds.dims})
    # auxiliary coordinates (e.g. station / variable along feature) stay in memory: chunked
    # object-dtype coordinates make xarray warn at every write
    ds = ds.assign_coords({k: ds[k].variable.compute() for k in ds.coords if k not in ds.dims})
    for v in ds.variables.values():
        v.encoding.pop("chunks", None)
        v.encoding.pop("preferred_chunks", None)
        v.encoding.pop("compressors", None)
        v.encoding.pop("filters", None)
    with atomic_path(out) as tmp:
        delayed = ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False)
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=1.0):
                delayed.compute()
        else:
            delayed.compute()
        consolidate(tmp)
    return True


def consolidate(path: str | Path) -> None:
    """Consolidate the store's metadata, so that a plain ``xr.open_zarr(path)`` opens it without
    a warning and with one read. Zarr v3 has no spec for it yet; zarr-python stores it in the root
    ``zarr.json`` and warns at write time, which is silenced here (readers that ignore it lose
    nothing). Call it last, after every attribute is written."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(path))


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store lazily (dask-backed); a missing or foreign path raises ``DataError``."""
    p = Path(path)
    if not (p / "zarr.json").is_file():
        raise DataError(p, "not a zarr v3 store (no zarr.json); create one with `stdiff ingest`")
    try:
        return xr.open_zarr(p, consolidated=False)
    except (ValueError, KeyError, TypeError, OSError) as e:  # damaged metadata
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(p, f"unreadable zarr store ({type(e).__name__}: {first[:200]})") from None


def require_kind(ds: xr.Dataset, where: str | Path, kind: str, needed: tuple[str, ...]) -> None:
    """Refuse, in one line saying which ingest makes the right store, a store of another kind
    (its ``kind`` attribute) or one that lacks the ``needed`` variables."""
    have = ds.attrs.get("kind")
    missing = [v for v in needed if v not in ds]
    if (have is not None and have != kind) or missing:
        what = f"a {have!r} store" if have is not None else f"a store without {missing}"
        raise DataError(
            where,
            f"{what}; this job needs a {kind} store (make one with stdiff ingest --kind {kind})",
        )


def attach_stats(ds: xr.Dataset, stats: xr.Dataset) -> xr.Dataset:
    """Store normalisation statistics beside the data as ``<var>_mean`` style variables."""
    return ds.assign({k: v.astype(np.float32) for k, v in stats.data_vars.items()}).assign_attrs(
        {"normalization": stats.attrs.get("normalization", "")}
    )


def float32_array(a: np.ndarray) -> np.ndarray:
    """``a`` as float32; numbers beyond its range become infinite without a numpy warning."""
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, refused later
        return a.astype(np.float32)


def as_float32(da: xr.DataArray) -> xr.DataArray:
    """``da`` as float32 (lazily when dask-backed), without numpy's overflow warning: numbers
    beyond float32's range become infinite and the statistics pass refuses them in one line."""
    if da.dtype == np.float32:
        return da
    if dask.is_dask_collection(da.data):
        return da.copy(data=da.data.map_blocks(float32_array, dtype=np.float32))
    return da.copy(data=float32_array(np.asarray(da.data)))
