"""`stdiff impute`: the job end to end on a small trained CSDI, chunk invariance, forecasting
mode, scores consistent with the stored ensemble, and bad input refused before any output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from datasets.store import open_store
from pipelines import imputation
from pipelines.cli import app
from pipelines.imputation import ImputeConfig, run_imputation, score_imputation


def _impute(store: Path, run: Path, out: Path, *extra: str):
    args = ["impute", "--checkpoint", str(run), "--data", str(store), "--out", str(out)]
    return CliRunner().invoke(app, [*args, *extra])


def test_impute_cli_end_to_end(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    out = tmp_path / "imp.zarr"
    res = _impute(
        store, run, out, "--sampler", "ddim", "--steps", "5", "--members", "9",
        "--set", "eval_ratio=0.2", "--set", "split=all",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "CRPS" in res.output and "5 steps (5 evaluations)" in res.output
    ds = xr.open_zarr(out, consolidated=False)
    src = open_store(store)
    assert dict(ds["samples"].sizes) == {"stay": 40, "member": 9, "time": 12, "feature": 4}
    assert list(ds["feature"].values) == [f"f{i}" for i in range(4)]
    given = ds["cond_mask"].values.astype(bool)
    s = ds["samples"].values
    np.testing.assert_array_equal(
        s[:, 0][given], np.nan_to_num(src["values"].values)[given]
    )  # given entries keep their values
    assert np.isfinite(s).all()
    ev = ds["eval_mask"].values.astype(bool)
    obs = src["observed_mask"].values.astype(bool)
    assert not (ev & given).any() and ((ev | given) == obs).all()
    q = ds["quantiles"].values
    assert (np.diff(q, axis=1) >= -1e-6).all()  # quantiles increase with the level
    # the stored metrics are the scores of the stored ensemble
    result = json.loads((tmp_path / "imp.zarr.metrics.json").read_text())
    mean, std = (src[f"values_{k}"].values for k in ("mean", "std"))
    again = score_imputation(ds, mean, std)
    assert again["crps"] == pytest.approx(result["metrics"]["crps"], rel=1e-6)
    assert sum(result["metrics"]["rank_histogram"]) == result["metrics"]["eval_points"] == ev.sum()
    assert np.isfinite(result["metrics"]["crps"]) and result["metrics"]["crps"] > 0


def test_members_do_not_depend_on_chunking(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    base = {"checkpoint": str(run), "data": str(store), "sampler": "ddpm", "steps": 4,
            "members": 6, "device": "cpu", "max_stays": 5}  # fmt: skip
    a = run_imputation(
        ImputeConfig(out=str(tmp_path / "a.zarr"), member_chunk=6, batch_size=5, **base),
        progress=False,
    )
    b = run_imputation(
        ImputeConfig(out=str(tmp_path / "b.zarr"), member_chunk=4, batch_size=2, **base),
        progress=False,
    )
    sa = xr.open_zarr(a["out"], consolidated=False)["samples"].values
    sb = xr.open_zarr(b["out"], consolidated=False)["samples"].values
    np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-5)  # float sums differ with batch size
    assert np.std(sa, axis=1).max() > 0  # members differ


def test_forecast_mode_samples_the_horizon(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    cfg = ImputeConfig(
        checkpoint=str(run), data=str(store), out=str(tmp_path / "fc.zarr"), sampler="dpmpp_2m",
        steps=5, members=5, mode="forecast", horizon=3, device="cpu",
    )  # fmt: skip
    result = run_imputation(cfg, progress=False)
    ds = xr.open_zarr(result["out"], consolidated=False)
    cond, ev, obs = (ds[k].values.astype(bool) for k in ("cond_mask", "eval_mask", "observed_mask"))
    assert not cond[:, -3:].any() and (cond[:, :-3] == obs[:, :-3]).all()
    assert (ev[:, -3:] == obs[:, -3:]).all() and not ev[:, :-3].any()
    assert np.isfinite(result["metrics"]["crps"])


def test_bad_input_is_refused_and_writes_nothing(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    out = tmp_path / "bad.zarr"
    # other features than the checkpoint's
    other = open_store(store).load().assign_coords(feature=np.array(["a", "b", "c", "d"], object))
    other.to_zarr(tmp_path / "other.zarr", zarr_format=3, consolidated=False)
    res = _impute(tmp_path / "other.zarr", run, out)
    assert res.exit_code == 2 and "features differ from the checkpoint" in res.output
    # a stay with nothing observed
    empty = open_store(store).load()
    empty["observed_mask"][3] = 0
    empty["values"][3] = np.nan
    empty.to_zarr(tmp_path / "empty.zarr", zarr_format=3, consolidated=False)
    res = _impute(tmp_path / "empty.zarr", run, out, "--set", "split=all", "--steps", "2")
    assert res.exit_code == 2 and "1 stay(s) have no observed values" in res.output
    for bad, msg in [
        (["--sampler", "magic"], "sampler 'magic' is not known"),
        (["--members", "0"], "members must be at least 1"),
        (["--set", "eval_ratio=1.5"], "eval_ratio must be in [0, 1)"),
        (["--set", "mode=forecast"], "horizon must be at least 1"),
    ]:
        res = _impute(store, run, out, *bad)
        assert res.exit_code == 2 and msg in res.output, res.output
    res = _impute(store, tmp_path / "nowhere", out)
    assert res.exit_code == 2 and "checkpoint not found" in res.output
    assert not out.exists() and not list(tmp_path.glob(".bad.zarr*"))


def test_non_finite_samples_write_nothing(tmp_path: Path, trained_csdi, monkeypatch) -> None:
    store, run = trained_csdi
    monkeypatch.setattr(imputation, "sample", lambda *a, **k: torch.full(a[1], float("nan")))
    cfg = ImputeConfig(checkpoint=str(run), data=str(store), out=str(tmp_path / "n.zarr"),
                       steps=2, members=2, device="cpu")  # fmt: skip
    with pytest.raises(FloatingPointError, match="nothing was written"):
        run_imputation(cfg, progress=False)
    assert not (tmp_path / "n.zarr").exists() and not list(tmp_path.glob(".n.zarr*"))
