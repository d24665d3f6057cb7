"""Per-station tables as one long series through `stdiff ingest`: split time columns, stations
from a column or the file names, categorical columns dropped or one-hot encoded, the real missing
mask, the month and period splits (statistics from the training steps only, brute force), the
routing of `.txt` tables away from the PhysioNet reader, one-line errors, and the real Beijing
folder when ../shared/data is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.errors import DataError
from stdiff.datasets.sites import load_series, load_sites
from stdiff.datasets.store import open_store

STATIONS = ("Beta", "Alpha", "Gamma")
TIME_FLAGS = ("--time-columns", "year,month,day,hour")


def _run(*args: str):
    return CliRunner().invoke(app, ["ingest", *map(str, args), "--no-progress"])


def station_frame(name: str, hours: int = 24 * 120, seed: int = 0, start="2013-01-01"):
    """One station: split time columns, two variables with gaps, a wind direction, a row number."""
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=hours, freq="1h")
    pm = rng.gamma(2.0, 40.0, hours).round(1)
    temp = (10 + 8 * np.sin(np.arange(hours) * 2 * np.pi / 24) + rng.normal(0, 1, hours)).round(2)
    frame = pd.DataFrame(
        {"No": np.arange(1, hours + 1), "year": t.year, "month": t.month, "day": t.day,
         "hour": t.hour, "PM2.5": pm, "TEMP": temp,
         "wd": rng.choice(["N", "NE", "SW"], hours), "station": name}
    )  # fmt: skip
    frame.loc[rng.random(hours) < 0.1, "PM2.5"] = np.nan
    frame.loc[rng.random(hours) < 0.05, "TEMP"] = np.nan
    frame.loc[rng.random(hours) < 0.02, "wd"] = np.nan
    return frame


@pytest.fixture
def station_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "stations"
    folder.mkdir()
    for k, name in enumerate(STATIONS):
        station_frame(name, seed=k).to_csv(folder / f"PRSA_{name}.csv", index=False, na_rep="NA")
    return folder


def _expected(folder: Path) -> pd.DataFrame:
    """Brute force: every station's rows keyed by (time, station)."""
    frames = []
    for f in sorted(folder.glob("*.csv")):
        d = pd.read_csv(f)
        d["time"] = pd.to_datetime(d[["year", "month", "day", "hour"]])
        frames.append(d)
    return pd.concat(frames).set_index(["time", "station"])


def test_folder_of_stations_end_to_end(tmp_path: Path, station_folder: Path) -> None:
    out = tmp_path / "s.zarr"
    res = _run(station_folder, "--kind", "timeseries", "--out", out, *TIME_FLAGS,
               "--drop-columns", "No", "--categorical", "drop", "--freq", "1h",
               "--test-months", "3", "--valid-months", "2")  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_store(out).load()
    assert ds["values"].dims == ("time", "feature")
    assert ds.sizes == {"time": 24 * 120, "feature": 6}
    assert [str(f) for f in ds.feature.values][:2] == ["Alpha/PM2.5", "Alpha/TEMP"]
    assert [str(s) for s in ds.station.values] == [s for s in sorted(STATIONS) for _ in range(2)]
    truth = _expected(station_folder)
    for k, feature in enumerate(ds.feature.values):
        station, variable = str(feature).split("/")
        col = truth.xs(station, level="station")[variable].reindex(ds.time.values).to_numpy()
        np.testing.assert_allclose(ds["values"].values[:, k], col.astype(np.float32))
        np.testing.assert_array_equal(ds["observed_mask"].values[:, k], ~np.isnan(col))
    month = pd.DatetimeIndex(ds.time.values).month
    np.testing.assert_array_equal(
        ds["split"].values, np.select([month == 3, month == 2], [2, 1], 0)
    )
    train = ds["values"].values[ds["split"].values == 0]
    np.testing.assert_allclose(ds["values_mean"].values, np.nanmean(train, 0), rtol=1e-5)
    np.testing.assert_allclose(ds["values_std"].values, np.nanstd(train, 0), rtol=1e-4)
    again = _run(station_folder, "--kind", "timeseries", "--out", out, *TIME_FLAGS,
                 "--drop-columns", "No", "--categorical", "drop", "--freq", "1h",
                 "--test-months", "3", "--valid-months", "2")  # fmt: skip
    assert "unchanged" in again.output


