"""Stores (atomic, hash no-op, provenance), leak-free splits, lazy windows and their inverse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from torch.utils.data import DataLoader

from stdiff.datasets.errors import DataError
from stdiff.datasets.splits import csdi_fold_split, normalization_stats, time_split
from stdiff.datasets.store import attach_stats, content_hash, open_store, store_hash, write_store
from stdiff.datasets.windows import ForecastWindows, SampleWindows


def _grid(n_time: int = 40) -> xr.Dataset:
    rng = np.random.default_rng(0)
    time = pd.date_range("2013-12-25", periods=n_time, freq="6h")
    return xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                rng.normal(280, 5, (n_time, 3, 4)).astype(np.float32),
                {"units": "K"},
            ),
            "z": (
                ("time", "level", "lat", "lon"),
                rng.normal(0, 1, (n_time, 2, 3, 4)).astype(np.float32),
            ),
        },
        coords={
            "time": time,
            "level": [500, 850],
            "lat": [10.0, 20.0, 30.0],
            "lon": [0.0, 90.0, 180.0, 270.0],
        },
        attrs={"kind": "weather", "source": "synthetic"},
    )


def _stays(n: int = 10) -> xr.Dataset:
    rng = np.random.default_rng(1)
    v = rng.normal(5, 2, (n, 6, 3)).astype(np.float32)
    v[rng.random(v.shape) < 0.5] = np.nan
    return xr.Dataset(
        {
            "values": (("stay", "time", "feature"), v),
            "observed_mask": (("stay", "time", "feature"), (~np.isnan(v)).astype(np.uint8)),
        },
        coords={"stay": np.arange(100, 100 + n), "feature": ["a", "b", "c"]},
        attrs={"kind": "timeseries", "source": "synthetic"},
    )


def test_store_roundtrip_hash_noop_provenance(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("raw bytes")
    h = content_hash([src], {"variables": ["t2m"]})
    assert (
        h
        == content_hash([src], {"variables": ["t2m"]})
        != content_hash([src], {"variables": ["z"]})
    )
    out = tmp_path / "s.zarr"
    assert write_store(_grid(), out, content_hash=h) is True
    mtime = (out / "zarr.json").stat().st_mtime_ns
    assert write_store(_grid(), out, content_hash=h) is False  # re-ingest: no-op
    assert (out / "zarr.json").stat().st_mtime_ns == mtime
    ds = open_store(out)
    assert ds.attrs["content_hash"] == h and ds.attrs["store_format"] == 1 and "created" in ds.attrs
    assert ds["t2m"].attrs["units"] == "K"
    assert ds["t2m"].encoding["chunks"] == (40, 3, 4)  # ~2 MB along time, whole grids
    xr.testing.assert_equal(ds[["t2m", "z"]].load(), _grid()[["t2m", "z"]])
    src.write_text("changed")
    assert store_hash(out) != content_hash([src], {"variables": ["t2m"]})


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    bad = _grid().assign(obj=("time", np.array([object()] * 40)))
    with pytest.raises(Exception):  # noqa: B017 -- any encoder error
        write_store(bad, tmp_path / "s.zarr", content_hash="x")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "folder.zarr").mkdir()
    (tmp_path / "folder.zarr" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not a zarr store"):
        write_store(_grid(), tmp_path / "folder.zarr", content_hash="x")
    with pytest.raises(DataError, match="not a zarr v3 store"):
        open_store(tmp_path / "folder.zarr")


def test_csdi_split_protocol() -> None:
    s = csdi_fold_split(4000, fold=0, seed=1)
    assert (len(s.train), len(s.valid), len(s.test)) == (2800, 400, 800)
    all_idx = np.concatenate([s.train, s.valid, s.test])
    assert sorted(all_idx.tolist()) == list(range(4000))
    # reference: the same protocol with numpy's legacy global functions, as CSDI wrote it
    idx = np.arange(4000)
    np.random.RandomState(1).shuffle(idx)
    assert np.array_equal(s.test, idx[:800])
    folds = [set(csdi_fold_split(4000, fold=k).test.tolist()) for k in range(5)]
    assert set.union(*folds) == set(range(4000)) and sum(map(len, folds)) == 4000


def test_time_split_and_stats_use_train_only() -> None:
    ds = _grid()
    s = time_split(ds, train=("2013-12-25", "2013-12-31"), test=("2014-01-01", "2014-01-03"))
    assert ds.time.values[s.train].max() < ds.time.values[s.test].min()
    stats = normalization_stats(ds, ["t2m", "z"], s, time_differences=True)
    expect = ds["t2m"].isel(time=s.train).values.astype(np.float64)
    assert stats["t2m_mean"].item() == pytest.approx(expect.mean(), rel=1e-6)
    assert stats["t2m_std"].item() == pytest.approx(expect.std(), rel=1e-5)
    assert stats["z_mean"].dims == ("level",)
    assert "training split only" in stats.attrs["normalization"]
    with pytest.raises(ValueError, match="after the training"):
        time_split(ds, train=("2014-01-01", "2014-01-03"), test=("2013-12-25", "2013-12-31"))
    with pytest.raises(DataError, match="holds no time steps"):
        time_split(ds, train=("2010-01-01", "2010-02-01"), test=("2014-01-01", "2014-01-02"))


@pytest.fixture
def grid_store(tmp_path: Path) -> tuple[Path, xr.Dataset]:
    ds = _grid()
    s = time_split(ds, train=("2013-12-25", "2013-12-31"), test=("2014-01-01", "2014-01-09"))
    ds = attach_stats(ds, normalization_stats(ds, ["t2m", "z"], s))
    write_store(ds, tmp_path / "g.zarr", content_hash="g")
    return tmp_path / "g.zarr", ds


def test_forecast_windows_and_inverse(grid_store) -> None:
    path, ds = grid_store
    w = ForecastWindows(path, ["t2m", "z"], context=2, leads=[1, 3])
    assert len(w) == 40 - 1 - 3
    item = w[0]
    assert item["context"].shape == (2, 3, 3, 4) and item["target"].shape == (2, 3, 3, 4)
    t = int(item["time"])
    raw = (ds["t2m"].values[t + 3] - ds["t2m_mean"].values) / ds["t2m_std"].values
    np.testing.assert_allclose(item["target"][1, 0].numpy(), raw, rtol=1e-5)
    back = w.to_dataset(item["target"][None].repeat(2, 1, 1, 1, 1), 0)
    assert back["t2m"].dims == ("member", "lead", "lat", "lon") and back["z"].dims == (
        "member",
        "lead",
        "level",
        "lat",
        "lon",
    )
    np.testing.assert_allclose(
        back["t2m"].isel(member=1).values, ds["t2m"].values[[t + 1, t + 3]], rtol=1e-5
    )
    np.testing.assert_allclose(
        back["z"].isel(member=0).values, ds["z"].values[[t + 1, t + 3]], rtol=1e-4, atol=1e-5
    )
    assert list(back["valid_time"].values) == list(ds.time.values[[t + 1, t + 3]])
    # windows restricted to a split never reach outside it
    test_pos = np.arange(28, 40)
    wt = ForecastWindows(path, ["t2m"], context=3, leads=[2], times=test_pos)
    assert wt.anchors.min() - 2 >= 28 and wt.anchors.max() + 2 <= 39
    with pytest.raises(DataError, match="absent"):
        ForecastWindows(path, ["q"], context=1, leads=[1])


def test_multiworker_loader_matches_serial(grid_store) -> None:
    path, _ = grid_store
    w = ForecastWindows(path, ["t2m"], context=2, leads=[1])
    serial = torch.stack([w[i]["target"] for i in range(len(w))])
    batches = list(DataLoader(w, batch_size=8, num_workers=2, shuffle=False))
    torch.testing.assert_close(torch.cat([b["target"] for b in batches]), serial)


def test_sample_windows_csdi_layout(tmp_path: Path) -> None:
    ds = _stays()
    s = csdi_fold_split(10, fold=0)
    ds = attach_stats(ds, normalization_stats(ds, ["values"], s))
    write_store(ds, tmp_path / "p.zarr", content_hash="p")
    w = SampleWindows(tmp_path / "p.zarr", "stay", ["values", "observed_mask"], indices=s.train)
    item = w[0]
    j = int(item["index"])
    assert item["values"].shape == (6, 3) and item["observed_mask"].dtype == torch.uint8
    v = ds["values"].values[j]
    expect = np.nan_to_num((v - ds["values_mean"].values) / ds["values_std"].values, nan=0.0)
    np.testing.assert_allclose(item["values"].numpy(), expect, rtol=1e-5)
    assert bool((item["values"][item["observed_mask"] == 0] == 0).all())
    back = w.to_dataset(item["values"][None, None].repeat(3, 1, 1, 1), [j], "values")
    assert back["values"].dims == ("member", "stay", "time", "feature")
    assert int(back.stay[0]) == int(ds.stay[j])
    obs = item["observed_mask"].numpy().astype(bool)
    np.testing.assert_allclose(back["values"].values[2, 0][obs], v[obs], rtol=1e-5)
    with pytest.raises(DataError, match="dimension 'sample'"):
        SampleWindows(tmp_path / "p.zarr", "sample", ["values"])


def test_chunk_cache_reads_across_chunk_edges(tmp_path: Path) -> None:
    """Windows straddling chunk boundaries are exact, and the cache stays within its budget."""
    ds = _grid()
    write_store(ds, tmp_path / "c.zarr", content_hash="c", chunks={"time": 7})
    w = ForecastWindows(tmp_path / "c.zarr", ["t2m"], context=3, leads=[2], normalize=False)
    w.arrays.cache_bytes = 2 * 7 * 3 * 4 * 4  # two chunks of t2m
    for i in range(len(w)):
        t = int(w.anchors[i])
        item = w[i]
        np.testing.assert_array_equal(
            item["context"][:, 0].numpy(), ds["t2m"].values[t - 2 : t + 1]
        )
        np.testing.assert_array_equal(item["target"][0, 0].numpy(), ds["t2m"].values[t + 2])
        assert w.arrays.nbytes <= w.arrays.cache_bytes
