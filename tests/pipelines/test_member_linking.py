"""Members linked across window changes (``pipelines.jobs.impute_link``): the assignment against
a brute-force search over every permutation, exact recovery of trajectories cut into windows
whose members were shuffled, chunk invariance, a pass killed at any point redone to the same
bytes (the CLI run is in test_series_imputation.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from stdiff.pipelines.jobs import impute_link
from stdiff.pipelines.jobs.impute_link import link_members, link_order, relabel


class Killed(BaseException):
    """The process dying at that point (nothing after it runs)."""


def test_link_order_is_the_least_squared_step_over_all_permutations() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        prev, nxt = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
        scale = rng.uniform(0.2, 3.0, 3)
        costs = {p: (((prev - nxt[list(p)]) * scale) ** 2).sum()
                 for p in itertools.permutations(range(5))}  # fmt: skip
        best = min(costs, key=costs.__getitem__)
        np.testing.assert_array_equal(link_order(prev, nxt, scale), best)


def _shuffled_windows(m=6, n=90, k=4, length=15, seed=1):
    """Smooth member trajectories ``(M, n, K)`` cut into windows of ``length`` steps, each
    window's members shuffled: (truth, shuffled, window ids)."""
    rng = np.random.default_rng(seed)
    truth = np.cumsum(rng.normal(0, 0.05, (m, n, k)), 1) + rng.normal(0, 3, (m, 1, k))
    window = np.arange(n) // length
    shuffled = truth.copy()
    for w in range(1, window.max() + 1):
        at = window == w
        shuffled[:, at] = truth[rng.permutation(m)][:, at]
    return truth, shuffled, window


def test_shuffled_windows_are_relinked_exactly_and_chunk_invariant() -> None:
    truth, shuffled, window = _shuffled_windows()
    scale = np.ones(truth.shape[2])
    linked, _ = relabel(shuffled, window, scale)
    np.testing.assert_array_equal(linked, truth)  # the first window keeps its labels
    np.testing.assert_array_equal(np.sort(linked, 0), np.sort(shuffled, 0))
    for step in (1, 7, 15, 40):  # chunks along time, the state carried between them
        state, parts = None, []
        for t0 in range(0, truth.shape[1], step):
            part, state = relabel(shuffled[:, t0 : t0 + step], window[t0 : t0 + step], scale,
                                  state)  # fmt: skip
            parts.append(part)
        np.testing.assert_array_equal(np.concatenate(parts, 1), linked)


def _partial_store(path: Path, shuffled: np.ndarray, window: np.ndarray, chunk: int) -> Path:
    ds = xr.Dataset({"samples": (("member", "time", "feature"), shuffled.astype(np.float32)),
                     "window_start": ("time", window.astype(np.int64))})  # fmt: skip
    ds = ds.chunk({"time": chunk})
    ds.to_zarr(path, zarr_format=3, consolidated=False, mode="w")
    return path


def _read(path: Path) -> np.ndarray:
    return xr.open_zarr(path, consolidated=False)["samples"].values


@pytest.mark.parametrize("kill", ["second block", "first rename", "second rename"])
def test_a_killed_pass_is_redone_to_the_same_bytes(tmp_path, monkeypatch, kill) -> None:
    truth, shuffled, window = _shuffled_windows()
    std = np.ones(truth.shape[2])
    want = _partial_store(tmp_path / "a.zarr", shuffled, window, 20)
    link_members(want, std)
    np.testing.assert_array_equal(_read(want), truth.astype(np.float32))
    link_members(want, std)  # done already: nothing changes
    np.testing.assert_array_equal(_read(want), truth.astype(np.float32))
    store = _partial_store(tmp_path / "b.zarr", shuffled, window, 20)
    calls = {"relabel": 0, "rename": 0}
    real_relabel, real_rename = impute_link.relabel, impute_link.rename

    def dying_relabel(*a):
        calls["relabel"] += 1
        if kill == "second block" and calls["relabel"] == 2:
            raise Killed
        return real_relabel(*a)

    def dying_rename(a, b):
        calls["rename"] += 1
        if (kill, calls["rename"]) in (("first rename", 1), ("second rename", 2)):
            raise Killed
        return real_rename(a, b)

    monkeypatch.setattr(impute_link, "relabel", dying_relabel)
    monkeypatch.setattr(impute_link, "rename", dying_rename)
    with pytest.raises(Killed):
        link_members(store, std)
    monkeypatch.undo()
    link_members(store, std)
    np.testing.assert_array_equal(_read(store), truth.astype(np.float32))
    left = sorted(p.name for p in store.iterdir())
    assert left == ["samples", "window_start", "zarr.json"], left
