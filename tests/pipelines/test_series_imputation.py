"""One long multi-station series through the CLI: `stdiff train` on windows of the training
months (num_features from the store), `stdiff impute` over a period with the windows stitched
back (each step from its most central window, checked against a brute-force search), the store's
own target_mask as evaluation points, forecasting mode, chunk invariance, physical-unit scores
against a direct computation, and the Beijing folder when ../shared/data is there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.store import open_store, write_store
from stdiff.datasets.windows import SeriesWindows, window_starts
from stdiff.pipelines.jobs.impute_link import LINKED, OLD
from stdiff.pipelines.jobs.impute_series import (
    block_eval_mask,
    forecast_plan,
    impute_plan,
    seamless_plan,
)

WINDOW = 12
TIME_FLAGS = ("--time-columns", "year,month,day,hour")


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _stations(folder: Path, days: int = 60) -> Path:
    """Three stations, two variables with a daily cycle and station offsets, 10 % gaps."""
    folder.mkdir(parents=True)
    t = pd.date_range("2014-01-01", periods=24 * days, freq="1h")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("north", "south", "west")):
        cycle = np.sin(2 * np.pi * t.hour / 24)
        frame = pd.DataFrame(
            {"year": t.year, "month": t.month, "day": t.day, "hour": t.hour,
             "PM2.5": 60 + 20 * k + 30 * cycle + rng.normal(0, 3, len(t)),
             "TEMP": -5 + 2 * k + 6 * cycle + rng.normal(0, 0.5, len(t)), "station": name}
        )  # fmt: skip
        for v in ("PM2.5", "TEMP"):
            frame.loc[rng.random(len(t)) < 0.1, v] = np.nan
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def series_run(tmp_path_factory) -> tuple[Path, Path]:
    """(store, run folder): the stations ingested with February as the test month, and a small
    CSDI trained on 12-hour windows of January without giving num_features."""
    root = tmp_path_factory.mktemp("series")
    store = root / "series.zarr"
    res = _cli("ingest", _stations(root / "csv"), "--kind", "timeseries", "--out", store,
               *TIME_FLAGS, "--freq", "1h", "--test-months", "2", "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    job = {
        "out": str(root / "run"),
        "device": "cpu",
        "data": {"store": str(store), "task": "imputation", "window": WINDOW, "mask": "mix"},
        "model": {"net": "csdi", "params": {"channels": 16, "layers": 1, "heads": 2},
                  "prediction": "eps", "sigma_data": 1.0, "noise_conditioning": "timestep"},
        "schedule": {"name": "csdi_quad"},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "loop": {"steps": 40, "batch_size": 16, "log_every": 20, "checkpoint_every": 40,
                 "progress": False},
    }  # fmt: skip
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    res = _cli("train", "--config", root / "job.yaml")
    assert res.exit_code == 0, res.output
    return store, root / "run"


# --------------------------------------------------------------------------- plans


def _central_owner(t: int, starts: np.ndarray, length: int) -> int:
    """Brute force: among the windows holding ``t``, the one where it is most central."""
    best, dist = -1, np.inf
    for i, s in enumerate(starts):
        if s <= t < s + length and abs(t - (s + (length - 1) / 2)) < dist:
            best, dist = i, abs(t - (s + (length - 1) / 2))
    return best


@pytest.mark.parametrize("stride", [1, 5, 6, 12])
def test_impute_plan_takes_each_step_from_its_most_central_window(stride: int) -> None:
    positions = np.r_[np.arange(3, 40), np.arange(60, 67), np.arange(90, 120)]  # a short run
    plan = impute_plan(positions, 130, WINDOW, stride)
    np.testing.assert_array_equal(plan.times, positions)
    for j, t in enumerate(positions):
        assert plan.owner[j] == _central_owner(t, plan.starts, WINDOW)
    assert ((plan.offset >= 0) & (plan.offset < WINDOW)).all()
    assert plan.starts[plan.owner[positions.tolist().index(60)]] == 58  # reaches into neighbours
    first_run = plan.starts[(plan.starts >= 3) & (plan.starts <= 40 - WINDOW)]
    assert first_run[0] == 3 and first_run[-1] == 40 - WINDOW  # the run's own ends


def test_forecast_plan_tiles_the_selection_with_horizons() -> None:
    positions = np.r_[np.arange(20, 31), np.arange(50, 57)]
    plan = forecast_plan(positions, WINDOW, 4)
    ends = plan.starts + WINDOW
    np.testing.assert_array_equal(ends, [24, 28, 31, 54, 57])
    assert (plan.offset >= WINDOW - 4).all()  # every step is in its window's hidden tail
    with pytest.raises(ValueError, match="only 2 steps of history"):
        forecast_plan(np.arange(2, 10), WINDOW, 4)


def test_series_windows_hide_unobserved_truth(series_run) -> None:
    store, _ = series_run
    ds = open_store(store).load()
    starts = window_starts(np.flatnonzero(ds["split"].values == 0), WINDOW, 7)
    assert starts[-1] + WINDOW <= np.flatnonzero(ds["split"].values == 0)[-1] + 1
    item = SeriesWindows(store, starts, WINDOW)[3]
    t = int(starts[3])
    raw = ds["values"].values[t : t + WINDOW]
    expect = np.nan_to_num((raw - ds["values_mean"].values) / ds["values_std"].values)
    np.testing.assert_allclose(item["values"].numpy(), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(item["observed_mask"].numpy(), ~np.isnan(raw))


# --------------------------------------------------------------------------- train / impute


def test_train_takes_num_features_from_the_store(series_run, tmp_path: Path) -> None:
    from stdiff.pipelines.engine.runner import load_denoiser

    store, run = series_run
    _, tcfg, meta = load_denoiser(run)
    assert tcfg.model.params["num_features"] == 6 and tcfg.data.window == WINDOW
    assert meta["coords"]["feature"][:2] == ["north/PM2.5", "north/TEMP"]
    bad = {"out": str(tmp_path / "bad"), "device": "cpu",
           "data": {"store": str(store), "task": "imputation", "window": WINDOW},
           "model": {"net": "csdi", "params": {"num_features": 5}}}  # fmt: skip
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = _cli("train", "--config", tmp_path / "bad.yaml")
    assert res.exit_code == 2, res.output
    assert "num_features is 5 but" in res.output and "has 6 features" in res.output
    assert not (tmp_path / "bad").exists()


def _impute(store, run, out, *sets: str, members: int = 3):
    extra = [a for s in sets for a in ("--set", s)]
    return _cli("impute", "--checkpoint", run, "--data", store, "--out", out, "--sampler",
                "ddim", "--steps", "3", "--members", members, *extra)  # fmt: skip


def test_impute_stitches_windows_and_scores_in_physical_units(series_run, tmp_path) -> None:
    store, run = series_run
    out = tmp_path / "imp.zarr"
    res = _impute(store, run, out, "eval_ratio=0.2", "max_steps=100", "batch_size=3",
                  "stitch=central")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "100 time steps" in res.output and "physical units: CRPS" in res.output
    o = xr.open_zarr(out).load()
    ds = open_store(store).load()
    test = np.flatnonzero(ds["split"].values == 2)[:100]
    np.testing.assert_array_equal(o.time.values, ds.time.values[test])
    assert o["samples"].dims == ("member", "time", "feature") and o.sizes["member"] == 3
    plan = impute_plan(test, ds.sizes["time"], WINDOW, WINDOW // 2)
    np.testing.assert_array_equal(o["window_start"].values, ds.time.values[plan.starts[plan.owner]])
    observed, ev, cond = (
        o[v].values.astype(bool) for v in ("observed_mask", "eval_mask", "cond_mask")
    )
    assert ev.sum() == int(observed.sum() * 0.2) and not (ev & ~observed).any()
    np.testing.assert_array_equal(cond, observed & ~ev)
    given = np.broadcast_to(cond, o["samples"].shape)
    np.testing.assert_allclose(o["samples"].values[given],
                               np.broadcast_to(o["values"].values, given.shape)[given])  # fmt: skip
    m = json.loads((tmp_path / "imp.zarr.metrics.json").read_text())["metrics"]
    err = np.abs(o["median"].values - o["values"].values)[ev]
    assert m["mae_physical"] == pytest.approx(err.mean(), rel=1e-5)
    pm = np.array(["PM2.5" in str(f) for f in o.feature.values])[None].repeat(100, 0)
    by = m["mae_physical_by_variable"]
    assert by["PM2.5"] == pytest.approx(np.abs(o["median"].values - o["values"].values)[ev & pm]
                                        .mean(), rel=1e-5)  # fmt: skip
    assert set(by) == {"PM2.5", "TEMP"} and m["eval_points"] == ev.sum()
    again = _impute(store, run, tmp_path / "imp2.zarr", "eval_ratio=0.2", "max_steps=100",
                    "batch_size=7", "stitch=central")  # fmt: skip
    assert again.exit_code == 0, again.output
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "imp2.zarr")["samples"].values,
                               o["samples"].values, rtol=1e-5, atol=1e-5)  # fmt: skip


def test_store_target_mask_defines_the_evaluation_points(series_run, tmp_path) -> None:
    store, run = series_run
    ds = open_store(store).load()
    rng = np.random.default_rng(3)
    target = (ds["observed_mask"].values == 1) & (rng.random(ds["values"].shape) < 0.15)
    pair = ds.assign(target_mask=(("time", "feature"), target.astype(np.uint8)),
                     observed_mask=ds["observed_mask"] * (~target))  # fmt: skip
    pair.attrs.pop("content_hash", None)
    write_store(pair, tmp_path / "pair.zarr", content_hash="pair")
    out = tmp_path / "t.zarr"
    res = _impute(tmp_path / "pair.zarr", run, out, "max_steps=48", members=2)
    assert res.exit_code == 0, res.output
    o = xr.open_zarr(out).load()
    test = np.flatnonzero(ds["split"].values == 2)[:48]
    np.testing.assert_array_equal(o["eval_mask"].values, target[test])
    np.testing.assert_allclose(
        o["values"].values[target[test]], ds["values"].values[test][target[test]]
    )
    assert not (o["cond_mask"].values.astype(bool) & target[test]).any()
    refused = _impute(tmp_path / "pair.zarr", run, tmp_path / "r.zarr", "eval_ratio=0.1")
    assert refused.exit_code == 2 and "defines its own evaluation points" in refused.output
    assert not (tmp_path / "r.zarr").exists()


def test_forecast_mode_hides_the_last_steps_of_each_window(series_run, tmp_path) -> None:
    store, run = series_run
    out = tmp_path / "f.zarr"
    res = _impute(store, run, out, "mode=forecast", "horizon=4", "max_steps=24", members=2)
    assert res.exit_code == 0, res.output
    o = xr.open_zarr(out).load()
    assert not o["cond_mask"].values.any()
    np.testing.assert_array_equal(o["eval_mask"].values, o["observed_mask"].values)
    start = pd.DatetimeIndex(o["window_start"].values)
    lead = (pd.DatetimeIndex(o.time.values) - start) / pd.Timedelta("1h")
    assert ((lead >= WINDOW - 4) & (lead < WINDOW)).all() and np.isfinite(o["samples"]).all()


def test_beijing_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """The real 12 stations (PM2.5): ingest, 3 training steps, one day imputed and scored."""
    store = tmp_path / "bj.zarr"
    res = _cli("ingest", shared_data / "beijing_multisite_air", "--kind", "timeseries", "--out",
               store, *TIME_FLAGS, "--drop-columns", "No", "--categorical", "drop", "--freq",
               "1h", "--test-months", "3,6,9,12", "--variables", "PM2.5", "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    job = {"out": str(tmp_path / "run"), "device": "cpu",
           "data": {"store": str(store), "task": "imputation", "window": 36},
           "model": {"net": "csdi", "params": {"channels": 8, "layers": 1, "heads": 2},
                     "prediction": "eps", "sigma_data": 1.0, "noise_conditioning": "timestep"},
           "schedule": {"name": "csdi_quad"},
           "loop": {"steps": 3, "batch_size": 4, "checkpoint_every": 3, "progress": False}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert (r := _cli("train", "--config", tmp_path / "job.yaml")).exit_code == 0, r.output
    out = tmp_path / "bj_imp.zarr"
    res = _impute(store, tmp_path / "run", out, "period=[2014-03-02, 2014-03-02]",
                  "eval_ratio=0.1", members=2)  # fmt: skip
    assert res.exit_code == 0, res.output
    o = xr.open_zarr(out)
    assert o.sizes["time"] == 24 and o.sizes["feature"] == 12
    assert int(o["eval_mask"].sum()) == int(int(o["observed_mask"].sum()) * 0.1)


def test_chunks_are_planned_resumed_and_published_once(series_run, tmp_path: Path) -> None:
    from dataclasses import replace

    from stdiff.pipelines.jobs.impute import ImputeConfig, plan_chunks, run_imputation

    store, run = series_run
    cfg = ImputeConfig(checkpoint=str(run), data=str(store), out=str(tmp_path / "c.zarr"),
                       sampler="ddim", steps=2, members=2, max_steps=100, batch_size=3,
                       device="cpu", stitch="central")  # fmt: skip
    assert plan_chunks(cfg) == 6  # 100 steps in chunks of 3 windows x 6-step strides
    part = run_imputation(replace(cfg, chunks=[0, 5]), progress=False)
    assert part["chunks"] == 6 and part["pending"] == [1, 2, 3, 4] and not Path(cfg.out).exists()
    rest = run_imputation(cfg, progress=False)
    assert rest["computed"] == [1, 2, 3, 4] and rest["complete"]
    assert xr.open_zarr(cfg.out)["samples"].notnull().all()


def test_bad_periods_name_the_key(series_run, tmp_path: Path) -> None:
    store, run = series_run
    for period, say in (("[2014-02-10,2014-02-01]", "the start is after the end"),
                        ("[soon,later]", "dates must read like 2016-03-01")):  # fmt: skip
        res = _impute(store, run, tmp_path / "p.zarr", f"period={period}")
        assert res.exit_code == 2 and say in res.output, res.output
        assert not (tmp_path / "p.zarr").exists()


def test_block_evaluation_hides_outages(series_run, tmp_path: Path) -> None:
    observed = np.random.default_rng(1).random((300, 5)) < 0.9
    hidden = block_eval_mask(observed, 0.2, 24, np.random.RandomState(0))
    assert not (hidden & ~observed).any()
    assert 0.2 * observed.sum() <= hidden.sum() < 0.2 * observed.sum() + 24
    full = block_eval_mask(np.ones((300, 5), bool), 0.2, 24, np.random.RandomState(0))
    for k in range(5):  # with nothing missing, every gap is a union of whole 24-step blocks
        edges = np.flatnonzero(np.diff(np.r_[0, full[:, k], 0]))
        assert (np.diff(edges)[::2] >= 24).all()
    store, run = series_run
    res = _impute(store, run, tmp_path / "b.zarr", "eval_ratio=0.1", "eval_pattern=block",
                  "eval_block=6", "max_steps=96", members=2)  # fmt: skip
    assert res.exit_code == 0, res.output
    o = xr.open_zarr(tmp_path / "b.zarr")
    ev, obs = o["eval_mask"].values.astype(bool), o["observed_mask"].values.astype(bool)
    assert not (ev & ~obs).any() and ev.sum() >= int(obs.sum() * 0.1)


def test_impute_links_members_without_changing_a_score(series_run, tmp_path) -> None:
    """Through the CLI on the stations store: linked and unlinked outputs hold the same values
    at every step and the same metrics; the step where the window changes shrinks."""
    store, run = series_run
    sets = ("eval_ratio=0.2", "max_steps=120", "members=8", "batch_size=2")
    a = _impute(store, run, tmp_path / "l.zarr", *sets)
    b = _impute(store, run, tmp_path / "u.zarr", *sets, "link_members=false")
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    linked, plain = (xr.open_zarr(tmp_path / f"{n}.zarr") for n in "lu")
    s, u = linked["samples"].values, plain["samples"].values
    np.testing.assert_array_equal(np.sort(s, 0), np.sort(u, 0))
    assert not np.array_equal(s, u)
    assert "member_order" in linked["samples"].attrs
    assert {p.name for p in (tmp_path / "l.zarr").iterdir()}.isdisjoint({LINKED, OLD})
    ma, mb = (json.loads((tmp_path / f"{n}.zarr.metrics.json").read_text())["metrics"]
              for n in "lu")  # fmt: skip
    assert ma == mb
    ws = linked["window_start"].values
    change = ws[1:] != ws[:-1]
    free = (linked["cond_mask"].values[1:] == 0) & (linked["cond_mask"].values[:-1] == 0)
    std = np.nanstd(linked["values"].values, 0)

    def seam_step(x):
        d = np.abs(np.diff(x, axis=1)) / std
        return d[:, change[:, None] & free].mean()

    assert seam_step(s) < 0.8 * seam_step(u), (seam_step(s), seam_step(u))


# --------------------------------------------------------------------------- seamless stitching


@pytest.mark.parametrize("n", [5, 12, 30, 36, 41])
def test_seamless_plan_tiles_then_owns_a_band_around_every_seam(n: int) -> None:
    positions = np.r_[np.arange(20, 20 + n), np.arange(100, 130)]  # two runs
    plan = seamless_plan(positions, 200, WINDOW)
    tiles = ~plan.seam
    for j, t in enumerate(plan.times):  # every step inside its window and inside its tile
        w, tile = plan.owner[j], plan.tile[j]
        assert plan.starts[w] <= t < plan.starts[w] + WINDOW and not plan.seam[tile]
        assert plan.starts[tile] <= t < plan.starts[tile] + WINDOW
    # a seam between every two tiles of one run, and its band: the steps within L // 4 of it
    changes = [j for j in range(1, len(plan.times))
               if plan.times[j] == plan.times[j - 1] + 1 and plan.tile[j] != plan.tile[j - 1]]  # fmt: skip
    assert plan.seam.sum() == len(changes) and tiles.sum() == len(np.unique(plan.tile))
    for j in changes:
        p = plan.times[j]
        band = np.flatnonzero((plan.times >= p - WINDOW // 4) & (plan.times < p + WINDOW // 4))
        assert plan.seam[plan.owner[band]].all() and len(set(plan.owner[band])) == 1
    far = np.array([min((abs(t - plan.times[j]) for j in changes), default=99) > WINDOW // 4
                    for t in plan.times])  # fmt: skip
    assert not plan.seam[plan.owner[far]].any()  # away from seams: the tiles


def test_seam_windows_are_conditioned_on_each_members_own_tiles() -> None:
    from stdiff.pipelines.jobs.impute_series import _seam_conditions

    plan = seamless_plan(np.arange(0, 30), 40, WINDOW)
    tiles, seams = np.flatnonzero(~plan.seam), np.flatnonzero(plan.seam)
    k = 2
    raw = np.random.default_rng(0).normal(size=(40, k)).astype(np.float32)
    cond = np.random.default_rng(1).random((40, k)) < 0.5
    draws = np.random.default_rng(2).normal(size=(len(tiles), 3, WINDOW, k)).astype(np.float32)
    x, cm = _seam_conditions(plan, seams, tiles, draws, raw, cond, 0.0, 1.0)
    for a, w in enumerate(seams):
        s = plan.starts[w]
        for off in range(WINDOW):
            t = s + off
            row = np.searchsorted(plan.times, t)
            if plan.owner[row] == w:  # the band: only what is observed is given
                np.testing.assert_array_equal(cm[a, off], cond[t])
                continue
            tile = plan.tile[row]  # outside it: each member's own tile value, every feature
            assert cm[a, off].all()
            np.testing.assert_array_equal(x[a, :, off], draws[tile, :, t - plan.starts[tile]])


def test_seamless_imputation_is_chunk_invariant_and_keeps_the_tiles(series_run, tmp_path) -> None:
    store, run = series_run
    sets = ("eval_ratio=0.2", "max_steps=60", "stitch=seamless")
    a = _impute(store, run, tmp_path / "a.zarr", *sets, "batch_size=1")
    b = _impute(store, run, tmp_path / "b.zarr", *sets, "batch_size=4")
    c = _impute(store, run, tmp_path / "c.zarr", *sets[:2], "stitch=central", f"stride={WINDOW}",
                "link_members=false")  # fmt: skip
    assert a.exit_code == b.exit_code == c.exit_code == 0, a.output + b.output + c.output
    sa, sb, sc = (xr.open_zarr(tmp_path / f"{n}.zarr") for n in "abc")
    np.testing.assert_allclose(sa["samples"].values, sb["samples"].values, rtol=1e-5, atol=1e-5)
    ds = open_store(store)
    test = np.flatnonzero(ds["split"].values == 2)[:60]
    plan = seamless_plan(test, ds.sizes["time"], WINDOW)
    away = ~plan.seam[plan.owner]  # steps of the tiles: the same draws as tiles alone give
    np.testing.assert_allclose(sa["samples"].values[:, away], sc["samples"].values[:, away],
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert not np.allclose(sa["samples"].values[:, ~away], sc["samples"].values[:, ~away])
    np.testing.assert_array_equal(
        sa["window_start"].values, ds.time.values[plan.starts[plan.owner]]
    )
    refused = _impute(store, run, tmp_path / "r.zarr", "stride=4", "stitch=seamless")
    assert refused.exit_code == 2 and "stride applies to stitch: central" in refused.output
