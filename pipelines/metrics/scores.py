"""Scores of probabilistic predictions (ensembles or their quantiles) against the truth, on
xarray objects (lazy with dask), each tested against a brute-force loop (tests/pipelines).

* :func:`quantile_crps` is CSDI's CRPS (Tashiro et al. 2021, ``utils.calc_quantile_CRPS``): the
  quantile (pinball) loss at 19 levels 0.05..0.95, twice its sum over evaluation points, divided by
  the sum of ``|truth|`` there, averaged over levels. :func:`quantile_crps_sum` is the same on the
  sum over features (CSDI's ``calc_quantile_CRPS_sum``; points weighted by the mean mask).
* :func:`point_errors`: MAE and RMSE of a point prediction (the ensemble median) over the points.
* :func:`interval_coverage`: the share of points inside the central ``level`` interval, read off
  the quantiles; calibrated intervals cover ``level``.
* :func:`rank_histogram`: counts of the rank of the truth among the members (ties split at
  random by an explicit generator); flat for a calibrated ensemble.

``mask`` marks the evaluation points (1 = scored); every function raises if it is empty.

Gridded ensembles (WeatherBench 2, Rasp et al. 2024), with area ``weights`` over ``lat``
(``datasets.weather.latitude_weights``), averaged over ``space`` dims with those weights and then
over the ``time`` dim (initial times); every other dim (lead time, level, variable) is kept:

* :func:`ensemble_mean_rmse`: ``sqrt(mean_t mean_w (mean_m X - y)^2)``;
* :func:`fair_crps`: ``mean_m |X_m - y| - sum_{m != n} |X_m - X_n| / (2 M (M - 1))`` per point,
  unbiased in the member count (Zamo & Naveau 2018; WB2's ``CRPS`` with ``fair=True``);
* :func:`spread_skill_ratio`: ``sqrt((M + 1) / M) * sqrt(mean unbiased variance) / RMSE``,
  1 for a calibrated ensemble of any size (Fortin et al. 2014).

:func:`paired_difference` compares two systems scored on the same cases (initial times): the
mean of their per-case score differences and its Student-t interval, the paired test of WB2's
significance statements (cases a few days apart are close to independent; nearer ones are not,
and the interval is then too narrow).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

CSDI_QUANTILES: tuple[float, ...] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2).tolist())
INTERVAL_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)


def interval_quantiles(levels: Sequence[float] = INTERVAL_LEVELS) -> tuple[float, ...]:
    """The lower and upper quantiles of the central intervals of ``levels``."""
    qs = set()
    for lv in levels:
        qs |= {round((1 - lv) / 2, 4), round((1 + lv) / 2, 4)}
    return tuple(sorted(qs))


def ensemble_quantiles(
    samples: xr.DataArray, quantiles: Sequence[float], member_dim: str = "member"
) -> xr.DataArray:
    """Quantiles over ``member_dim`` with linear interpolation (numpy's and torch's default)."""
    return samples.quantile(list(quantiles), dim=member_dim)


def _total(x: xr.DataArray) -> float:
    return float(x.sum().compute() if hasattr(x.data, "compute") else x.sum())


def _check_mask(mask: xr.DataArray) -> float:
    n = _total(mask)
    if n <= 0:
        raise ValueError("scores: the evaluation mask selects no points")
    return n


def quantile_crps(quantiles: xr.DataArray, truth: xr.DataArray, mask: xr.DataArray) -> float:
    """CSDI's normalised CRPS from ``quantiles`` (a ``quantile`` dim of levels 0.05..0.95)."""
    _check_mask(mask)
    denom = _total(abs(truth * mask))
    if denom == 0:
        raise ValueError("quantile_crps: the truth is zero at every evaluation point")
    q = quantiles["quantile"]
    pinball = abs((quantiles - truth) * mask * ((truth <= quantiles).astype(float) - q))
    per_level = 2 * pinball.sum([d for d in pinball.dims if d != "quantile"]) / denom
    return float(per_level.mean())


def quantile_crps_sum(
    quantiles_of_sum: xr.DataArray,
    truth: xr.DataArray,
    mask: xr.DataArray,
    feature_dim: str = "feature",
) -> float:
    """CRPS-sum: :func:`quantile_crps` of the sum over ``feature_dim``; ``quantiles_of_sum`` are the
    quantiles of the ensemble's feature sums, the points weighted by the mean of ``mask``."""
    return quantile_crps(quantiles_of_sum, truth.sum(feature_dim), mask.mean(feature_dim))


def point_errors(point: xr.DataArray, truth: xr.DataArray, mask: xr.DataArray) -> dict[str, float]:
    """MAE and RMSE of ``point`` over the evaluation points."""
    n = _check_mask(mask)
    err = (point - truth) * mask
    return {"mae": _total(abs(err)) / n, "rmse": float(np.sqrt(_total(err**2) / n))}


