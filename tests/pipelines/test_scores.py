"""Probabilistic scores against brute-force loops over points, levels and members."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from stdiff.pipelines.metrics.scores import (
    CSDI_QUANTILES,
    ensemble_mean_rmse,
    ensemble_quantiles,
    fair_crps,
    interval_coverage,
    interval_quantiles,
    paired_difference,
    point_errors,
    quantile_crps,
    quantile_crps_sum,
    rank_histogram,
    spread_skill_ratio,
)

DIMS = ("stay", "time", "feature")


def _case(seed: int = 0, m: int = 9, shape=(3, 4, 5)):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=shape)
    samples = truth + rng.normal(size=(m, *shape)) * 0.8 + 0.1
    mask = (rng.random(shape) < 0.6).astype(float)
    return (
        xr.DataArray(samples, dims=("member", *DIMS)),
        xr.DataArray(truth, dims=DIMS),
        xr.DataArray(mask, dims=DIMS),
    )


def _lin_quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _points(arr: np.ndarray):
    return np.ndindex(*arr.shape)


def test_quantile_crps_brute_force() -> None:
    samples, truth, mask = _case()
    s, y, w = samples.values, truth.values, mask.values
    total = 0.0
    for q in CSDI_QUANTILES:
        loss = 0.0
        for i in _points(y):
            if w[i]:
                qp = _lin_quantile(list(s[(slice(None), *i)]), q)
                loss += 2 * abs((qp - y[i]) * ((y[i] <= qp) - q))
        total += loss / sum(abs(y[i]) for i in _points(y) if w[i])
    expected = total / len(CSDI_QUANTILES)
    got = quantile_crps(ensemble_quantiles(samples, CSDI_QUANTILES), truth, mask)
    assert got == pytest.approx(expected, rel=1e-10)


def test_quantile_crps_sum_brute_force() -> None:
    samples, truth, mask = _case(1)
    s, y, w = samples.values.sum(-1), truth.values.sum(-1), mask.values.mean(-1)
    total = 0.0
    for q in CSDI_QUANTILES:
        loss = sum(
            2 * abs((qp - y[i]) * w[i] * ((y[i] <= qp) - q))
            for i in _points(y)
            for qp in [_lin_quantile(list(s[(slice(None), *i)]), q)]
        )
        total += loss / sum(abs(y[i] * w[i]) for i in _points(y))
    qs = ensemble_quantiles(samples.sum("feature"), CSDI_QUANTILES)
    got = quantile_crps_sum(qs, truth, mask)
    assert got == pytest.approx(total / len(CSDI_QUANTILES), rel=1e-10)


def test_point_errors_and_coverage_brute_force() -> None:
    samples, truth, mask = _case(2, m=41)
    s, y, w = samples.values, truth.values, mask.values
    pts = [i for i in _points(y) if w[i]]
    med = samples.median("member")
    errs = [float(med.values[i] - y[i]) for i in pts]
    got = point_errors(med, truth, mask)
    assert got["mae"] == pytest.approx(np.mean(np.abs(errs)), rel=1e-12)
    assert got["rmse"] == pytest.approx(math.sqrt(np.mean(np.square(errs))), rel=1e-12)
    cov = interval_coverage(ensemble_quantiles(samples, interval_quantiles()), truth, mask)
    for lv in (0.5, 0.9, 0.95):
        inside = [
            _lin_quantile(list(s[(slice(None), *i)]), (1 - lv) / 2)
            <= y[i]
            <= _lin_quantile(list(s[(slice(None), *i)]), (1 + lv) / 2)
            for i in pts
        ]
        assert cov[f"cover_{round(lv * 100)}"] == pytest.approx(np.mean(inside), rel=1e-12)


def test_rank_histogram_brute_force_and_ties() -> None:
    samples, truth, mask = _case(3, m=7)
    s, y, w = samples.values, truth.values, mask.values
    expected = np.zeros(8, dtype=int)
    for i in _points(y):
        if w[i]:
            expected[sum(int(v < y[i]) for v in s[(slice(None), *i)])] += 1
    np.testing.assert_array_equal(rank_histogram(samples, truth, mask), expected)
    # all members equal to the truth: the rank is uniform over the M + 1 places
    big = xr.DataArray(np.zeros((4, 5000)), dims=("member", "point"))
    h = rank_histogram(big, xr.zeros_like(big[0]), xr.ones_like(big[0]))
    assert h.sum() == 5000 and h.min() > 850


def test_calibrated_ensemble_covers_and_is_flat() -> None:
    rng = np.random.default_rng(5)
    truth = xr.DataArray(rng.normal(size=5000), dims="point")
    samples = xr.DataArray(rng.normal(size=(199, 5000)), dims=("member", "point"))
    ones = xr.ones_like(truth)
    # (with few members the interpolated interval is narrower than the level: 19 members
    # cover about 81 % with their 5-95 % quantiles)
    cov = interval_coverage(ensemble_quantiles(samples, interval_quantiles()), truth, ones)
    assert abs(cov["cover_90"] - 0.9) < 0.03 and abs(cov["cover_50"] - 0.5) < 0.03
    h = rank_histogram(samples[:19], truth, ones)
    assert h.max() / h.min() < 1.5  # 250 per bin expected, sd about 16


def test_empty_mask_is_an_error() -> None:
    samples, truth, mask = _case()
    with pytest.raises(ValueError, match="no points"):
        point_errors(samples.median("member"), truth, mask * 0)


def _grid_case(seed: int = 0, m: int = 5):
    rng = np.random.default_rng(seed)
    dims = ("init_time", "lead_time", "lat", "lon")
    truth = xr.DataArray(rng.normal(size=(3, 2, 4, 6)), dims=dims)
    samples = xr.DataArray(rng.normal(size=(m, 3, 2, 4, 6)), dims=("member", *dims))
    w = xr.DataArray(rng.uniform(0.5, 1.5, 4), dims="lat")
    return samples, truth, w


def test_weighted_rmse_fair_crps_spread_skill_brute_force() -> None:
    samples, truth, w = _grid_case()
    s, y, wv = samples.values, truth.values, w.values
    m = s.shape[0]
    for lead in range(2):
        mse, crps, var = [], [], []
        for t in range(3):
            num_e = num_c = num_v = 0.0
            for i in range(4):
                for j in range(6):
                    xs, obs = s[:, t, lead, i, j], y[t, lead, i, j]
                    num_e += wv[i] * (xs.mean() - obs) ** 2
                    skill = sum(abs(x - obs) for x in xs) / m
                    pairs = sum(abs(a - b) for a in xs for b in xs) / (2 * m * (m - 1))
                    num_c += wv[i] * (skill - pairs)
                    num_v += wv[i] * np.var(xs, ddof=1)
            den = wv.sum() * 6
            mse.append(num_e / den)
            crps.append(num_c / den)
            var.append(num_v / den)
        rmse = math.sqrt(np.mean(mse))
        got = ensemble_mean_rmse(samples, truth, w).isel(lead_time=lead)
        assert float(got) == pytest.approx(rmse, rel=1e-10)
        assert float(fair_crps(samples, truth, w).isel(lead_time=lead)) == pytest.approx(
            np.mean(crps), rel=1e-10
        )
        ssr = math.sqrt((m + 1) / m) * math.sqrt(np.mean(var)) / rmse
        assert float(spread_skill_ratio(samples, truth, w).isel(lead_time=lead)) == pytest.approx(
            ssr, rel=1e-10
        )


def test_fair_crps_is_unbiased_in_member_count() -> None:
    """For a calibrated N(0, 1) ensemble the expected fair CRPS is the CRPS of N(0, 1) against a
    N(0, 1) truth, 1/sqrt(pi), whatever the member count; the plain estimator is biased for small M."""
    rng = np.random.default_rng(0)
    w = xr.DataArray(np.ones(1), dims="lat")
    for m in (2, 4, 16):
        truth = xr.DataArray(rng.normal(size=(20000, 1, 1)), dims=("init_time", "lat", "lon"))
        samples = xr.DataArray(
            rng.normal(size=(m, 20000, 1, 1)), dims=("member", "init_time", "lat", "lon")
        )
        assert float(fair_crps(samples, truth, w)) == pytest.approx(
            1 / math.sqrt(math.pi), rel=0.02
        )
        ratio = float(spread_skill_ratio(samples, truth, w))
        assert ratio == pytest.approx(1.0, abs=0.03)


def test_paired_difference_against_scipy_and_brute_force() -> None:
    """The mean difference and its t interval per lead are scipy's paired t-test interval, and a
    brute-force loop's mean; too few cases or a bad level are refused."""
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.3, (37, 4))
    b = a + rng.normal(0.05, 0.1, (37, 4))
    mean, half = paired_difference(a, b, 0.9)
    for j in range(4):
        d = [a[i, j] - b[i, j] for i in range(37)]
        assert math.isclose(mean[j], sum(d) / len(d), rel_tol=1e-12)
        ci = ttest_rel(a[:, j], b[:, j]).confidence_interval(0.9)
        assert math.isclose(mean[j] - half[j], ci.low, rel_tol=1e-9)
        assert math.isclose(mean[j] + half[j], ci.high, rel_tol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference(a[:1], b[:1])
    with pytest.raises(ValueError, match="level"):
        paired_difference(a, b, 1.0)
