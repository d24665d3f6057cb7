"""Two-dimensional toy distributions as canonical ``xarray.Dataset``s (dims ``sample``, ``feature``).

``ring8`` (8 Gaussians on a circle), ``moons`` and ``swissroll`` are the usual 2-D benchmarks of
generative models; each returns variable ``x`` (sample, feature) and, where defined, ``label``.
Sampling uses an explicit ``numpy.random.Generator`` seeded from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr


def _ring8(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 8, n)
    angle = 2 * np.pi * labels / 8
    centers = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centers + 0.15 * rng.standard_normal((n, 2)), labels


def _moons(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, n)
    t = np.pi * rng.random(n)
    upper = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower = np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    x = np.where(labels[:, None] == 0, upper, lower) + 0.08 * rng.standard_normal((n, 2))
    return (x - [0.5, 0.25]) * 1.5, labels


def _swissroll(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5 + 0.1 * rng.standard_normal((n, 2))
    return x, (t > 3 * np.pi).astype(np.int64)


TOY2D: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "ring8": _ring8,
    "moons": _moons,
    "swissroll": _swissroll,
}


def toy2d(name: str, n: int, seed: int) -> xr.Dataset:
    """``n`` samples of the named 2-D distribution as an ``xarray.Dataset``.

    Variables: ``x`` float32 (sample, feature) and ``label`` int64 (sample).
    """
    if name not in TOY2D:
        raise ValueError(f"toy dataset {name!r} is not known; choose one of {sorted(TOY2D)}")
    if n < 1:
        raise ValueError(f"toy dataset size n must be positive, got {n}")
    x, labels = TOY2D[name](np.random.default_rng(seed), n)
    return xr.Dataset(
        {"x": (("sample", "feature"), x.astype(np.float32)), "label": ("sample", labels)},
        coords={"feature": ["x", "y"]},
        attrs={"source": f"stdiff toy2d:{name}", "seed": seed},
    )
