"""Weather forecasting end to end on a small synthetic grid: `stdiff train` (task forecast, the
ensemble DiT and the regression baseline), `stdiff forecast`, `stdiff score`; member
reproducibility; input checks before any work; baselines against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.splits import normalization_stats, time_split
from stdiff.datasets.store import attach_stats, open_store, write_store
from stdiff.diffusion.conditioning import Condition
from stdiff.pipelines.engine.config import from_dict
from stdiff.pipelines.engine.runner import load_denoiser
from stdiff.pipelines.jobs.forecast import (
    GENCAST_OPTIONS,
    ForecastConfig,
    parse_inits,
    run_forecast,
)
from stdiff.pipelines.jobs.score import climatology, persistence, truth_at

TIMES = pd.date_range("2013-01-01", periods=4 * 80, freq="6h")


def _store(path: Path, lon_shift: float = 0.0) -> Path:
    rng = np.random.default_rng(0)
    lat = np.linspace(60, 30, 7)
    lon = np.linspace(200, 230, 10) + lon_shift
    t = np.arange(len(TIMES))[:, None, None]
    wave = np.sin(0.3 * t + np.deg2rad(lon)[None, None, :] * 6 + np.deg2rad(lat)[None, :, None] * 3)
    air = 280 + 10 * wave + rng.normal(0, 0.5, (len(TIMES), 7, 10))
    ds = xr.Dataset(
        {"air": (("time", "lat", "lon"), air.astype(np.float32), {"units": "K"})},
        coords={"time": TIMES, "lat": lat, "lon": lon},
        attrs={"kind": "weather", "source": "synthetic"},
    )
    split = time_split(ds, ("2013-01-01", "2013-02-28"), ("2013-03-01", "2013-03-21"))
    ds = attach_stats(ds, normalization_stats(ds, ["air"], split, time_differences=True))
    write_store(ds, path, content_hash=f"w{lon_shift}")
    return path


def _job(out: Path, store: Path, objective: str) -> dict:
    return {
        "out": str(out),
        "device": "cpu",
        "data": {"store": str(store), "task": "forecast", "train_period": ["2013-01-01", "2013-02-28"],
                 "valid_period": ["2013-03-01", "2013-03-05"]},
        "model": {"net": "dit_custom", "params": {"patch_size": 2, "depth": 1, "hidden": 32, "num_heads": 2},
                  "prediction": "edm", "sigma_data": 1.0},
        "schedule": {"name": "edm", "params": {"sigma_min": 0.03, "sigma_max": 80.0}},
        "optim": {"lr": 2e-3, "warmup_steps": 5},
        "loop": {"objective": objective, "steps": 30, "batch_size": 8, "log_every": 10,
                 "checkpoint_every": 30, "val_every": 30, "val_batches": 1, "progress": False},
    }  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("weather")
    store = _store(root / "grid.zarr")
    for name, objective in (("ens", "denoise"), ("det", "regression")):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(_job(root / name, store, objective)))
        res = CliRunner().invoke(app, ["train", "--config", str(root / f"{name}.yaml")])
        assert res.exit_code == 0, res.output
        recs = [json.loads(ln) for ln in (root / name / "metrics.jsonl").read_text().splitlines()]
        assert np.isfinite(recs[-1]["loss"]) and "val_loss" in recs[-1]
        if objective == "regression":  # single-batch denoising losses are too noisy to compare
            assert recs[-1]["loss"] < recs[0]["loss"]
    return store, root / "ens", root / "det"


def test_forecast_and_score_from_the_cli(tmp_path: Path, trained) -> None:
    store, ens, det = trained
    common = ["--data", str(store), "--init", "2013-03-10T00/2013-03-11T00/24h", "--lead", "18h"]
    res = CliRunner().invoke(app, ["forecast", "--checkpoint", str(ens), "--out", str(tmp_path / "e.zarr"),
                                   "--members", "3", "--set", "steps=4", "--layout", "stdiff", *common])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 initial times x 3 members x 3 steps" in res.output
    res = CliRunner().invoke(
        app, ["forecast", "--checkpoint", str(det), "--out", str(tmp_path / "d.zarr"), *common]
    )
    assert res.exit_code == 0 and "x 1 members" in res.output, res.output
    fc = xr.open_zarr(tmp_path / "e.zarr", consolidated=False)
    assert fc["air"].dims == ("init_time", "member", "lead_time", "lat", "lon")
    assert fc["air"].shape == (2, 3, 3, 7, 10) and fc["air"].attrs["units"] == "K"
    assert (fc["valid_time"].values[1, 2] == np.datetime64("2013-03-11T18:00")).all()
    assert np.isfinite(fc["air"].values).all() and float(fc["air"].std("member").mean()) > 0
    assert fc.attrs["Conventions"] == "CF-1.8"
    res = CliRunner().invoke(app, ["score", "--forecast", f"ens={tmp_path / 'e.zarr'}", "--forecast",
                                   f"det={tmp_path / 'd.zarr'}", "--data", str(store), "--out",
                                   str(tmp_path / "scores"), "--climatology-period", "2013-01-01:2013-02-28"])  # fmt: skip
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "scores/scores.json").read_text())["scores"]["air"]
    assert set(s) == {"ens", "det", "persistence", "climatology"}
    assert (
        len(s["ens"]["crps"]) == 3 and "spread_skill" in s["ens"] and "spread_skill" not in s["det"]
    )
    assert sum(s["ens"]["rank_histogram"]) == 2 * 3 * 7 * 10  # no lead >= 24 h here: all leads
    # every other system against the first forecast, paired over the 2 initial times: the mean
    # difference is the difference of the means; the 95 % interval has 1 degree of freedom
    assert "crps_vs_first" not in s["ens"] and "CRPS vs ens (%)" in res.output
    for name in ("det", "persistence", "climatology"):
        vs = s[name]["crps_vs_first"]
        want = [100 * (a - b) / b for a, b in zip(s[name]["crps"], s["ens"]["crps"], strict=True)]
        assert vs["against"] == "ens" and np.allclose(vs["percent"], want, rtol=1e-4, atol=1e-6)
        assert len(vs["half_width"]) == 3 and min(vs["half_width"]) >= 0
    rows = (tmp_path / "scores/scores.csv").read_text().splitlines()
    assert rows[0].endswith("crps_vs_first_percent,crps_vs_first_half_width")
    for png in ("scores_vs_lead.png", "rank_histogram.png", "case_maps.png"):
        assert (tmp_path / "scores" / png).stat().st_size > 2000


def test_members_do_not_depend_on_batching(tmp_path: Path, trained) -> None:
    store, ens, _ = trained
    kw = {"checkpoint": str(ens), "data": str(store), "init": ["2013-03-10T06"], "lead": "12h",
          "members": 4, "steps": 3, "device": "cpu"}  # fmt: skip
    a = run_forecast(
        ForecastConfig(out=str(tmp_path / "a.zarr"), member_batch=4, **kw), progress=False
    )
    b = run_forecast(
        ForecastConfig(out=str(tmp_path / "b.zarr"), member_batch=1, **kw), progress=False
    )
    xa = xr.open_zarr(a["out"], consolidated=False)["air"].values
    xb = xr.open_zarr(b["out"], consolidated=False)["air"].values
    np.testing.assert_allclose(xa, xb, rtol=1e-5, atol=1e-3)


def test_dispersion_knobs_are_the_sampler_options(tmp_path: Path, trained) -> None:
    """``churn`` / ``noise_inflation`` set the sampler's ``s_churn`` / ``s_noise``: the same
    forecast as through ``options``, and a different one from the defaults."""
    store, ens, _ = trained
    kw = {"checkpoint": str(ens), "data": str(store), "init": ["2013-03-10T06"], "lead": "12h",
          "members": 3, "steps": 4, "device": "cpu"}  # fmt: skip
    runs = {
        "knobs": {"churn": 0.5, "noise_inflation": 1.3},
        "options": {"options": {**GENCAST_OPTIONS, "s_churn": 0.5, "s_noise": 1.3}},
        "default": {},
    }
    got = {}
    for name, extra in runs.items():
        r = run_forecast(ForecastConfig(out=str(tmp_path / f"{name}.zarr"), **kw, **extra), False)
        got[name] = xr.open_zarr(r["out"])["air"].values
    np.testing.assert_array_equal(got["knobs"], got["options"])
    assert np.abs(got["knobs"] - got["default"]).max() > 1e-3
    with pytest.raises(ValueError, match="churn: sampler 'euler' has no churn"):
        ForecastConfig(out="x", sampler="euler", options={}, churn=1.0, **kw)
    with pytest.raises(ValueError, match="unknown option"):
        ForecastConfig(out="x", sampler="euler", options={"s_churn": 1.0}, **kw)
    # GenCast's churn by default only where the sampler takes it
    assert ForecastConfig(out="x", **kw).sampler_options() == GENCAST_OPTIONS
    assert ForecastConfig(out="x", **{**kw, "sampler": "dpmpp_2m"}).sampler_options() == {}
    with pytest.raises(ValueError, match="noise_inflation must be >= 0"):
        ForecastConfig(out="x", noise_inflation=-1.0, **kw)


def test_spread_inflates_each_step_about_the_members_mean(tmp_path: Path, trained) -> None:
    """``spread``: at the first step every member starts from the same state, so the inflated
    members are exactly ``mean + S (x - mean)`` of the uninflated ones (clipping off); later
    steps are inflated too, whatever ``member_batch``; a bad factor is refused."""
    store, ens, _ = trained
    kw = {"checkpoint": str(ens), "data": str(store), "init": ["2013-03-10T06"], "lead": "12h",
          "members": 4, "steps": 3, "device": "cpu", "clip_x0": False}  # fmt: skip
    got = {}
    for name, extra in {"plain": {}, "wide": {"spread": 2.0},
                        "wide_b1": {"spread": 2.0, "member_batch": 1},
                        "per_step": {"spread": [2.0, 1.0]}}.items():  # fmt: skip
        r = run_forecast(ForecastConfig(out=str(tmp_path / f"{name}.zarr"), **kw, **extra), False)
        got[name] = xr.open_zarr(r["out"], consolidated=False)["air"].values[0]  # (M, T, H, W)
    plain, wide = got["plain"][:, 0].astype(np.float64), got["wide"][:, 0].astype(np.float64)
    mean = plain.mean(0)
    np.testing.assert_allclose(wide.mean(0), mean, atol=1e-3)
    np.testing.assert_allclose(wide - mean, 2.0 * (plain - mean), atol=2e-3)
    assert got["wide"][:, 1].std(0).mean() > 1.5 * got["plain"][:, 1].std(0).mean()
    np.testing.assert_allclose(got["wide_b1"], got["wide"], rtol=1e-5, atol=1e-3)
    # a factor per step: the first step is the inflated one, the second is not inflated again
    np.testing.assert_allclose(got["per_step"][:, 0], got["wide"][:, 0], rtol=1e-5, atol=1e-3)
    assert not np.allclose(got["per_step"][:, 1], got["wide"][:, 1], atol=1e-2)
    cfg = from_dict(ForecastConfig, {"out": "x", **kw, "spread": [1.15, 1.3]})
    assert [cfg.spread_at(k) for k in (1, 2, 3, 12)] == [1.15, 1.3, 1.3, 1.3]
    for bad in (0.0, -1.0, float("nan"), 101.0, [], [1.2, 0.0]):
        with pytest.raises(ValueError, match="spread must be in"):
            ForecastConfig(out="x", spread=bad, **kw)


def test_bad_forecast_input_fails_before_work(tmp_path: Path, trained) -> None:
    store, ens, _ = trained
    out = tmp_path / "bad.zarr"
    base = ["forecast", "--checkpoint", str(ens), "--data", str(store), "--out", str(out)]
    other = _store(tmp_path / "other.zarr", lon_shift=2.5)
    for extra, msg in [
        (["--init", "2014-06-01T00"], "are not times of the data"),
        (["--init", "2013-03-10T03"], "are not times of the data"),
        (["--init", "2013-01-01T00"], "lacks its 1 previous state"),
        (
            ["--init", "2013-03-10T00", "--lead", "8h"],
            "--lead 8h is not a positive whole number of the model's steps (6 h)",
        ),
        (["--init", "2013-03-10T00", "--lead", "2months"], "--lead 2months: months and years"),
        (["--init", "2013-03-10T00", "--lead", "soon"], "not a duration"),
        (["--init", "2013-03-10T00", "--members", "0"], "members must be at least 1"),
    ]:
        res = CliRunner().invoke(app, [*base, *extra])
        assert res.exit_code == 2 and msg in res.output, (extra, res.output)
    res = CliRunner().invoke(app, [*base[:4], str(other), *base[5:], "--init", "2013-03-10T00"])
    assert res.exit_code == 2 and "longitudes differ" in res.output, res.output
    assert not out.exists()


def test_baselines_brute_force(trained) -> None:
    store, _, _ = trained
    data = open_store(store)
    inits = parse_inits(["2013-03-10T00", "2013-03-12T12"], "t")
    fc = xr.Dataset(coords={"init_time": inits, "lead_time": pd.to_timedelta([6, 12], "h")})
    fc = fc.assign_coords(valid_time=fc["init_time"] + fc["lead_time"])
    per = persistence(data, fc, "air")
    np.testing.assert_array_equal(
        per.isel(init_time=1, lead_time=1), data["air"].sel(time="2013-03-12T12")
    )
    tru = truth_at(data, fc, "air")
    np.testing.assert_array_equal(
        tru.isel(init_time=1, lead_time=1), data["air"].sel(time="2013-03-13T00")
    )
    clim = climatology(data, fc, "air", ["2013-01-01", "2013-02-28"], 15)
    # brute force for the valid time 2013-03-10T12 (day 69, 12 UTC): days 54..84 of the period at 12 UTC
    t = data.indexes["time"]
    sel = (t.hour == 12) & (np.abs(t.day_of_year - 69) <= 15) & (t < "2013-03-01")
    np.testing.assert_allclose(
        clim.isel(init_time=0, lead_time=1), data["air"].values[sel].mean(0), rtol=1e-6
    )


def test_multi_variable_multi_level_grid_by_configuration(tmp_path: Path) -> None:
    """A WeatherBench2-like store (t on 2 levels, u at the surface) goes through train, forecast
    and score with no code change: channels t@850, t@500, u."""
    rng = np.random.default_rng(1)
    lat, lon, lev = np.linspace(60, 30, 6), np.linspace(0, 27.5, 12), np.array([850, 500])
    n = len(TIMES[:200])
    t_field = 250 + 10 * rng.normal(size=(n, 2, 6, 12)).cumsum(0) * 0.05
    u_field = rng.normal(size=(n, 6, 12)).cumsum(0) * 0.1
    ds = xr.Dataset(
        {
            "t": (("time", "level", "lat", "lon"), t_field.astype(np.float32), {"units": "K"}),
            "u": (("time", "lat", "lon"), u_field.astype(np.float32), {"units": "m s-1"}),
        },
        coords={"time": TIMES[:200], "level": lev, "lat": lat, "lon": lon},
        attrs={"kind": "weather", "source": "synthetic multi-level"},
    )
    split = time_split(ds, ("2013-01-01", "2013-02-10"), ("2013-02-11", "2013-02-19"))
    ds = attach_stats(ds, normalization_stats(ds, ["t", "u"], split, time_differences=True))
    store = tmp_path / "era.zarr"
    write_store(ds, store, content_hash="era")
    job = _job(tmp_path / "run", store, "denoise")
    job["data"].update(
        train_period=["2013-01-01", "2013-02-10"], valid_period=None, variables=["t", "u"]
    )
    job["loop"].update(steps=4, log_every=2, checkpoint_every=4, val_every=0)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    cfg = ForecastConfig(checkpoint=str(tmp_path / "run"), data=str(store), out=str(tmp_path / "fc.zarr"),
                         init=["2013-02-12T00"], lead="12h", members=2, steps=2, device="cpu",
                         layout="stdiff")  # fmt: skip
    run_forecast(cfg, progress=False)
    fc = xr.open_zarr(tmp_path / "fc.zarr", consolidated=False)
    assert fc["t"].dims == ("init_time", "member", "lead_time", "level", "lat", "lon")
    assert fc["u"].dims == ("init_time", "member", "lead_time", "lat", "lon")
    assert list(fc["level"].values) == [850, 500] and fc["u"].attrs["units"] == "m s-1"
    res = CliRunner().invoke(app, ["score", "--forecast", f"ens={tmp_path / 'fc.zarr'}", "--data", str(store),
                                   "--out", str(tmp_path / "s"), "--climatology-period", "2013-01-01:2013-02-10"])  # fmt: skip
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s/scores.json").read_text())["scores"]
    assert set(s) == {"t@850", "t@500", "u"} and len(s["t@500"]["ens"]["rmse"]) == 2  # per lead


def test_latest_init_is_the_last_data_time() -> None:
    times = np.array(["2013-03-01T00", "2013-03-01T06"], dtype="datetime64[ns]")
    got = parse_inits(["latest", "2013-03-01T00"], "t", times)
    assert list(got) == list(times)
    with pytest.raises(ValueError, match="latest"):
        parse_inits(["latest"], "t")


def test_forecast_resumes_missing_initial_times(tmp_path, trained, monkeypatch) -> None:
    """A forecast that fails at its second initial time keeps the first; run again it computes
    only the missing ones and equals an uninterrupted run."""
    from stdiff.pipelines.jobs import forecast as fc

    store, run, _ = trained
    cfg = ForecastConfig(checkpoint=str(run), data=str(store), out=str(tmp_path / "f.zarr"),
                         init=["2013-03-10T00", "2013-03-11T00"], lead="12h", members=2,
                         steps=3, device="cpu")  # fmt: skip
    real, calls = fc._rollout, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would, mid-run
        return real(*a, **k)

    monkeypatch.setattr(fc, "_rollout", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_forecast(cfg, progress=False)
    assert not (tmp_path / "f.zarr").exists()
    monkeypatch.setattr(fc, "_rollout", real)
    r = run_forecast(cfg, progress=False)
    assert r["computed"] == [1]
    ref = run_forecast(ForecastConfig(**{**cfg.__dict__, "out": str(tmp_path / "ref.zarr")}),
                       progress=False)  # fmt: skip
    assert ref["computed"] == [0, 1]
    a = xr.open_zarr(tmp_path / "f.zarr", consolidated=False)
    b = xr.open_zarr(tmp_path / "ref.zarr", consolidated=False)
    np.testing.assert_array_equal(a["air"].values, b["air"].values)


def test_wb2_layout_is_the_default_with_cf_attributes(tmp_path: Path, trained) -> None:
    """The API's forecast (one implementation with the CLI) in WeatherBench 2 layout, opened by
    plain ``xr.open_zarr`` with no warning, scored by `stdiff score` with the numbers of the same
    forecast in stdiff's layout."""
    import warnings

    import stdiff

    store, ens, _ = trained
    model = stdiff.load(ens)
    kw = {"init": ["2013-03-10T00", "2013-03-11T00"], "lead": "12h", "members": 2, "steps": 2,
          "device": "cpu", "progress": False}  # fmt: skip
    fc = model.forecast(store, out=tmp_path / "wb2.zarr", **kw)
    model.forecast(store, out=tmp_path / "old.zarr", layout="stdiff", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(tmp_path / "wb2.zarr")
    assert plain["air"].dims == (
        "time",
        "realization",
        "prediction_timedelta",
        "latitude",
        "longitude",
    )
    assert fc["air"].shape == (2, 2, 2, 7, 10) and plain["air"].attrs["units"] == "K"
    assert (
        plain["latitude"].attrs["units"] == "degrees_north"
        and plain["latitude"].attrs["axis"] == "Y"
    )
    assert plain["longitude"].attrs["standard_name"] == "longitude"
    assert plain["time"].attrs["standard_name"] == "forecast_reference_time"
    assert plain["prediction_timedelta"].attrs["standard_name"] == "forecast_period"
    assert plain["realization"].attrs["standard_name"] == "realization"
    assert plain["valid_time"].attrs["standard_name"] == "time"
    with warnings.catch_warnings():  # the data store too
        warnings.simplefilter("error")
        xr.open_zarr(store)
    scores = {}
    for name in ("wb2", "old"):  # default climatology: the data before the first initial time
        res = CliRunner().invoke(app, ["score", "--forecast", f"m={tmp_path / f'{name}.zarr'}",
                                       "--data", str(store), "--out", str(tmp_path / name)])  # fmt: skip
        assert res.exit_code == 0, res.output
        scores[name] = json.loads((tmp_path / name / "scores.json").read_text())
    assert scores["wb2"]["scores"] == scores["old"]["scores"]
    assert scores["wb2"]["climatology_period"][1] < "2013-03-10"  # never the verified times


def test_external_wb2_forecast_is_scored_on_the_same_truth(tmp_path: Path, trained) -> None:
    """A forecast written by plain xarray in WB2 layout (ECMWF's ``number`` members, ascending
    latitudes, longitudes in [-180, 180)): exact scores for a truth-plus-offset forecast."""
    store, _, _ = trained
    data = open_store(store)
    inits = np.array(["2013-03-10T00", "2013-03-11T00"], dtype="datetime64[ns]")
    leads = pd.to_timedelta([6, 12], "h").values
    valid = inits[:, None] + leads[None, :]
    truth = data["air"].sel(time=xr.DataArray(valid, dims=("time", "prediction_timedelta"))).values
    offset = np.array([-1.0, 1.0, 3.0])[:, None, None, None, None]  # members: truth -1, +1, +3 K
    ext = xr.Dataset(
        {"air": (("number", "time", "prediction_timedelta", "latitude", "longitude"),
                 (truth[None] + offset)[..., ::-1, :])},
        coords={"number": [0, 1, 2], "time": inits, "prediction_timedelta": leads,
                "latitude": data["lat"].values[::-1], "longitude": data["lon"].values - 360},
    )  # fmt: skip
    ext.to_zarr(tmp_path / "ext.zarr")
    det = ext.isel(number=1, drop=True)  # truth + 1 K: RMSE 1, MAE 1
    det.to_zarr(tmp_path / "det.zarr")
    res = CliRunner().invoke(app, ["score", "--forecast", f"ext={tmp_path / 'ext.zarr'}",
                                   "--forecast", f"det={tmp_path / 'det.zarr'}", "--data", str(store),
                                   "--out", str(tmp_path / "s")])  # fmt: skip
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "s/scores.json").read_text())["scores"]["air"]
    np.testing.assert_allclose(s["det"]["rmse"], 1.0, atol=1e-5)
    np.testing.assert_allclose(s["det"]["crps"], 1.0, atol=1e-5)
    np.testing.assert_allclose(s["ext"]["rmse"], 1.0, atol=1e-5)  # the ensemble mean is truth + 1
    # fair CRPS of members {-1, 1, 3}: mean |x| - sum_{i,j}|xi - xj| / (2 m (m - 1)) = 5/3 - 16/12
    np.testing.assert_allclose(s["ext"]["crps"], 5 / 3 - 16 / 12, atol=1e-5)


