"""Splits that do not leak, and normalisation statistics computed on the training split only.

* Grids split **by time** (contiguous periods: e.g. NCEP air, train 2013, test 2014), so no test
  day is ever seen in training, not even as a neighbour of a training window.
* PhysioNet splits **by stay** with CSDI's 5-fold protocol (Tashiro et al. 2021,
  ``dataset_physio.get_dataloader``): shuffle the sorted stays with seed 1, fold ``k`` takes the
  ``k``-th fifth as test, the rest is shuffled again with the same seed and its first 70 % of *all*
  stays are training, the other 10 % validation (``num_train = int(len(dataset) * 0.7)``). Reproduced with a local ``numpy.random.RandomState`` (no global state).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import dask
import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError


@dataclass(frozen=True)
class Split:
    """Integer positions along the split dimension for train, validation and test."""

    dim: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def describe(self) -> str:
        return f"by {self.dim}: {len(self.train)} train / {len(self.valid)} valid / {len(self.test)} test"


def csdi_fold_split(n: int, fold: int = 0, seed: int = 1, nfold: int = 5) -> Split:
    """CSDI's entity split of ``n`` stays (positions into the RecordID-sorted stay axis)."""
    if not 0 <= fold < nfold:
        raise ValueError(f"fold must be in [0, {nfold}), got {fold}")
    idx = np.arange(n)
    rs = np.random.RandomState(seed)
    rs.shuffle(idx)
    start, end = int(fold / nfold * n), int((fold + 1) / nfold * n)
    test = idx[start:end]
    remain = np.delete(idx, np.arange(start, end))
    rs = np.random.RandomState(seed)
    rs.shuffle(remain)
    n_train = int(n * 0.7)  # of all stays, as the official code: 70 / 10 / 20 %
    return Split("stay", remain[:n_train], remain[n_train:], test)


