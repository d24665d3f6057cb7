"""Spread calibration of an ensemble on held-out points: the factor ``s`` that moves every
member about the members' mean, ``mean + s (x - mean)``, fitted where the truth is known but
the model did not see it (a validation split, another period), then applied to new draws
(``stdiff impute --set spread=s``). It is the variance inflation of ensemble post-processing:
one number, which keeps each point's ensemble mean and the members' order and only widens
(``s > 1``) or narrows their spread.

Two targets:

* ``crps``: the ``s`` minimising the mean CRPS of the ``M``-member ensemble (its empirical
  distribution, the quantity ``stdiff impute`` scores): a proper score, so the fit trades
  sharpness against calibration as the score does. The CRPS of ``mean + s d`` is convex in
  ``s`` (a mean of ``|a + s b|`` less ``s`` times a constant), so a bounded scalar search finds
  it.
* ``coverage``: the smallest ``s`` whose central ``level`` interval (the members' quantiles,
  linearly interpolated, as scored) holds at least ``level`` of the truths: nominal coverage.

Inputs are ``samples`` ``(points, members)`` and ``truth`` ``(points,)`` in one unit system
(``stdiff calibrate`` scales each feature by its std first, as the scores do).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import minimize_scalar

Target = Literal["crps", "coverage"]
BOUNDS = (0.05, 20.0)  # the factors searched


def ensemble_crps(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of each point's empirical ensemble ``(points, M)`` against ``truth`` ``(points,)``:
    ``mean_i |x_i - y| - 1/(2 M^2) sum_ij |x_i - x_j|``, the pair sum from the sorted members
    (``sum_{i<j} (x_(j) - x_(i)) = sum_i (2 i - M - 1) x_(i)``)."""
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=1)
    m = x.shape[1]
    skill = np.abs(x - np.asarray(truth, dtype=np.float64)[:, None]).mean(1)
    pairs = (x * (2 * np.arange(1, m + 1) - m - 1)).sum(1)  # sum over i < j of |x_i - x_j|
    return skill - pairs / m**2


def spread_about_mean(samples: np.ndarray, s: float) -> np.ndarray:
    """``mean + s (x - mean)`` along the members (axis 1)."""
    mean = samples.mean(1, keepdims=True)
    return mean + s * (samples - mean)


def spread_members(x: torch.Tensor, spread: float, clip=None) -> torch.Tensor:
    """``(B, members, ...)`` samples moved about their members' mean by ``spread`` (given
    entries, equal in every member, stay), then kept in ``clip``'s range (``X0Clip``)."""
    if spread == 1.0 or x.shape[1] < 2:
        return x
    mean = x.mean(1, keepdim=True)
    x = mean + spread * (x - mean)
    if clip is None:
        return x
    b, m = x.shape[:2]
    return clip.clamp(x.reshape(b * m, *x.shape[2:])).reshape(x.shape)


def interval_cover(samples: np.ndarray, truth: np.ndarray, level: float) -> float:
    """Share of the truths inside the members' central ``level`` interval (linear quantiles)."""
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return float(np.mean((truth >= lo) & (truth <= hi)))


def fit_spread(
    samples: np.ndarray, truth: np.ndarray, target: Target = "crps", level: float = 0.9
) -> float:
    """The spread factor for ``samples`` ``(points, M)`` against ``truth`` (module docstring)."""
    x, y = _check(samples, truth, level)
    mean = x.mean(1)
    dev = x - mean[:, None]
    if target == "crps":
        # CRPS(s) = mean_i |mean - y + s d_i| - s * pairs(d) / (2 M^2): pairs computed once
        m = x.shape[1]
        d = np.sort(dev, axis=1)
        pairs = float(((d * (2 * np.arange(1, m + 1) - m - 1)).sum(1)).mean()) / m**2
        gap = (mean - y)[:, None]

        def crps(s: float) -> float:
            return float(np.abs(gap + s * dev).mean()) - s * pairs

        res = minimize_scalar(crps, bounds=BOUNDS, method="bounded", options={"xatol": 1e-4})
        return float(res.x)
    if target != "coverage":
        raise ValueError(f"target must be 'crps' or 'coverage', not {target!r}")
    lo, hi = BOUNDS
    if interval_cover(mean[:, None] + hi * dev, y, level) < level:
        return hi
    for _ in range(50):  # coverage grows with s: bisection to 1e-4 relative
        mid = 0.5 * (lo + hi)
        if interval_cover(mean[:, None] + mid * dev, y, level) >= level:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-4 * hi:
            break
    return float(hi)


def _check(samples: np.ndarray, truth: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"samples must be (points, members) and truth (points,), got "
                         f"{x.shape} and {y.shape}")  # fmt: skip
    if x.shape[1] < 2 or x.shape[0] == 0:
        raise ValueError(f"a spread needs at least 2 members and 1 point, got {x.shape}")
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("samples and truth must be finite")
    if not (x != x[:, :1]).any():
        raise ValueError("the members are identical at every point: there is no spread to fit")
    return x, y