def test_onehot_several_files_and_stations_from_file_names(tmp_path: Path) -> None:
    files = []
    for k, name in enumerate(("east", "west")):
        frame = station_frame(name, hours=48, seed=k).drop(columns=["station"])
        files.append(tmp_path / f"{name}.txt")  # a .txt CSV: a table, not PhysioNet
        frame.to_csv(files[-1], index=False)
    out = tmp_path / "s.zarr"
    res = _run(*files, "--kind", "timeseries", "--out", out, *TIME_FLAGS,
               "--drop-columns", "No", "--categorical", "onehot")  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_store(out).load()
    names = [str(f) for f in ds.feature.values]
    assert names[:5] == ["east/PM2.5", "east/TEMP", "east/wd=N", "east/wd=NE", "east/wd=SW"]
    wd = pd.read_csv(files[0])["wd"]
    onehot = ds["values"].values[:, 2:5]
    np.testing.assert_array_equal(np.isnan(onehot).all(1), wd.isna().to_numpy())
    seen = ~wd.isna().to_numpy()
    np.testing.assert_array_equal(onehot[seen].sum(1), 1.0)
    assert [["N", "NE", "SW"][i] for i in onehot[seen].argmax(1)] == wd[seen].tolist()
    assert ds.attrs["split"] == "by time: 33 train / 5 valid / 10 test"  # the default 70/10/20 %


def test_periods_are_honoured_for_tables(tmp_path: Path, station_folder: Path) -> None:
    out = tmp_path / "p.zarr"
    res = _run(station_folder, "--kind", "timeseries", "--out", out, *TIME_FLAGS,
               "--drop-columns", "No", "--categorical", "drop",
               "--train-period", "2013-01-01:2013-02-28",
               "--test-period", "2013-04-01:2013-04-30")  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_store(out)
    split, month = ds["split"].values, pd.DatetimeIndex(ds.time.values).month
    np.testing.assert_array_equal(split, np.select([month <= 2, month == 3], [0, 1], 2))
    both = _run(station_folder, "--kind", "timeseries", "--out", tmp_path / "b.zarr", *TIME_FLAGS,
                "--drop-columns", "No", "--categorical", "drop", "--test-months", "3",
                "--train-period", "2013-01-01:2013-02-28", "--test-period", "2013-04-01:2013-04-30")  # fmt: skip
    assert both.exit_code == 2 and "not both" in both.output
    assert not (tmp_path / "b.zarr").exists()


def test_errors_are_one_line_and_leave_nothing(tmp_path: Path, station_folder: Path) -> None:
    out = tmp_path / "e.zarr"
    text = _run(station_folder, "--kind", "timeseries", "--out", out, *TIME_FLAGS,
                "--drop-columns", "No")  # fmt: skip
    assert text.exit_code == 2 and "column 'wd' holds text" in text.output
    assert "--categorical onehot" in text.output
    frame = station_frame("Alpha", hours=30)
    pd.concat([frame, frame.iloc[[5]]]).to_csv(station_folder / "PRSA_Alpha.csv", index=False)
    dup = _run(station_folder, "--kind", "timeseries", "--out", out, *TIME_FLAGS,
               "--drop-columns", "No", "--categorical", "drop")  # fmt: skip
    assert dup.exit_code == 2
    assert "PRSA_Alpha.csv: station 'Alpha' has two rows at 2013-01-01 05:00:00" in dup.output
    assert not out.exists()
    with pytest.raises(DataError, match=r"time column 'hour' \(hour\) holds 'x'"):
        bad = station_frame("Z", hours=5).astype({"hour": object})
        bad.loc[2, "hour"] = "x"
        bad.to_csv(tmp_path / "z.csv", index=False)
        load_sites([tmp_path / "z.csv"], time_columns=["year", "month", "day", "hour"])
    with pytest.raises(DataError, match="time 2013-01-01 01:00:00 is not on the 2h grid"):
        station_frame("Y", hours=5).to_csv(tmp_path / "y.csv", index=False)
        load_sites([tmp_path / "y.csv"], time_columns=["year", "month", "day", "hour"],
                   drop_columns=["No"], categorical="drop", freq="2h")  # fmt: skip