def test_score_refusals(tmp_path: Path, trained) -> None:
    store, ens, _ = trained
    fc = tmp_path / "f.zarr"
    run_forecast(ForecastConfig(checkpoint=str(ens), data=str(store), out=str(fc), init=["2013-03-10T00"],
                                lead="6h", members=2, steps=2, device="cpu"), progress=False)  # fmt: skip
    base = ["score", "--forecast", f"m={fc}", "--data", str(store), "--out", str(tmp_path / "s")]
    res = CliRunner().invoke(app, [*base, "--climatology-period", "2013-01-01:2013-03-31"])
    assert res.exit_code == 2 and "holds verified times" in res.output
    shifted = xr.open_zarr(fc).assign_coords(latitude=np.linspace(61, 31, 7))
    shifted.to_zarr(tmp_path / "shifted.zarr")
    res = CliRunner().invoke(app, [*base[:2], f"m={tmp_path / 'shifted.zarr'}", *base[3:]])
    assert res.exit_code == 2 and "is not the data's grid" in res.output
    res = CliRunner().invoke(app, [*base[:2], f"m={tmp_path / 'nothing.zarr'}", *base[3:]])
    assert res.exit_code == 2 and "nothing.zarr: not a zarr store" in res.output
    assert not (tmp_path / "s").exists()


