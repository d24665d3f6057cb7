"""A CSDI checkpoint used on another time-series store of the same layout (a new hospital, a new
year): the normalisation is the checkpoint's, never the new store's, and a store with another
feature set is refused in one line before any output.

Exact check: a store holding the training store's values under different stored statistics
imputes bitwise like the training store (the same seeds, the same normalisation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.store import open_store, write_store


def _impute(store: Path, run: Path, out: Path):
    args = ["impute", "--checkpoint", run, "--data", store, "--out", out, "--sampler", "ddim",
            "--steps", 3, "--members", 2, "--set", "split=all", "--set", "eval_ratio=0.2"]  # fmt: skip
    return CliRunner().invoke(app, [str(a) for a in args])


def test_checkpoint_on_another_timeseries_store(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    ref = tmp_path / "ref.zarr"
    assert _impute(store, run, ref).exit_code == 0
    # the same values under other statistics (as a new site's own training split would give)
    other = open_store(store).load()
    other["values_mean"] = other["values_mean"] + 3.0
    other["values_std"] = other["values_std"] * 5.0
    write_store(other, tmp_path / "site_b.zarr", content_hash="b")
    out = tmp_path / "b.zarr"
    res = _impute(tmp_path / "site_b.zarr", run, out)
    assert res.exit_code == 0, res.output
    a = xr.open_zarr(ref, consolidated=False)["samples"].values
    b = xr.open_zarr(out, consolidated=False)["samples"].values
    np.testing.assert_array_equal(a, b)
    # five features where the checkpoint has four: one line, no output
    src = open_store(store).load()
    extra = src.isel(feature=[0]).assign_coords(feature=["f4"])
    five = tmp_path / "five.zarr"
    write_store(xr.concat([src, extra], "feature"), five, content_hash="5")
    bad = tmp_path / "bad.zarr"
    res = _impute(five, run, bad)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert str(five) in res.output and "features differ from the checkpoint's (5 vs 4" in res.output
    assert "f4" in res.output and not bad.exists()