def test_physionet_refuses_time_splits(tmp_path: Path) -> None:
    archive = tmp_path / "set-a.tar.gz"
    archive.write_bytes(b"")
    res = _run(archive, "--kind", "timeseries", "--out", tmp_path / "x.zarr",
               "--test-months", "3")  # fmt: skip
    assert res.exit_code == 2 and "PhysioNet splits by stay" in res.output
    weather = _run(archive, "--kind", "weather", "--out", tmp_path / "w.zarr", *TIME_FLAGS)
    assert weather.exit_code == 2
    assert "--time-columns applies to --kind timeseries tables, not weather" in weather.output
    bad = _run(archive, "--kind", "timeseries", "--out", tmp_path / "c.zarr", "--categorical", "x")
    assert bad.exit_code == 2 and "--categorical 'x' is not valid" in bad.output


def test_beijing_folder(tmp_path: Path, shared_data: Path) -> None:
    """The 12 UCI station files: 35,064 hours each, 11 variables, the NA gaps as the raw CSVs."""
    folder = shared_data / "beijing_multisite_air"
    out = tmp_path / "beijing.zarr"
    res = _run(folder, "--kind", "timeseries", "--out", out, *TIME_FLAGS, "--drop-columns", "No",
               "--categorical", "drop", "--freq", "1h", "--test-months", "3,6,9,12")  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_store(out)
    assert ds.sizes == {"time": 35064, "feature": 12 * 11}
    assert str(ds.time.values[0])[:13] == "2013-03-01T00" and str(ds.time.values[-1])[:13] == (
        "2017-02-28T23"
    )
    raw = pd.read_csv(folder / "PRSA_Data_Dongsi_20130301-20170228.csv")
    k = [str(f) for f in ds.feature.values].index("Dongsi/PM2.5")
    np.testing.assert_array_equal(ds["observed_mask"].values[:, k], raw["PM2.5"].notna())
    np.testing.assert_allclose(ds["values"].values[:, k], raw["PM2.5"].to_numpy(np.float32))
    month = pd.DatetimeIndex(ds.time.values).month
    assert (ds["split"].values == 2).sum() == np.isin(month, [3, 6, 9, 12]).sum()


def test_one_table_on_a_regular_grid(tmp_path) -> None:
    """``--freq`` puts a single table on the full grid: the hours it lacks become empty rows
    (missing, never observed) instead of neighbours; a time off the grid is refused."""
    from stdiff.datasets.sites import load_series

    t = pd.date_range("2021-01-01", periods=10, freq="1h")
    keep = [0, 1, 2, 6, 7, 8, 9]
    frame = pd.DataFrame({"time": t[keep], "a": np.arange(7.0)})
    frame.to_csv(tmp_path / "gap.csv", index=False)
    ds = load_series([tmp_path / "gap.csv"], freq="1h")
    assert (ds["time"].values == t.values).all()
    np.testing.assert_array_equal(ds["observed_mask"].values[:, 0], np.isin(range(10), keep))
    np.testing.assert_array_equal(ds["values"].values[keep, 0], np.arange(7.0))
    assert np.isnan(ds["values"].values[3:6, 0]).all() and ds["observed_mask"].dtype == np.uint8
    late = frame.iloc[2:].assign(time=t[keep][2:] + pd.Timedelta(minutes=7))
    pd.concat([frame.iloc[:2], late]).to_csv(tmp_path / "off.csv", index=False)
    with pytest.raises(DataError, match=r"off\.csv: time .* is not on the 1h grid"):
        load_series([tmp_path / "off.csv"], freq="1h")