def stays_with_data(observed_mask, block_bytes: int = 64 << 20) -> np.ndarray:
    """``(N,)`` bool: which stays of ``observed_mask`` ``(N, ...)`` observe anything. A store's
    lazy ``DataArray`` is read ``block_bytes`` at a time (a loop, not one dask graph, whose
    task count would grow with the store), so memory does not grow with the store."""
    n = observed_mask.shape[0]
    if not isinstance(observed_mask, xr.DataArray):
        return np.asarray(observed_mask).reshape(n, -1).any(1)
    row = max(1, int(np.prod(observed_mask.shape[1:])) * observed_mask.dtype.itemsize)
    step = max(1, block_bytes // row)
    dim = observed_mask.dims[0]
    out = np.zeros(n, dtype=bool)
    for a in range(0, n, step):
        part = np.asarray(observed_mask.isel({dim: slice(a, a + step)}).values)
        out[a : a + step] = part.reshape(len(part), -1).any(1)
    return out


#: per-stay flag written at ingest (``stays_with_data`` of the mask), so that a job need not scan
#: the whole mask to split the stays
HAS_DATA = "stay_has_data"


def csdi_stay_split(observed_mask, fold: int = 0, seed: int = 1) -> Split:
    """CSDI's split over the stays that have at least one observed value, as positions into all
    stays. The official loader drops a stay with nothing observed (drawing its ground-truth mask
    raises and the stay is skipped), so on set-a it splits 3997 stays, not 4000.
    ``observed_mask`` is ``(N, L, K)``: numpy, or a store's lazy ``DataArray``; or a store
    (``xr.Dataset``), whose ``stay_has_data`` flags are read when ingest wrote them (the mask is
    scanned otherwise)."""
    if isinstance(observed_mask, xr.Dataset):
        has = stored_stays_with_data(observed_mask)
    else:
        has = stays_with_data(observed_mask)
    keep = np.flatnonzero(has)
    s = csdi_fold_split(len(keep), fold, seed)
    return Split("stay", keep[s.train], keep[s.valid], keep[s.test])


def stored_stays_with_data(ds: xr.Dataset) -> np.ndarray:
    """``(N,)`` bool: which stays observe anything, from the store's ``stay_has_data`` flags
    (``N`` bytes) when present, else from a block-wise scan of its ``observed_mask``."""
    if HAS_DATA not in ds:
        return stays_with_data(ds["observed_mask"])
    flags = ds[HAS_DATA]
    if flags.dims != ("stay",) or flags.shape[0] != ds.sizes["stay"]:
        raise DataError(
            ds.attrs.get("source", "store"),
            f"{HAS_DATA} must be (stay,) with {ds.sizes['stay']} entries, got {flags.dims} "
            f"{flags.shape}; ingest the source again",
        )
    return np.asarray(flags.values).astype(bool)


def time_split(
    ds: xr.Dataset,
    train: tuple[str, str],
    test: tuple[str, str],
    valid: tuple[str, str] | None = None,
) -> Split:
    """Positions along ``time`` for inclusive date ranges, e.g. ``("2013-01-01", "2013-12-31")``."""
    times = ds.indexes["time"]

    def pos(rng: tuple[str, str] | None, name: str) -> np.ndarray:
        if rng is None:
            return np.array([], dtype=np.int64)
        sel = np.flatnonzero(
            (times >= np.datetime64(rng[0])) & (times <= np.datetime64(f"{rng[1]}T23:59:59"))
        )
        if sel.size == 0:
            raise DataError(
                ds.attrs.get("source", "dataset"), f"{name} period {rng} holds no time steps"
            )
        return sel

    out = Split("time", pos(train, "train"), pos(valid, "valid"), pos(test, "test"))
    last_train = out.train.max()
    if (out.test.size and out.test.min() <= last_train) or (
        out.valid.size and out.valid.min() <= last_train
    ):
        raise ValueError(
            "--test-period must come after the training period (--train-period); the steps between them are validation"
        )
    return out


def normalization_stats(
    ds: xr.Dataset,
    variables: list[str],
    split: Split,
    *,
    keep_dims: tuple[str, ...] = ("feature", "level"),
    time_differences: bool = False,
    count_nan: bool = False,
) -> xr.Dataset:
    """Mean and std of each variable over the training positions (NaN-aware), per ``keep_dims``.

    Returns variables ``<var>_mean`` and ``<var>_std`` (and ``<var>_diff_std``, the std of
    one-step time differences, for residual forecasting). A zero std is replaced by 1.
    ``count_nan``: also count, in the same pass, each variable's NaNs and find its cells NaN
    at every time (a land or sea mask), as ``attrs["nan_counts"]`` ``{name: [nans, mask]}``
    (the mask a DataArray without ``time``; gridded data: ``datasets.weather_ingest.fill_nan``).
    """
    train = ds.isel({split.dim: split.train})
    out = {}
    for name in variables:
        if name not in ds:
            raise DataError(ds.attrs.get("source", "dataset"), f"variable {name!r} is absent")
        da = train[name].astype(np.float64)
        dims = [d for d in da.dims if d not in keep_dims]
        mean, std = da.mean(dims, skipna=True), da.std(dims, skipna=True)
        out[f"{name}_mean"] = mean
        out[f"{name}_std"] = std.where(std > 0, 1.0)
        if time_differences:
            diff = da.diff("time")
            dstd = diff.std([d for d in diff.dims if d not in keep_dims], skipna=True)
            out[f"{name}_diff_std"] = dstd.where(dstd > 0, 1.0)
    floats = [n for n in variables if ds[n].dtype.kind == "f"]
    infinite = {n: np.isinf(ds[n]).sum() for n in floats}
    nans = {}
    if count_nan:
        for n in floats:
            isnan = np.isnan(ds[n])
            always = isnan.all("time") if "time" in isnan.dims else isnan
            nans[n] = (isnan.sum(), always)
    with warnings.catch_warnings():  # the std of data holding inf warns before the refusal
        warnings.simplefilter("ignore", RuntimeWarning)
        stats, counts, nans = dask.compute(xr.Dataset(out), infinite, nans)  # one pass
    bad = {n: int(c) for n, c in counts.items() if int(c)}
    if bad:
        raise DataError(
            ds.attrs.get("source", "dataset"),
            f"infinite values in {bad} (variable: count); store missing values as NaN or "
            "leave them out (numbers beyond float32's range, about 3.4e38, are infinite here)",
        )
    stats = stats.astype(np.float32)
    if count_nan:
        stats.attrs["nan_counts"] = {n: [int(a), b] for n, (a, b) in nans.items()}
    stats.attrs["normalization"] = f"statistics of the training split only ({split.describe()})"
    return stats


# codes of the ``split`` variable of a series store (dims ``time``); -1: in no split
SERIES_SPLIT_CODES: dict[str, int] = {"unused": -1, "train": 0, "valid": 1, "test": 2}


def month_split(
    ds: xr.Dataset, test_months: tuple[int, ...], valid_months: tuple[int, ...] = ()
) -> Split:
    """Positions along ``time`` by calendar month (CSDI's AQI-36 protocol: months 3, 6, 9 and 12
    of every year are test, the others train; ``valid_months`` are taken from the training ones)."""
    where = ds.attrs.get("source", "dataset")
    if ds["time"].dtype.kind != "M":
        raise DataError(where, "test_months needs dates as times, but the times are numbers")
    both = set(test_months) & set(valid_months)
    bad = [m for m in (*test_months, *valid_months) if not 1 <= int(m) <= 12]
    if bad or both:
        what = f"month {bad[0]} is not in 1..12" if bad else f"month {min(both)} is test and valid"
        raise DataError("test_months", what)
    month = ds.indexes["time"].month.to_numpy()
    test = np.flatnonzero(np.isin(month, test_months))
    valid = np.flatnonzero(np.isin(month, valid_months))
    train = np.flatnonzero(~np.isin(month, (*test_months, *valid_months)))
    for name, pos in (("train", train), ("test", test)):
        if pos.size == 0:
            raise DataError(where, f"the {name} months hold no time steps")
    return Split("time", train, valid, test)


def series_split(
    ds: xr.Dataset,
    *,
    train_period: tuple[str, str] | None = None,
    test_period: tuple[str, str] | None = None,
    test_months: tuple[int, ...] | None = None,
    valid_months: tuple[int, ...] | None = None,
) -> Split:
    """The split of one long series ``(time, feature)``: by months, by periods (the steps between
    them are validation), or by default the first 70 % train, 10 % valid, last 20 % test."""
    if test_months and (train_period or test_period):
        raise ValueError("give test_months or train_period/test_period, not both")
    if valid_months and not test_months:
        raise ValueError("valid_months needs test_months")
    if test_months:
        return month_split(ds, tuple(test_months), tuple(valid_months or ()))
    if bool(train_period) != bool(test_period):
        raise ValueError("give both --train-period and --test-period, or neither")
    n = ds.sizes["time"]
    if train_period and test_period:
        if ds["time"].dtype.kind != "M":
            raise DataError(ds.attrs.get("source", "dataset"), "periods need dates as times")
        s = time_split(ds, train_period, test_period)
        between = np.arange(s.train.max() + 1, s.test.min())
        return Split("time", s.train, between, s.test)
    a, b = int(0.7 * n), int(0.8 * n)
    return Split("time", np.arange(a), np.arange(a, b), np.arange(b, n))


def split_variable(split: Split, n: int) -> xr.DataArray:
    """The split as an int8 variable over ``split.dim`` (-1 unused, 0 train, 1 valid, 2 test)."""
    codes = np.full(n, SERIES_SPLIT_CODES["unused"], dtype=np.int8)
    for name in ("train", "valid", "test"):
        codes[getattr(split, name)] = SERIES_SPLIT_CODES[name]
    return xr.DataArray(
        codes,
        dims=split.dim,
        attrs={"flag_values": [-1, 0, 1, 2], "flag_meanings": "unused train valid test"},
    )
