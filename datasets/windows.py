"""Torch datasets cut lazily from a zarr store, and the exact way back to ``xarray``.

Windows never load the whole store: each item reads only the chunks it needs. Stores are chunked
along the window dimension only (~2 MB per chunk, :func:`datasets.store.default_chunks`); each
process keeps an LRU cache of decoded, normalised chunks (as HDF5's chunk cache does), so a
window is a slice of one or two cached chunks. Handles are opened lazily per process, so a
multi-worker ``DataLoader`` works (every worker opens its own after the fork). Normalisation uses
the ``<var>_mean``/``<var>_std`` statistics stored beside the data (training split only, see
:mod:`datasets.splits`).

* :class:`ForecastWindows`: ``context`` steps up to an anchor time ``t``, then targets at ``leads``.
* :class:`SampleWindows`: one sample along a dimension (a PhysioNet stay as CSDI's L x K sample
  with its masks, an image with its label, a medical slice).
* :class:`SeriesWindows`: windows of ``L`` consecutive steps of one long ``(time, feature)``
  series (CSDI's protocol for sensor networks, e.g. AQI-36), with :func:`window_starts`.
* :func:`to_dataset`: model outputs (optionally with a leading ``member`` dim) back to a Dataset
  with the template's coordinates and units, de-normalised.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr
from torch.utils.data import Dataset

from stdiff.datasets.errors import DataError
from stdiff.datasets.store import open_store

Stats = tuple[np.ndarray, np.ndarray] | None


class Prepare:
    """Decoded chunk ``(n, ...)`` -> float32 model input, applied once per chunk.

    Normalises with ``(mean, std)`` broadcast over the trailing ``spatial`` dims, replaces NaN by
    ``fill``, scales uint8 images to [-1, 1], and with ``channels`` flattens the dims between the
    leading one and the spatial ones into one channel dim. Integer masks and labels pass through.
    """

    def __init__(
        self,
        stats: Stats = None,
        *,
        spatial: int = 0,
        fill: float | None = None,
        image: bool = False,
        channels: bool = False,
    ) -> None:
        self.stats, self.spatial, self.fill = stats, spatial, fill
        self.image, self.channels = image, channels

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if self.image and a.dtype == np.uint8:
            a = a.astype(np.float32) / 127.5 - 1.0
        elif np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float32)
            if self.stats is not None:
                mean, std = (s.reshape(s.shape + (1,) * self.spatial) for s in self.stats)
                a = (a - mean) / std
            if self.fill is not None:
                a = np.nan_to_num(a, nan=self.fill)
        if self.channels:
            a = a.reshape(a.shape[0], -1, *a.shape[a.ndim - self.spatial :])
        return np.ascontiguousarray(a)


class ChunkCache:
    """Arrays of one store read through an LRU cache of prepared chunks along axis 0.

    ``prepare`` maps an array name to a picklable callable applied to each decoded chunk. The
    cache holds at most ``cache_bytes`` per process; handles and cache are rebuilt in each new
    process (DataLoader workers), so nothing but the path and settings is pickled.
    """

    def __init__(
        self,
        path: str | Path,
        prepare: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
        cache_bytes: int = 512 << 20,
    ) -> None:
        self.path, self.prepare, self.cache_bytes = str(path), prepare or {}, cache_bytes
        self._reset()

    def _reset(self) -> None:
        self._pid: int | None = None
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._chunk_len: dict[str, int] = {}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.nbytes = 0

    def array(self, name: str) -> zarr.Array:
        """The zarr array ``name``, opened once per process (opening reads metadata)."""
        if self._pid != os.getpid():
            self._reset()
            self._group = zarr.open_group(self.path, mode="r")
            self._pid = os.getpid()
        if name not in self._arrays:
            self._arrays[name] = self._group[name]  # type: ignore[index,assignment]
        return self._arrays[name]

    def _chunk(self, name: str, k: int) -> np.ndarray:
        key = (name, k)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        arr = self.array(name)
        c = arr.chunks[0]
        block = np.asarray(arr[k * c : (k + 1) * c])
        if name in self.prepare:
            block = self.prepare[name](block)
        self._cache[key] = block
        self.nbytes += block.nbytes
        while self.nbytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self.nbytes -= old.nbytes
        return block

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Prepared rows ``start:stop`` of array ``name`` along axis 0 (a view when in one chunk)."""
        c = self._chunk_len.get(name) if self._pid == os.getpid() else None
        if c is None:
            c = self._chunk_len[name] = self.array(name).chunks[0]
        k = start // c
        if (stop - 1) // c == k:  # the usual case: one chunk
            key = (name, k)
            block = self._cache.get(key)
            if block is None:
                block = self._chunk(name, k)
            else:
                self._cache.move_to_end(key)  # keep the LRU order
            return block[start - k * c : stop - k * c]
        parts = [
            self._chunk(name, k)[max(start - k * c, 0) : stop - k * c]
            for k in range(start // c, (stop - 1) // c + 1)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getstate__(self) -> dict:
        return {"path": self.path, "prepare": self.prepare, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()


def _stats(ds: xr.Dataset, name: str) -> Stats:
    if f"{name}_mean" in ds and f"{name}_std" in ds:
        return ds[f"{name}_mean"].values.astype(np.float32), ds[f"{name}_std"].values.astype(
            np.float32
        )
    return None


def _check_variables(store: str | Path, ds: xr.Dataset, variables: Sequence[str]) -> None:
    for v in variables:
        if v not in ds:
            raise DataError(store, f"variable {v!r} is absent; available: {sorted(ds.data_vars)}")


class ForecastWindows(Dataset):
    """Forecasting windows from a weather store.

    Item ``i`` (anchor time position ``t``) is a dict:
      ``context``: float32 ``(context, C, lat, lon)``, the states at ``t - context + 1 .. t``;
      ``target``: float32 ``(len(leads), C, lat, lon)``, the states at ``t + lead`` (in steps);
      ``time``: the anchor position ``t`` (int).
    Channels ``C`` are the variables in order, each variable's ``level`` dim flattened into them.
    Anchors are the positions in ``times`` whose whole window stays inside ``times`` (a split's
    contiguous positions), so windows never straddle a split boundary.
    """

    def __init__(
        self,
        store: str | Path,
        variables: Sequence[str],
        *,
        context: int,
        leads: Sequence[int],
        times: np.ndarray | None = None,
        normalize: bool = True,
        cache_bytes: int = 512 << 20,
    ) -> None:
        ds = open_store(store)
        if context < 1 or not leads or min(leads) < 1:
            raise ValueError(
                f"need context >= 1 and leads >= 1, got context={context}, leads={list(leads)}"
            )
        _check_variables(store, ds, variables)
        self.variables, self.context, self.leads = list(variables), context, list(leads)
        self.template = ds[self.variables]
        pos = np.arange(ds.sizes["time"]) if times is None else np.asarray(times)
        inside = set(pos.tolist())
        lo, hi = 1 - context, max(leads)
        run = regular_runs(ds["time"].values)
        self.anchors = np.array(
            [
                t
                for t in pos
                if t + lo in inside and t + hi in inside and run[t + lo] == run[t + hi]
            ],
            dtype=np.int64,
        )
        if len(self.anchors) == 0:
            gaps = int(run[-1]) if len(run) else 0
            raise DataError(
                store,
                f"no window of context {context} and leads {list(leads)} fits the given times"
                + (f" (the time axis has {gaps} gap(s); windows do not straddle one)" * (gaps > 0)),
            )
        self.stats = {v: _stats(ds, v) for v in self.variables} if normalize else {}
        prepare = {v: Prepare(self.stats.get(v), spatial=2, channels=True) for v in self.variables}
        self.arrays = ChunkCache(store, prepare, cache_bytes)

    def __len__(self) -> int:
        return len(self.anchors)

    def _block(self, t0: int, t1: int) -> np.ndarray:
        parts = [self.arrays.read(v, t0, t1) for v in self.variables]  # (T, C_v, lat, lon) each
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)  # (T, C, lat, lon)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        t = int(self.anchors[i])
        block = self._block(t - self.context + 1, t + max(self.leads) + 1)
        idx = [self.context - 1 + lead for lead in self.leads]
        return {
            "context": torch.from_numpy(block[: self.context].copy()),
            "target": torch.from_numpy(block[idx]),  # fancy indexing copies
            "time": t,
        }

    def to_dataset(
        self, tensor: torch.Tensor, i: int, member_dim: str | None = "member"
    ) -> xr.Dataset:
        """Targets ``([member,] lead, C, lat, lon)`` of item ``i`` as a Dataset of the variables
        with dims ``([member,] lead, [level,] lat, lon)``, coordinates from the store, de-normalised;
        ``valid_time`` holds each lead's time."""
        t = int(self.anchors[i])
        tmpl = self.template.isel(time=[t + lead for lead in self.leads]).rename(time="lead")
        tmpl = tmpl.assign_coords(
            lead=np.asarray(self.leads), valid_time=("lead", tmpl["lead"].values)
        )
        return to_dataset(tensor, tmpl, self.stats, member_dim=member_dim)


class SampleWindows(Dataset):
    """One sample along ``dim`` per item: a dict with one tensor per variable and ``index``.

    Float variables are normalised with their stored statistics and their NaNs set to 0 (CSDI's
    convention: missing entries are zero and flagged by ``observed_mask``); ``image`` in uint8 is
    scaled to [-1, 1]; mask and label variables pass through unchanged.
    """

    def __init__(
        self,
        store: str | Path,
        dim: str,
        variables: Sequence[str],
        *,
        indices: np.ndarray | None = None,
        normalize: bool = True,
        cache_bytes: int = 512 << 20,
    ) -> None:
        ds = open_store(store)
        if dim not in ds.dims:
            raise DataError(store, f"dimension {dim!r} is absent; dims are {list(ds.dims)}")
        _check_variables(store, ds, variables)
        for v in variables:
            if ds[v].dims[0] != dim:
                raise DataError(store, f"variable {v!r} does not start with dimension {dim!r}")
        self.dim, self.variables = dim, list(variables)
        self.indices = np.arange(ds.sizes[dim]) if indices is None else np.asarray(indices)
        self.stats = {v: _stats(ds, v) for v in self.variables} if normalize else {}
        self.template = ds[self.variables]
        prepare = {  # an image's statistics are per channel: (C,) over (C, y, x)
            v: Prepare(self.stats.get(v), spatial=2 * (v == "image"), fill=0.0, image=v == "image")
            for v in self.variables
        }
        self.arrays = ChunkCache(store, prepare, cache_bytes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        j = int(self.indices[i])
        out: dict[str, torch.Tensor | int] = {
            v: torch.from_numpy(np.array(self.arrays.read(v, j, j + 1)[0]))  # copy; 0-d for labels
            for v in self.variables
        }
        out["index"] = j
        return out

    def to_dataset(
        self,
        tensor: torch.Tensor,
        indices: Sequence[int],
        name: str,
        member_dim: str | None = "member",
    ) -> xr.Dataset:
        """Model outputs ``([member,] n, *sample_shape)`` for the samples at store positions
        ``indices`` (the items' ``index``) as variable ``name`` with the store's coordinates,
        de-normalised (e.g. imputed stays ``(member, stay, time, feature)``)."""
        tmpl = self.template[[name]].isel({self.dim: np.asarray(indices)})
        da = tmpl[name]
        arr = tensor.detach().float().cpu().numpy()
        arr = arr if member_dim is not None else arr[None]
        st = self.stats.get(name)
        if st is not None:
            arr = arr * st[1] + st[0]
        out = xr.DataArray(arr, dims=(member_dim or "member", *da.dims), attrs=da.attrs)
        ds = xr.Dataset({name: out}, coords=tmpl.coords, attrs=tmpl.attrs)
        return ds.isel({"member": 0}) if member_dim is None else ds


def regular_runs(times: np.ndarray) -> np.ndarray:
    """For each time, the number of gaps before it: a gap is a step more than 1.5 times, or
    less than half, the median step (a missing day in 6-hourly data, 29 February dropped from
    a converted ``noleap`` calendar; calendar months of 28-31 days are regular). Positions with
    equal numbers lie in one regular run, so a window whose ends share it has no gap inside."""
    t = np.asarray(times)
    if t.size < 3 or t.dtype.kind != "M":
        return np.zeros(t.size, dtype=np.int64)
    step = np.diff(t).astype("timedelta64[s]").astype(np.float64)
    med = float(np.median(step))
    gap = (step > 1.5 * med) | (step < 0.5 * med)
    return np.concatenate([[0], np.cumsum(gap)]).astype(np.int64)


def contiguous_runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers in sorted ``positions`` as ``[start, stop)`` pairs."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size == 0:
        return []
    cut = np.flatnonzero(np.diff(pos) != 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(pos, cut)]


def window_starts(positions: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """First positions of the windows of ``length`` steps lying wholly inside runs of consecutive
    ``positions`` (a split's steps), ``stride`` apart within each run, so that no window straddles
    a split boundary."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1, got {length} and {stride}")
    starts = [np.arange(a, b - length + 1, stride) for a, b in contiguous_runs(positions)]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)


class SeriesWindows(Dataset):
    """Windows of ``length`` consecutive steps of a ``(time, feature)`` series store.

    Item ``i`` is a dict: ``values`` float32 ``(L, K)`` normalised with the stored statistics and
    0 wherever ``observed_mask`` is 0 (so the ground truth of held-out ``target_mask`` entries
    never reaches training), ``observed_mask`` uint8 ``(L, K)`` and ``index``, the window's first
    time position ``starts[i]`` (CSDI's long-series samples, e.g. AQI-36's 36 hourly steps).
    """

    def __init__(
        self,
        store: str | Path,
        starts: np.ndarray,
        length: int,
        *,
        normalize: bool = True,
        cache_bytes: int = 512 << 20,
    ) -> None:
        ds = open_store(store)
        _check_variables(store, ds, ["values", "observed_mask"])
        if ds["values"].dims != ("time", "feature"):
            raise DataError(store, f"values must be (time, feature), got {ds['values'].dims}")
        self.starts, self.length = np.asarray(starts, dtype=np.int64), int(length)
        if len(self.starts) and (self.starts.min() < 0 or
                                 self.starts.max() + length > ds.sizes["time"]):  # fmt: skip
            raise DataError(store, f"a window of {length} steps runs past the series")
        self.stats = {"values": _stats(ds, "values")} if normalize else {}
        prepare = {"values": Prepare(self.stats.get("values"), fill=0.0)}
        self.arrays = ChunkCache(store, prepare, cache_bytes)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        t = int(self.starts[i])
        observed = np.array(self.arrays.read("observed_mask", t, t + self.length))  # (L, K)
        values = self.arrays.read("values", t, t + self.length) * (observed > 0)  # (L, K)
        return {
            "values": torch.from_numpy(values.astype(np.float32)),
            "observed_mask": torch.from_numpy(observed),
            "index": t,
        }


def to_dataset(
    tensor: torch.Tensor,
    template: xr.Dataset,
    stats: dict[str, tuple[np.ndarray, np.ndarray] | None] | None = None,
    *,
    member_dim: str | None = "member",
) -> xr.Dataset:
    """Inverse of the channel stacking and normalisation of the windows.

    ``tensor`` has shape ``([member,] N, C, *spatial)`` where the template's variables, each of
    shape ``(N, [level,] *spatial)``, are stacked along ``C`` in order. Returns a Dataset with the
    template's dims, coordinates and attrs, with ``member_dim`` first when given.
    """
    arr = tensor.detach().float().cpu().numpy()
    if member_dim is None:
        arr = arr[None]
    out, c = {}, 0
    for name, da in template.data_vars.items():
        per = int(np.prod(da.shape[1:-2])) if da.ndim > 3 else 1
        part = arr[:, :, c : c + per].reshape(arr.shape[0], *da.shape)
        c += per
        st = (stats or {}).get(name)
        if st is not None:
            mean, std = st
            shape = (1, 1, *mean.shape, 1, 1) if mean.ndim else ()
            part = (
                part * std.reshape(shape) + mean.reshape(shape) if mean.ndim else part * std + mean
            )
        dims = (member_dim or "member", *da.dims)
        out[name] = xr.DataArray(part, dims=dims, attrs=da.attrs)
    if c != arr.shape[2]:
        raise ValueError(f"to_dataset: tensor has {arr.shape[2]} channels, the template {c}")
    ds = xr.Dataset(out, coords=template.coords, attrs=template.attrs)
    return ds.isel({"member": 0}) if member_dim is None else ds
