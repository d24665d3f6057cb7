"""Time steps other than 6-hourly: hourly and monthly grids ingest and forecast; leads in steps,
hours or (calendar steps) months; errors name the flag. Exact comparisons (times, counts)."""

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
from stdiff.cliargs import period_flag as _period
from stdiff.datasets.ingest import IngestOptions, ingest
from stdiff.datasets.store import open_store
from stdiff.pipelines.jobs.forecast import parse_inits
from stdiff.pipelines.tasks.forecast import (
    TimeStep,
    WeatherLayout,
    infer_time_step,
    lead_steps,
    parse_duration,
)

MONTHS = pd.date_range("2000-01-01", periods=120, freq="MS")


@pytest.mark.parametrize(
    ("freq", "hours", "months"),
    [("h", 1.0, 0), ("6h", 6.0, 0), ("D", 24.0, 0), ("MS", 730.5, 1), ("ME", 730.5, 1),
     ("QS-JAN", 3 * 730.5, 3), ("YS-JAN", 12 * 730.5, 12)],
)  # fmt: skip
def test_time_step_of_regular_calendars(freq: str, hours: float, months: int) -> None:
    step = infer_time_step(pd.date_range("2001-01-01", periods=30, freq=freq))
    assert step.hours == pytest.approx(hours) and step.months == months
    assert bool(step.freq) == (months > 0)


def test_calendar_steps_follow_the_calendar() -> None:
    ms = TimeStep(730.5, "MS")
    got = ms.after("2000-01-01", [1, 2, 13])
    np.testing.assert_array_equal(
        got, np.array(["2000-02-01", "2000-03-01", "2001-02-01"], "M8[ns]")
    )
    me = TimeStep(730.5, "ME")  # month ends stay month ends: 29 Feb -> 31 Mar -> 30 Apr
    np.testing.assert_array_equal(
        me.after("2000-02-29", [1, 2]), np.array(["2000-03-31", "2000-04-30"], "M8[ns]")
    )
    assert ms.times(3) == TimeStep(3 * 730.5, "3MS") and ms.times(3).months == 3
    six = TimeStep(6.0)
    np.testing.assert_array_equal(six.after("2000-01-01", 5), np.array(["2000-01-02T06"], "M8[ns]"))


def test_leads_in_steps_hours_and_months() -> None:
    monthly, hourly, six = TimeStep(730.5, "MS"), TimeStep(1.0), TimeStep(6.0)
    assert lead_steps("3months", monthly) == 3 and lead_steps("3steps", monthly) == 3
    assert lead_steps("1y", monthly) == 12 and lead_steps("2years", monthly.times(3)) == 8
    assert lead_steps("24h", hourly) == 24 and lead_steps("1step", hourly) == 1
    assert lead_steps("3d", six) == 12 and lead_steps("90m", TimeStep(0.5)) == 3
    assert parse_duration("2 weeks", "--lead") == (336.0, "hours")
    with pytest.raises(ValueError, match=r"--lead 24h: this model steps 1 month .* 3months"):
        lead_steps("24h", monthly)
    with pytest.raises(ValueError, match=r"--lead 3months: months and years need a calendar"):
        lead_steps("3months", six)
    with pytest.raises(ValueError, match=r"--lead 7h is not a positive whole number .*6 h"):
        lead_steps("7h", six)
    with pytest.raises(ValueError, match=r"--lead 4months .*3 months"):
        lead_steps("4months", monthly.times(3))
    with pytest.raises(ValueError, match=r"--lead '72 parsecs' is not a duration"):
        lead_steps("72 parsecs", six)
    got = parse_inits(["2000-01-01/2000-07-01/2months"], "t")
    assert [str(t)[:10] for t in got] == ["2000-01-01", "2000-03-01", "2000-05-01", "2000-07-01"]
    got = parse_inits(["2000-01-01T00/2000-01-01T12/4steps"], "t", step=six)
    assert (
        len(got) == 1 and parse_inits(["2000-01-01/2000-02-01/1steps"], "t", step=monthly).size == 2
    )


def test_periods_name_their_flag() -> None:
    assert _period("2013-01-01:2013-12-31", "train-period") == ("2013-01-01", "2013-12-31")
    with pytest.raises(ValueError, match=r"--train-period .*the start 2013-12-31 is after"):
        _period("2013-12-31:2013-01-01", "train-period")
    with pytest.raises(ValueError, match=r"--test-period .*'2013-02-30' is not a date"):
        _period("2013-02-30:2013-03-01", "test-period")
    with pytest.raises(ValueError, match=r"--test-period .*expected START:END"):
        _period("2013-02-01", "test-period")
    res = CliRunner().invoke(app, ["ingest", "nothing.nc", "--kind", "weather", "--out", "x.zarr",
                                   "--train-period", "2014-01-01:2013-01-01"])  # fmt: skip
    assert res.exit_code != 0 and "--train-period" in res.output and "after the end" in res.output


