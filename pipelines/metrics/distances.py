"""Sample-based metrics, each tested against a brute-force version (tests/pipelines)."""

from __future__ import annotations

import torch
from torch import Tensor


def _mean_pairwise_distance(a: Tensor, b: Tensor, chunk: int = 4096) -> Tensor:
    """Mean Euclidean distance over all pairs ``(a_i, b_j)``, computed in chunks of rows."""
    total = a.new_zeros((), dtype=torch.float64)
    for i in range(0, a.shape[0], chunk):
        total = total + torch.cdist(a[i : i + chunk].double(), b.double()).sum()
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance (Szekely & Rizzo 2013) between samples ``x (n, d)`` and ``y (m, d)``:

        E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,

    the V-statistic (pairs with i = j included, as the brute-force double sum). It is zero iff the
    distributions agree; its square root is a metric. Samples are flattened to ``(n, -1)``.
    """
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"energy_distance: feature sizes differ ({x.shape[1]} vs {y.shape[1]})")
    xy = _mean_pairwise_distance(x, y)
    return float(2 * xy - _mean_pairwise_distance(x, x) - _mean_pairwise_distance(y, y))
