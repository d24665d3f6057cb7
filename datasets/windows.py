"""Torch datasets cut lazily from a zarr store, and the exact way back to ``xarray``.

Windows never load the whole store: each item reads only the zarr chunks it needs, through
zarr arrays opened lazily in each process (so a multi-worker ``DataLoader`` works: every worker
opens its own handles after the fork). Normalisation uses the ``<var>_mean``/``<var>_std``
statistics stored beside the data (training split only, see :mod:`datasets.splits`).

* :class:`ForecastWindows`: ``context`` steps up to an anchor time ``t``, then targets at ``leads``.
* :class:`SampleWindows`: one sample along a dimension (a PhysioNet stay as CSDI's L x K sample
  with its masks, an image with its label, a medical slice).
* :func:`to_dataset`: model outputs (optionally with a leading ``member`` dim) back to a Dataset
  with the template's coordinates and units, de-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
import zarr
from torch.utils.data import Dataset

from datasets.errors import DataError
from datasets.store import open_store


class _LazyArrays:
    """zarr arrays of one store, opened on first use in each process."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._pid: int | None = None
        self._group: zarr.Group | None = None

    def __getitem__(self, name: str) -> zarr.Array:
        if self._pid != os.getpid():
            self._group = zarr.open_group(self.path, mode="r")
            self._pid = os.getpid()
        return self._group[name]  # type: ignore[index,return-value]

    def __getstate__(self) -> dict:
        return {"path": self.path, "_pid": None, "_group": None}


def _stats(ds: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    if f"{name}_mean" in ds and f"{name}_std" in ds:
        return ds[f"{name}_mean"].values.astype(np.float32), ds[f"{name}_std"].values.astype(
            np.float32
        )
    return None


class ForecastWindows(Dataset):
    """Forecasting windows from a weather store.

    Item ``i`` (anchor time position ``t``) is a dict of float32 tensors:
      ``context``: ``(context, C, lat, lon)`` the states at ``t - context + 1 .. t``;
      ``target``: ``(len(leads), C, lat, lon)`` the states at ``t + lead`` (leads in steps);
      ``time``: ``()`` int64 anchor position.
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
    ) -> None:
        ds = open_store(store)
        if context < 1 or not leads or min(leads) < 1:
            raise ValueError(
                f"need context >= 1 and leads >= 1, got context={context}, leads={list(leads)}"
            )
        for v in variables:
            if v not in ds:
                raise DataError(
                    store, f"variable {v!r} is absent; available: {sorted(ds.data_vars)}"
                )
        self.variables, self.context, self.leads = list(variables), context, list(leads)
        self.template = ds[self.variables]
        self.arrays = _LazyArrays(store)
        pos = np.arange(ds.sizes["time"]) if times is None else np.asarray(times)
        inside = set(pos.tolist())
        span = (1 - context, max(leads))
        self.anchors = np.array(
            [t for t in pos if t + span[0] in inside and t + span[1] in inside], dtype=np.int64
        )
        if len(self.anchors) == 0:
            raise DataError(
                store,
                f"no window of context {context} and leads {list(leads)} fits the given times",
            )
        self.stats = {v: _stats(ds, v) for v in self.variables} if normalize else {}

    def __len__(self) -> int:
        return len(self.anchors)

    def _block(self, t0: int, t1: int) -> np.ndarray:
        parts = []
        for v in self.variables:
            a = np.asarray(self.arrays[v][t0:t1], dtype=np.float32)  # (T, [level], lat, lon)
            st = self.stats.get(v)
            if st is not None:
                a = (
                    (a - st[0][..., None, None]) / st[1][..., None, None]
                    if st[0].ndim
                    else (a - st[0]) / st[1]
                )
            parts.append(a.reshape(a.shape[0], -1, *a.shape[-2:]))
        return np.concatenate(parts, axis=1)  # (T, C, lat, lon)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        t = int(self.anchors[i])
        block = self._block(t - self.context + 1, t + max(self.leads) + 1)
        idx = [self.context - 1 + lead for lead in self.leads]
        return {
            "context": torch.from_numpy(block[: self.context].copy()),
            "target": torch.from_numpy(block[idx].copy()),
            "time": torch.tensor(t),
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
    """One sample along ``dim`` per item: a dict of float32 tensors, one per variable.

    ``values``-like variables are normalised with their stored statistics and their NaNs set to 0
    (CSDI's convention: missing entries are zero and flagged by ``observed_mask``); ``image`` in
    uint8 is scaled to [-1, 1]; mask and label variables are passed through.
    """

    def __init__(
        self,
        store: str | Path,
        dim: str,
        variables: Sequence[str],
        *,
        indices: np.ndarray | None = None,
        normalize: bool = True,
    ) -> None:
        ds = open_store(store)
        if dim not in ds.dims:
            raise DataError(store, f"dimension {dim!r} is absent; dims are {list(ds.dims)}")
        for v in variables:
            if v not in ds:
                raise DataError(
                    store, f"variable {v!r} is absent; available: {sorted(ds.data_vars)}"
                )
            if ds[v].dims[0] != dim:
                raise DataError(store, f"variable {v!r} does not start with dimension {dim!r}")
        self.dim, self.variables = dim, list(variables)
        self.indices = np.arange(ds.sizes[dim]) if indices is None else np.asarray(indices)
        self.dtypes = {v: ds[v].dtype for v in self.variables}
        self.stats = {v: _stats(ds, v) for v in self.variables} if normalize else {}
        self.template = ds[self.variables]
        self.arrays = _LazyArrays(store)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        out = {}
        for v in self.variables:
            a = np.asarray(self.arrays[v][j])
            if self.dtypes[v] == np.uint8 and v == "image":
                a = a.astype(np.float32) / 127.5 - 1.0
            elif np.issubdtype(self.dtypes[v], np.floating):
                a = a.astype(np.float32)
                st = self.stats.get(v)
                if st is not None:
                    a = (a - st[0]) / st[1]
                a = np.nan_to_num(a, nan=0.0)
            out[v] = torch.from_numpy(np.ascontiguousarray(a))
        out["index"] = torch.tensor(j)
        return out


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