def _grid(times: pd.DatetimeIndex) -> xr.Dataset:
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(60, 30, 6), np.linspace(200, 227.5, 8)
    t = np.arange(len(times))[:, None, None]
    season = np.cos(2 * np.pi * times.month.values / 12)[:, None, None]
    wave = np.sin(0.3 * t + np.deg2rad(lon)[None, None, :] * 6 + np.deg2rad(lat)[None, :, None] * 3)
    air = 280 + 8 * season + 3 * wave + rng.normal(0, 0.3, (len(times), 6, 8))
    return xr.Dataset({"air": (("time", "lat", "lon"), air.astype(np.float32), {"units": "K"})},
                      coords={"time": times, "lat": lat, "lon": lon})  # fmt: skip


def _ingest(tmp_path: Path, times: pd.DatetimeIndex, train, test) -> Path:
    src = tmp_path / "src.nc"
    _grid(times).to_netcdf(src, engine="netcdf4")
    opt = IngestOptions(kind="weather", train_period=train, test_period=test)
    return ingest(str(src), tmp_path / "grid.zarr", opt, progress=False).store


def test_hourly_grid_ingests_with_an_hourly_step(tmp_path: Path) -> None:
    hours = pd.date_range("2013-01-01", periods=24 * 10, freq="h")
    store = _ingest(tmp_path, hours, ("2013-01-01", "2013-01-07"), ("2013-01-08", "2013-01-10"))
    layout = WeatherLayout.from_store(open_store(store), None)
    assert layout.step == TimeStep(1.0) and lead_steps("24h", layout.step) == 24


def test_monthly_model_forecasts_months_ahead(tmp_path: Path) -> None:
    """Train a tiny monthly model, forecast 3 months from two initial months (``3months`` and
    ``3steps`` give the same store, ``24h`` is refused naming --lead), score on the calendar."""
    store = _ingest(tmp_path, MONTHS, ("2000-01-01", "2006-12-31"), ("2008-01-01", "2009-12-31"))
    layout = WeatherLayout.from_store(open_store(store), None)
    assert layout.step == TimeStep(730.5, "MS")
    job = {"out": str(tmp_path / "run"), "device": "cpu",
           "data": {"store": str(store), "task": "forecast", "train_period": ["2000-01-01", "2006-12-31"],
                    "valid_period": ["2007-01-01", "2007-12-31"]},
           "model": {"net": "dit_custom", "params": {"patch_size": 2, "depth": 1, "hidden": 32, "num_heads": 2},
                     "prediction": "edm", "sigma_data": 1.0},
           "schedule": {"name": "edm", "params": {"sigma_min": 0.03, "sigma_max": 80.0}},
           "optim": {"lr": 2e-3, "warmup_steps": 5},
           "loop": {"steps": 20, "batch_size": 8, "log_every": 10, "checkpoint_every": 20,
                    "val_every": 20, "val_batches": 1, "progress": False}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    common = ["--checkpoint", str(tmp_path / "run"), "--data", str(store), "--init",
              "2008-01-01/2008-02-01/1months", "--members", "2", "--set", "steps=3"]  # fmt: skip
    for lead, name in (("3months", "a.zarr"), ("3steps", "b.zarr")):
        res = CliRunner().invoke(
            app, ["forecast", *common, "--lead", lead, "--out", str(tmp_path / name)]
        )
        assert res.exit_code == 0, res.output
        assert "2 initial times x 2 members x 3 steps" in res.output
    a, b = (xr.open_zarr(tmp_path / n) for n in ("a.zarr", "b.zarr"))
    xr.testing.assert_identical(a["air"].load(), b["air"].load())
    valid = pd.DatetimeIndex(a["valid_time"].values.ravel())
    assert [str(t)[:10] for t in valid] == ["2008-02-01", "2008-03-01", "2008-04-01",
                                            "2008-03-01", "2008-04-01", "2008-05-01"]  # fmt: skip
    res = CliRunner().invoke(
        app, ["forecast", *common, "--lead", "24h", "--out", str(tmp_path / "c.zarr")]
    )
    assert res.exit_code != 0 and "--lead 24h" in res.output and "3months" in res.output
    assert not (tmp_path / "c.zarr").exists()
    res = CliRunner().invoke(app, ["score", "--forecast", f"m={tmp_path / 'a.zarr'}", "--data", str(store),
                                   "--out", str(tmp_path / "scores")])  # fmt: skip
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "scores/scores.json").read_text())
    assert scores["lead_hours"] == [730.5, 1461.0, 2191.5]
    assert all(np.isfinite(scores["scores"]["air"]["m"]["crps"]))
