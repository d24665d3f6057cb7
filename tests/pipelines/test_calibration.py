"""Spread calibration: the ensemble CRPS against its double-sum definition, the fitted factor
against a brute-force search and against the closed form for Gaussian ensembles, and
``stdiff impute --set spread`` with ``stdiff calibrate`` end to end on a small CSDI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.pipelines.metrics.calibration import (
    ensemble_crps,
    fit_spread,
    interval_cover,
    spread_about_mean,
)


def test_ensemble_crps_is_the_double_sum() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 7)), rng.normal(size=30)
    brute = np.abs(x - y[:, None]).mean(1) - np.abs(x[:, :, None] - x[:, None, :]).sum((1, 2)) / (
        2 * 7**2
    )
    np.testing.assert_allclose(ensemble_crps(x, y), brute, rtol=1e-12, atol=1e-12)


def test_crps_fit_is_the_brute_force_minimum() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 10)) * 0.6 + rng.normal(size=(400, 1)) * 0.3
    y = rng.standard_t(4, size=400)
    grid = np.linspace(0.5, 4.0, 3501)
    scores = [ensemble_crps(spread_about_mean(x, s), y).mean() for s in grid]
    best = grid[int(np.argmin(scores))]
    assert fit_spread(x, y, "crps") == pytest.approx(best, abs=2e-3)


def test_gaussian_closed_form() -> None:
    """Members ``N(0, 0.5^2)`` (mean removed) against truths ``N(0, 1)``: for a Gaussian
    forecast ``N(0, tau^2)`` the expected M-member ensemble CRPS is
    ``sqrt(2/pi) sqrt(tau^2 + 1) - (1 - 1/M) tau / sqrt(pi)``, least where
    ``tau / sqrt(tau^2 + 1) = (1 - 1/M) / sqrt(2)``; nominal 90 % coverage needs tau near 1."""
    rng = np.random.default_rng(2)
    p, m = 20000, 400
    z = rng.normal(size=(p, m))
    x = 0.5 * (z - z.mean(1, keepdims=True))
    y = rng.normal(size=p)
    sd = 0.5 * np.sqrt(1 - 1 / m)  # the std of a member about the members' mean
    a = (1 - 1 / m) / np.sqrt(2)
    tau = a / np.sqrt(1 - a**2)
    assert fit_spread(x, y, "crps") == pytest.approx(tau / sd, rel=0.03)
    s = fit_spread(x, y, "coverage", level=0.9)
    assert s == pytest.approx(1 / sd, rel=0.03)
    assert interval_cover(spread_about_mean(x, s), y, 0.9) >= 0.9
    assert interval_cover(spread_about_mean(x, s * 0.99), y, 0.9) < 0.9
    with pytest.raises(ValueError, match="at least 2 members"):
        fit_spread(x[:, :1], y)
    with pytest.raises(ValueError, match="no spread to fit"):
        fit_spread(np.zeros((5, 3)), np.ones(5))


def _impute(store: Path, run: Path, out: Path, *extra: str):
    args = ["impute", "--checkpoint", str(run), "--data", str(store), "--out", str(out),
            "--sampler", "ddpm", "--steps", "4", "--members", "6"]  # fmt: skip
    return CliRunner().invoke(app, [*args, *extra])


def test_spread_in_impute_and_calibrate_cli(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    common = ("--set", "eval_ratio=0.2", "--set", "split=all", "--set", "clip_x0=false")
    assert _impute(store, run, tmp_path / "a.zarr", *common).exit_code == 0
    res = _impute(store, run, tmp_path / "b.zarr", *common, "--set", "spread=1.5",
                  "--set", "member_chunk=4")  # fmt: skip
    assert res.exit_code == 0, res.output
    a = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)["samples"].values
    b = xr.open_zarr(tmp_path / "b.zarr", consolidated=False)["samples"].values
    ma = a.mean(1, keepdims=True)
    np.testing.assert_allclose(b, ma + 1.5 * (a - ma), rtol=1e-4, atol=1e-4)

    res = CliRunner().invoke(app, ["calibrate", "--imputation", str(tmp_path / "a.zarr"),
                                   "--target", "crps", "--out", str(tmp_path / "s.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    fit = json.loads((tmp_path / "s.json").read_text())
    assert f"--set spread={fit['spread']:.3f}" in res.output
    assert fit["crps_after"] <= fit["crps_before"] + 1e-12 and fit["members"] == 6
    import stdiff

    api = stdiff.load(run).calibrate(store, target="crps", progress=False, sampler="ddpm",
                                     steps=4, members=6, eval_ratio=0.2, split="all",
                                     clip_x0=False)  # fmt: skip
    assert api["spread"] == fit["spread"] and api["cover_after"] == fit["cover_after"]
    res = CliRunner().invoke(app, ["calibrate", "--imputation", str(tmp_path / "b.zarr"),
                                   "--target", "crps"])  # fmt: skip
    assert res.exit_code == 0, res.output  # b applies 1.5 already: the same total factor
    assert float(res.output.split()[1]) == pytest.approx(fit["spread"], rel=2e-3)

    assert _impute(store, run, tmp_path / "c.zarr", "--set", "split=all").exit_code == 0
    for path, why in ((tmp_path / "c.zarr", "no evaluation points"), (store, "not an output")):
        res = CliRunner().invoke(app, ["calibrate", "--imputation", str(path)])
        assert res.exit_code == 2 and why in res.output and len(res.output.splitlines()) == 1
    res = _impute(store, run, tmp_path / "d.zarr", "--set", "spread=0")
    assert res.exit_code == 2 and "spread" in res.output and not (tmp_path / "d.zarr").exists()


def test_calibrate_key_fits_then_imputes(tmp_path: Path, trained_csdi) -> None:
    """``--set calibrate.KEY=...``: the held-out imputation, the fit and the job in one run,
    the same spread as ``stdiff calibrate`` on that imputation, and nothing else left behind;
    refusals name the key and create nothing."""
    store, run = trained_csdi
    held = ("--set", "eval_ratio=0.2", "--set", "split=all", "--set", "eval_seed=5")
    assert _impute(store, run, tmp_path / "held.zarr", *held).exit_code == 0
    res = CliRunner().invoke(app, ["calibrate", "--imputation", str(tmp_path / "held.zarr")])
    assert res.exit_code == 0, res.output
    expected = float(res.output.split()[1])
    res = _impute(store, run, tmp_path / "job" / "x.zarr", "--set", "eval_ratio=0.2",
                  "--set", "split=all", "--set", "calibrate.eval_ratio=0.2",
                  "--set", "calibrate.eval_seed=5")  # fmt: skip
    assert res.exit_code == 0, res.output
    made = sorted(p.name for p in (tmp_path / "job").iterdir())
    assert made == ["x.zarr", "x.zarr.metrics.json"]  # the held-out store is gone
    config = json.loads(xr.open_zarr(tmp_path / "job" / "x.zarr").attrs["config"])
    assert config["spread"] == pytest.approx(expected, rel=2e-3)
    assert config["calibrate"] == {"eval_ratio": 0.2, "eval_seed": 5}
    for extra, why in ((("--set", "calibrate.eval_ratio=0"), "calibrate.eval_ratio"),
                       (("--set", "calibrate.target=mae"), "calibrate.target"),
                       (("--set", "calibrate.stepz=3"), "stepz"),
                       (("--set", "calibrate.eval_ratio=2"), "eval_ratio"),
                       (("--set", "calibrate.eval_ratio=0.2"), "this job scores")):  # fmt: skip
        bad = tmp_path / "bad" / "y.zarr"
        res = _impute(store, run, bad, "--set", "eval_ratio=0.2", "--set", "split=all",
                      "--set", "use_targets=false", *extra)  # fmt: skip
        assert res.exit_code == 2 and why in res.output, (extra, res.output)
        assert len(res.output.strip().splitlines()) == 1 and not bad.parent.exists()