def test_score_outputs_are_all_or_none(tmp_path: Path, trained, monkeypatch) -> None:
    """A failure while writing the report (a full disk at the plots) leaves no scores folder
    and no staging folder; over an earlier report it leaves that report and the user's own file
    as they were; a later success replaces the report and keeps the user's file."""
    import errno

    from stdiff.pipelines.jobs import score as score_job

    store, ens, _ = trained
    fc = tmp_path / "f.zarr"
    run_forecast(ForecastConfig(checkpoint=str(ens), data=str(store), out=str(fc), init=["2013-03-10T00"],
                                lead="6h", members=2, steps=2, device="cpu"), progress=False)  # fmt: skip
    cfg = score_job.ScoreConfig(
        {"m": str(fc)}, str(store), str(tmp_path / "s"), ["2013-01-01", "2013-02-28"]
    )
    real = score_job._plots

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s"))

    monkeypatch.setattr(score_job, "_plots", full_disk)
    with pytest.raises(OSError):
        score_job.run_scoring(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr"]
    monkeypatch.setattr(score_job, "_plots", real)
    score_job.run_scoring(cfg)
    (tmp_path / "s/my_notes.txt").write_text("mine")
    before = (tmp_path / "s/scores.json").read_text()
    monkeypatch.setattr(score_job, "_plots", full_disk)
    with pytest.raises(OSError):
        score_job.run_scoring(cfg)
    assert (tmp_path / "s/scores.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr", "s"]
    monkeypatch.setattr(score_job, "_plots", real)
    score_job.run_scoring(cfg)
    assert (tmp_path / "s/my_notes.txt").read_text() == "mine"
    assert {"scores.json", "scores.csv", "scores_vs_lead.png"} <= {
        p.name for p in (tmp_path / "s").iterdir()
    }


def test_crps_generator_forecasts_in_one_evaluation(tmp_path: Path) -> None:
    """``loop.objective: crps`` trains a one-evaluation generator; it forecasts with ``--sampler
    consistency --steps 1`` (members differ, one network call each) and refuses any other
    sampler, another sigma_max, distillation and reconstruction, with one line."""
    from stdiff.pipelines.jobs.distill import DistillConfig, run_distillation

    store = _store(tmp_path / "grid.zarr")
    job = _job(tmp_path / "gen", store, "crps")
    job["loop"].update(steps=6, checkpoint_every=6, val_every=6)
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "gen.yaml")])
    assert res.exit_code == 0, res.output
    kw = {"checkpoint": str(tmp_path / "gen"), "data": str(store), "init": ["2013-03-10T06"],
          "lead": "12h", "members": 4, "device": "cpu"}  # fmt: skip
    r = run_forecast(ForecastConfig(out=str(tmp_path / "f.zarr"), sampler="consistency", steps=1,
                                    **kw), False)  # fmt: skip
    air = xr.open_zarr(r["out"])["air"].values  # (init, member, lead, lat, lon)
    assert np.isfinite(air).all() and air.std(axis=1).min() > 0
    again = run_forecast(ForecastConfig(out=str(tmp_path / "g.zarr"), sampler="consistency",
                                        steps=1, **kw), False)  # fmt: skip
    np.testing.assert_array_equal(xr.open_zarr(again["out"])["air"].values, air)
    with pytest.raises(ValueError, match="sample it with --sampler consistency --steps 1"):
        run_forecast(ForecastConfig(out=str(tmp_path / "h.zarr"), **kw), False)
    with pytest.raises(ValueError, match="sigma_max must equal it"):
        run_forecast(ForecastConfig(out=str(tmp_path / "h.zarr"), sampler="consistency",
                                    steps=1, sigma_max=40.0, **kw), False)  # fmt: skip
    with pytest.raises(ValueError, match=r"cannot distil a loop\.objective: crps"):
        run_distillation(DistillConfig(teacher=str(tmp_path / "gen"), out=str(tmp_path / "d")))
    assert not (tmp_path / "h.zarr").exists() and not (tmp_path / "d").exists()