def interval_coverage(
    quantiles: xr.DataArray,
    truth: xr.DataArray,
    mask: xr.DataArray,
    levels: Sequence[float] = INTERVAL_LEVELS,
) -> dict[str, float]:
    """``{"cover_50": share of points in the central 50 % interval, ...}`` from ``quantiles``."""
    n = _check_mask(mask)
    out = {}
    for lv in levels:
        lo = quantiles.sel(quantile=round((1 - lv) / 2, 4), method="nearest")
        hi = quantiles.sel(quantile=round((1 + lv) / 2, 4), method="nearest")
        inside = ((truth >= lo) & (truth <= hi)).astype(float) * mask
        out[f"cover_{round(lv * 100)}"] = _total(inside) / n
    return out


def rank_histogram(
    samples: xr.DataArray,
    truth: xr.DataArray,
    mask: xr.DataArray,
    member_dim: str = "member",
    seed: int = 0,
) -> np.ndarray:
    """Counts ``(M + 1,)`` of the truth's rank among ``M`` members at the evaluation points;
    a tie with ``t`` members takes a rank uniformly among its ``t + 1`` places."""
    _check_mask(mask)
    m = samples.sizes[member_dim]
    below = (samples < truth).sum(member_dim)
    ties = (samples == truth).sum(member_dim)
    sel = np.asarray(mask.broadcast_like(below).values, dtype=bool)
    b = np.asarray(below.values)[sel].astype(np.int64)
    t = np.asarray(ties.values)[sel].astype(np.int64)
    rng = np.random.default_rng(seed)
    rank = b + np.floor(rng.random(b.shape) * (t + 1)).astype(np.int64)
    return np.bincount(rank, minlength=m + 1)


def _space_time_mean(x: xr.DataArray, weights: xr.DataArray, space, time: str) -> xr.DataArray:
    dims = [d for d in space if d in x.dims]
    x = x.weighted(weights).mean(dims) if dims else x
    return x.mean(time) if time in x.dims else x


def ensemble_mean_rmse(
    samples: xr.DataArray,
    truth: xr.DataArray,
    weights: xr.DataArray,
    member_dim: str = "member",
    space: tuple[str, ...] = ("lat", "lon"),
    time: str = "init_time",
) -> xr.DataArray:
    """Area-weighted RMSE of the ensemble mean (a deterministic forecast: no member dim)."""
    mean = samples.mean(member_dim) if member_dim in samples.dims else samples
    return np.sqrt(_space_time_mean((mean - truth) ** 2, weights, space, time))


def fair_crps(
    samples: xr.DataArray,
    truth: xr.DataArray,
    weights: xr.DataArray,
    member_dim: str = "member",
    space: tuple[str, ...] = ("lat", "lon"),
    time: str = "init_time",
) -> xr.DataArray:
    """Area-weighted fair CRPS; the pair sum uses the sorted-members identity
    ``sum_{i<j} (x_(j) - x_(i)) = sum_i (2 i - M - 1) x_(i)`` (i = 1..M)."""
    m = samples.sizes[member_dim]
    if m < 2:
        raise ValueError("fair_crps needs at least 2 members")
    skill = abs(samples - truth).mean(member_dim)
    ordered = xr.apply_ufunc(
        np.sort, samples, input_core_dims=[[member_dim]], output_core_dims=[[member_dim]],
        kwargs={"axis": -1}, dask="parallelized", output_dtypes=[samples.dtype],
    )  # fmt: skip
    coef = xr.DataArray(2 * np.arange(1, m + 1) - m - 1, dims=member_dim)
    pairs = (ordered * coef).sum(member_dim)  # sum over i < j of |x_i - x_j|
    return _space_time_mean(skill - pairs / (m * (m - 1)), weights, space, time)


def spread_skill_ratio(
    samples: xr.DataArray,
    truth: xr.DataArray,
    weights: xr.DataArray,
    member_dim: str = "member",
    space: tuple[str, ...] = ("lat", "lon"),
    time: str = "init_time",
) -> xr.DataArray:
    """``sqrt((M+1)/M) * spread / skill``; 1 when the truth is exchangeable with the members."""
    m = samples.sizes[member_dim]
    spread = np.sqrt(_space_time_mean(samples.var(member_dim, ddof=1), weights, space, time))
    skill = ensemble_mean_rmse(samples, truth, weights, member_dim, space, time)
    return np.sqrt((m + 1) / m) * spread / skill


def paired_difference(
    a: np.ndarray, b: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``a - b`` over the first axis (paired cases) and the half-width of its central
    ``level`` Student-t interval, per remaining entry (e.g. lead)."""
    from scipy.stats import t as student_t

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.shape[0]
    if n < 2:
        raise ValueError("paired_difference needs at least 2 paired cases")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    half = student_t.ppf((1 + level) / 2, n - 1) * d.std(0, ddof=1) / np.sqrt(n)
    return d.mean(0), half
