"""What ``stdiff ingest --kind weather`` does to a canonical grid before storing it: every
variable on ``([time,] [level,] lat, lon)`` (:func:`grid_dims`) and no missing cell
(:func:`fill_nan`), since a forecast model needs every cell of its input."""

from __future__ import annotations

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError


def grid_dims(ds: xr.Dataset, where: str) -> xr.Dataset:
    """``ds`` with every variable on ``([time,] [level,] lat, lon)`` in that order: a dimension
    of one value (``height``, ``expver``, ``number`` of a single member) is dropped; any other
    (ensemble members, forecast steps) is refused, naming it and what to do."""
    canonical = ("time", "level", "lat", "lon")
    for name, da in ds.data_vars.items():
        for dim in [d for d in da.dims if d not in canonical]:
            if ds.sizes[dim] == 1:
                ds = ds.squeeze(dim)
                continue
            raise DataError(
                where,
                f"variable {name} has a dimension {str(dim)!r} of {ds.sizes[dim]} values besides "
                "time, level, lat and lon; keep one value of it before ingesting (xarray: "
                f"ds.isel({dim}=0)) or leave the variable out with --variables",
            )
    return ds.transpose(*[d for d in canonical if d in ds.dims])


def fill_nan(ds: xr.Dataset, stats: xr.Dataset, mode: str) -> xr.Dataset:
    """Gridded variables with every cell set, from the NaN counts of
    ``datasets.splits.normalization_stats(count_nan=True)`` (in ``stats.attrs``, removed here):
    cells NaN at every time (SST over land, a regional mask) take the variable's training mean,
    as do NaNs at some times with ``mode="mean"``; with ``mode="error"`` those are refused (a
    forecast model needs every cell of its input). What was filled goes into
    ``attrs["filled_nan"]``, and the always-missing cells into ``<name>_filled`` (1 there), which
    ``stdiff score`` leaves out of its area means."""
    where = str(ds.attrs.get("source", "dataset"))
    counts = stats.attrs.pop("nan_counts", {})
    filled: dict[str, dict[str, int]] = {}
    for name, (total, mask) in counts.items():
        if not total:
            continue
        always = int(mask.sum())
        transient = total - always * ds[name].sizes.get("time", 1)
        if transient and mode == "error":
            share = 100.0 * transient / ds[name].size
            raise DataError(
                where,
                f"variable {name} has {transient} missing values (NaN, {share:.2g} % of it) at "
                "some times; a forecast model needs every cell: fill them before ingesting, or "
                "pass --fill-nan mean (the variable's training mean)",
            )
        mean = stats[f"{name}_mean"]
        if bool(np.isnan(mean.values).any()):
            raise DataError(where, f"variable {name} has no value in the training period")
        if always:  # where the source has no value at all: scores leave these cells out
            ds[f"{name}_filled"] = mask.astype(np.uint8).assign_attrs(
                long_name=f"1 where {name} is NaN at every time in the source (filled)"
            )
        ds[name] = ds[name].fillna(mean.astype(np.float32))
        filled[name] = {"values": int(total), "always_missing_cells": int(always)}
    if filled:
        ds.attrs["filled_nan"] = filled
    return ds