def test_irregular_series_warns_unless_on_a_grid(tmp_path) -> None:
    """A table whose steps are irregular is stored as it is, with a warning naming --freq."""
    import warnings

    from stdiff.datasets.errors import StdiffWarning
    from stdiff.datasets.ingest import IngestOptions, ingest

    t = pd.date_range("2021-01-01", periods=40, freq="1h").delete([10, 11, 12])
    pd.DataFrame({"time": t, "a": np.arange(37.0)}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.warns(
        StdiffWarning, match=r"g\.csv: the time axis has 1 gap.*median step 1 h.*--freq"
    ):
        ingest(tmp_path / "g.csv", tmp_path / "a.zarr", IngestOptions(kind="timeseries"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StdiffWarning)
        ingest(tmp_path / "g.csv", tmp_path / "b.zarr", IngestOptions(kind="timeseries", freq="1h"))


def test_untrainable_split_warns_naming_the_variable(tmp_path) -> None:
    """A one-row table (no training rows) or a column seen only after the training split is
    stored, with one warning naming it and the way out; a trainable table gives none."""
    import warnings

    from stdiff.datasets.errors import StdiffWarning
    from stdiff.datasets.ingest import IngestOptions, ingest

    t = pd.date_range("2021-01-01", periods=10, freq="1D")
    pd.DataFrame({"time": t[:1], "a": [1.0]}).to_csv(tmp_path / "one.csv", index=False)
    late = np.where(np.arange(10) >= 8, np.arange(10.0), np.nan)
    pd.DataFrame({"time": t, "a": np.arange(10.0), "b": late}).to_csv(
        tmp_path / "late.csv", index=False
    )
    opt = IngestOptions(kind="timeseries")
    with pytest.warns(
        StdiffWarning,
        match=r"one\.csv: no observed training value for values \(by time: 0 train.*--train-period",
    ):
        ingest(tmp_path / "one.csv", tmp_path / "one.zarr", opt)
    with pytest.warns(StdiffWarning, match=r"late\.csv: .*values \(feature b\) \(by time: 7 train"):
        ingest(tmp_path / "late.csv", tmp_path / "late.zarr", opt)
    assert open_store(tmp_path / "late.zarr").sizes["time"] == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", StdiffWarning)
        ingest(
            tmp_path / "late.csv",
            tmp_path / "ok.zarr",
            IngestOptions(
                kind="timeseries",
                train_period=("2021-01-01", "2021-01-09"),
                test_period=("2021-01-10", "2021-01-10"),
            ),
        )


def test_sentinel_missing_values(tmp_path) -> None:
    """``--missing-values -200`` (UCI air quality's code for no measurement): those values are
    missing, not numbers; the flag is refused for grids."""
    from stdiff.datasets.store import open_store

    t = pd.date_range("2004-03-10T18", periods=4, freq="1h")
    pd.DataFrame(
        {"time": t, "co": [2.6, -200.0, 2.2, 1.9], "t": [13.6, 13.3, -200.0, 11.0]}
    ).to_csv(tmp_path / "aq.csv", index=False)
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "aq.csv"), "--kind", "timeseries",
                                   "--out", str(tmp_path / "aq.zarr"), "--missing-values=-200,-999",
                                   "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_store(tmp_path / "aq.zarr")
    np.testing.assert_array_equal(ds["observed_mask"].values, [[1, 1], [0, 1], [1, 0], [1, 1]])
    assert np.isnan(ds["values"].values[1, 0]) and float(ds["values_mean"].values[0]) > 0
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "aq.csv"), "--kind", "weather",
                                   "--out", str(tmp_path / "w.zarr"), "--missing-values", "-200"])  # fmt: skip
    assert res.exit_code == 2 and "--missing-values applies to --kind timeseries" in res.output


def test_latitude_longitude_columns_become_site_coordinates(tmp_path) -> None:
    """An OpenAQ-style long export repeats each station's position on every row: the position
    becomes the features' lat / lon (as --site-coords gives), not two more variables; positions
    that move stay variables."""
    t = pd.date_range("2024-01-01", periods=4, freq="1h")
    rows = [
        pd.DataFrame(
            {
                "location": s,
                "datetime": t,
                "Latitude": la,
                "longitude": lo,
                "pm25": np.arange(4.0) + k,
            }
        )
        for k, (s, la, lo) in enumerate([("A", 39.9, 116.4), ("B", 40.0, 116.3)])
    ]
    pd.concat(rows).to_csv(tmp_path / "aq.csv", index=False)
    ds = load_series([tmp_path / "aq.csv"], station_column="location")
    assert ds.feature.values.tolist() == ["A/pm25", "B/pm25"]
    np.testing.assert_array_equal(ds["lat"].values, [39.9, 40.0])
    np.testing.assert_array_equal(ds["lon"].values, [116.4, 116.3])
    rows[0]["longitude"] = [116.4, 116.5, 116.6, 116.7]  # a moving sensor
    pd.concat(rows).to_csv(tmp_path / "aq.csv", index=False)
    ds = load_series([tmp_path / "aq.csv"], station_column="location")
    assert "lat" not in ds.coords and "A/longitude" in ds.feature.values.tolist()