def test_rollout_crps_distillation_forecasts_in_one_evaluation(tmp_path: Path, trained) -> None:
    """``stdiff distill --method crps`` with ``rollout: 3`` fine-tunes a forecast model on the
    CRPS of members rolled out 3 steps; the student forecasts in one evaluation, and a CRPS
    generator may be fine-tuned again on a longer rollout (a second stage)."""
    store, ens, _ = trained
    out = tmp_path / "roll"
    cfg = {"teacher": str(ens), "out": str(out), "method": "crps", "rollout": 3,
           "stage_steps": 2, "device": "cpu", "loop": {"batch_size": 4, "progress": False}}  # fmt: skip
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["distill", "--config", str(tmp_path / "d.yaml")])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "distill.json").read_text())["students"][0]
    assert info["rollout"] == 3 and info["sampler"] == "consistency"
    recs = [json.loads(ln) for ln in (out / "crps/metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in recs if "loss" in r)
    kw = {"data": str(store), "init": ["2013-03-10T06"], "lead": "18h", "members": 3,
          "device": "cpu", "sampler": "consistency", "steps": 1}  # fmt: skip
    r = run_forecast(ForecastConfig(checkpoint=str(out / "crps"), out=str(tmp_path / "f.zarr"),
                                    **kw), False)  # fmt: skip
    air = xr.open_zarr(r["out"])["air"].values
    assert np.isfinite(air).all() and air.std(axis=1).min() > 0
    cfg.update(teacher=str(out / "crps"), out=str(tmp_path / "roll2"), rollout=2, noise_pool=2)
    (tmp_path / "d2.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["distill", "--config", str(tmp_path / "d2.yaml")])
    assert res.exit_code == 0, res.output
    den, tcfg, _ = load_denoiser(tmp_path / "roll2/crps")  # its input noise: 2x2 blocks
    assert tcfg.model.noise_pool == 2 and tcfg.loop.objective == "crps"
    seen = []
    den.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = 80.0 * torch.randn(2, 1, 7, 10, generator=torch.Generator().manual_seed(0))
    cond = Condition(context=torch.zeros(2, den.net.context_channels, 7, 10),
                     scalars=torch.zeros(2, 5))  # fmt: skip
    den(x, torch.full((2,), 80.0), cond)
    blocks = seen[0][..., :6, :10].unflatten(-2, (3, 2)).unflatten(-1, (5, 2))
    assert (blocks - blocks[..., :1, :, :1]).abs().max() < 1e-6 and seen[0].std() > 0.5
