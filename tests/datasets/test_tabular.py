"""CSV / Parquet time series: wide, long, Parquet, the two-file target pair and every error case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stdiff.datasets.errors import DataError
from stdiff.datasets.tabular import load_table

NAN = np.nan

WIDE = "time,a,b\n2024-01-01 00:00,1.5,\n2024-01-01 01:00,,2\n2024-01-01 02:00,3,4\n"
TIMES = np.array(["2024-01-01T00", "2024-01-01T01", "2024-01-01T02"], dtype="datetime64[ns]")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _raises(match: str, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as err:
        load_table(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------- layouts


def test_wide_csv(tmp_path):
    ds = load_table(_write(tmp_path / "w.csv", WIDE))
    assert dict(ds.sizes) == {"time": 3, "feature": 2}
    assert ds["values"].dims == ("time", "feature")
    assert ds["values"].dtype == np.float32 and ds["observed_mask"].dtype == np.uint8
    np.testing.assert_array_equal(ds["values"].values, [[1.5, NAN], [NAN, 2], [3, 4]])
    np.testing.assert_array_equal(ds["observed_mask"].values, [[1, 0], [0, 1], [1, 1]])
    np.testing.assert_array_equal(ds.time.values, TIMES)
    assert ds.feature.values.tolist() == ["a", "b"]
    assert "target_mask" not in ds
    assert ds.attrs["kind"] == "timeseries" and ds.attrs["source"].endswith("w.csv")


def test_wide_variables_select_and_order(tmp_path):
    ds = load_table(_write(tmp_path / "w.csv", WIDE), variables=["b", "a"])
    assert ds.feature.values.tolist() == ["b", "a"]
    np.testing.assert_array_equal(ds["values"].values[:, 0], [NAN, 2, 4])


def test_numeric_time_and_custom_time_column(tmp_path):
    path = _write(tmp_path / "hours.tsv", "hour\tx\n0\t1\n0.5\t\n2\t3\n")
    ds = load_table(path, time_column="hour")
    np.testing.assert_array_equal(ds.time.values, [0, 0.5, 2])
    np.testing.assert_array_equal(ds["observed_mask"].values[:, 0], [1, 0, 1])


def test_long_csv_with_target_column(tmp_path):
    text = (
        "time,variable,value,is_target\n"
        "2024-01-01 01:00,b,2,0\n"
        "2024-01-01 00:00,a,1.5,0\n"
        "2024-01-01 02:00,a,3,1\n"
        "2024-01-01 02:00,b,4,0\n"
        "2024-01-01 00:00,b,,0\n"
    )
    path = _write(tmp_path / "long.csv", text)
    ds = load_table(path, layout="long")
    assert ds.feature.values.tolist() == ["b", "a"]  # order of first appearance
    np.testing.assert_array_equal(ds.time.values, TIMES)
    np.testing.assert_array_equal(ds["values"].values, [[NAN, 1.5], [2, NAN], [4, 3]])
    assert "target_mask" not in ds
    ds = load_table(path, layout="long", targets="is_target", variables=["a", "b"])
    assert ds.feature.values.tolist() == ["a", "b"]
    np.testing.assert_array_equal(ds["values"].values, [[1.5, NAN], [NAN, 2], [3, 4]])
    np.testing.assert_array_equal(ds["target_mask"].values, [[0, 0], [0, 0], [1, 0]])
    # a target is held out: its value stays in `values`, but it is not observed
    np.testing.assert_array_equal(ds["observed_mask"].values, [[1, 0], [0, 1], [0, 1]])


def test_long_custom_columns(tmp_path):
    path = _write(tmp_path / "l.csv", "t,name,reading\n1,x,5\n2,x,6\n1,y,7\n")
    ds = load_table(path, layout="long", time_column="t", long_columns=("name", "reading"))
    np.testing.assert_array_equal(ds["values"].values, [[5, 7], [6, NAN]])


def test_parquet_equals_csv(tmp_path):
    csv = _write(tmp_path / "w.csv", WIDE)
    frame = pd.read_csv(csv)
    frame["time"] = pd.to_datetime(frame["time"])
    frame.to_parquet(tmp_path / "w.parquet")
    a, b = load_table(csv), load_table(tmp_path / "w.parquet")
    np.testing.assert_array_equal(a["values"].values, b["values"].values)
    np.testing.assert_array_equal(a.time.values, b.time.values)
    # string times in Parquet are parsed too
    pd.read_csv(csv).to_parquet(tmp_path / "s.pq")
    np.testing.assert_array_equal(load_table(tmp_path / "s.pq").time.values, TIMES)
    # the times as the frame's (unnamed or named) index, as pandas users save METR-LA-like tables
    for name in (None, "date"):
        frame.set_index("time").rename_axis(name).to_parquet(tmp_path / "i.parquet")
        c = load_table(tmp_path / "i.parquet")
        np.testing.assert_array_equal(c["values"].values, a["values"].values)
        np.testing.assert_array_equal(c.time.values, a.time.values)


# --------------------------------------------------------------------------- the target pair

GROUND = "datetime,001001,001002\n2014-05-01 00:00,138,89\n2014-05-01 01:00,,85\n2014-05-01 02:00,120,80\n"
REDUCED = (
    "datetime,001001,001002\n2014-05-01 00:00,138,\n2014-05-01 01:00,,85\n2014-05-01 02:00,,80\n"
)


def test_pair_either_order(tmp_path):
    ground = _write(tmp_path / "pm25_ground.txt", GROUND)
    reduced = _write(tmp_path / "pm25_missing.txt", REDUCED)
    for a, b in [(reduced, ground), (ground, reduced)]:
        ds = load_table(a, time_column="datetime", targets=b)
        assert ds.feature.values.tolist() == ["001001", "001002"]
        np.testing.assert_array_equal(ds["values"].values, [[138, 89], [NAN, 85], [120, 80]])
        np.testing.assert_array_equal(ds["observed_mask"].values, [[1, 0], [0, 1], [0, 1]])
        np.testing.assert_array_equal(ds["target_mask"].values, [[0, 1], [0, 0], [1, 0]])
        assert ds.attrs["ground_truth"] == str(ground) and ds.attrs["source"] == str(reduced)
    # identical files: nothing held out
    ds = load_table(ground, time_column="datetime", targets=str(ground))
    assert int(ds["target_mask"].sum()) == 0


def test_pair_long_layout(tmp_path):
    ground = _write(tmp_path / "g.csv", "time,variable,value\n0,a,1\n1,a,2\n0,b,3\n1,b,4\n")
    reduced = _write(tmp_path / "r.csv", "time,variable,value\n0,a,1\n1,a,\n0,b,3\n1,b,4\n")
    ds = load_table(reduced, layout="long", targets=ground)
    np.testing.assert_array_equal(ds["target_mask"].values, [[0, 0], [1, 0]])
    np.testing.assert_array_equal(ds["values"].values, [[1, 3], [2, 4]])


def test_pair_mismatches(tmp_path):
    ground = _write(tmp_path / "g.csv", GROUND)
    opts = {"time_column": "datetime"}
    cols = _write(tmp_path / "cols.csv", GROUND.replace("001002", "001003"))
    _raises(r"cols\.csv: columns .* differ from those of .*g\.csv", ground, targets=cols, **opts)
    short = _write(tmp_path / "short.csv", GROUND.rsplit("2014-05-01 02:00", 1)[0])
    _raises(r"short\.csv: shape \(2, 2\) differs from \(3, 2\)", ground, targets=short, **opts)
    shifted = _write(tmp_path / "shift.csv", GROUND.replace("02:00", "03:00"))
    _raises(
        r"shift\.csv: times differ from those of .*g\.csv at row 3", ground, targets=shifted, **opts
    )
    crossed = _write(tmp_path / "cross.csv", REDUCED.replace("01:00,,85", "01:00,7,85"))
    _raises(
        r"cross\.csv: neither this file nor .*g\.csv is the ground truth",
        ground,
        targets=crossed,
        **opts,
    )
    changed = _write(tmp_path / "changed.csv", REDUCED.replace("00:00,138,", "00:00,139,"))
    _raises(
        r"changed\.csv: value of '001001' at 2014-05-01 00:00:00 differs",
        ground,
        targets=changed,
        **opts,
    )
    _raises(
        r"nowhere\.csv: targets is neither a column",
        ground,
        targets=tmp_path / "nowhere.csv",
        **opts,
    )


# --------------------------------------------------------------------------- errors


def test_no_time_column_names_the_columns(tmp_path):
    path = _write(tmp_path / "w.csv", WIDE.replace("time,", "when,"))
    msg = _raises(r"w\.csv: no time column 'time'; columns are 'when', 'a', 'b'", path)
    assert "w.csv" in msg


def test_unparseable_times(tmp_path):
    path = _write(tmp_path / "bad_time.csv", WIDE.replace("2024-01-01 01:00", "yesterday"))
    _raises(r"bad_time\.csv: time column 'time': cannot parse 'yesterday' \(data row 2\)", path)
    empty = _write(tmp_path / "empty_time.csv", WIDE.replace("2024-01-01 01:00", ""))
    _raises(r"empty_time\.csv: time column 'time' is empty in data row 2", empty)


def test_unsorted_rows_are_sorted_and_duplicated_times_refused(tmp_path):
    lines = WIDE.splitlines()
    back = _write(
        tmp_path / "back.csv", "\n".join([lines[0], *lines[:0:-1]]) + "\n"
    )  # newest first
    ds = load_table(back)
    np.testing.assert_array_equal(ds["time"].values, TIMES)
    np.testing.assert_array_equal(
        ds["values"].values, load_table(_write(tmp_path / "w.csv", WIDE))["values"].values
    )
    dup = _write(tmp_path / "dup.csv", WIDE.replace("02:00", "00:00"))
    _raises(r"dup\.csv: timestamp 2024-01-01 00:00:00 is on two rows \(data rows 1 and 3\)", dup)
    pair = _write(tmp_path / "pair.csv", "time,variable,value\n0,a,1\n1,a,2\n0,a,3\n")
    _raises(
        r"pair\.csv: duplicated \(time, variable\) pair \(0, 'a'\) \(data row 3\)",
        pair,
        layout="long",
    )


def test_absent_variable(tmp_path):
    wide = _write(tmp_path / "w.csv", WIDE)
    _raises(
        r"w\.csv: variable 'c' is absent; columns are 'time', 'a', 'b'", wide, variables=["a", "c"]
    )
    long = _write(tmp_path / "l.csv", "time,variable,value\n0,a,1\n")
    _raises(
        r"l\.csv: variable 'z' is absent; variables are 'a'", long, layout="long", variables=["z"]
    )
    _raises(
        r"l\.csv: no column 'name' for the long layout",
        long,
        layout="long",
        long_columns=("name", "value"),
    )


def test_all_nan_variable(tmp_path):
    path = _write(tmp_path / "w.csv", "time,a,b\n0,1,\n1,2,\n")
    _raises(r"w\.csv: variable 'b' has no values \(all NaN\)", path)
    long = _write(tmp_path / "l.csv", "time,variable,value\n0,a,1\n0,b,\n")
    _raises(r"l\.csv: variable 'b' has no values", long, layout="long")


def test_not_csv_or_parquet(tmp_path):
    _raises(r"sheet\.ods: neither CSV .* nor pandas HDF5", _write(tmp_path / "sheet.ods", "{}"))
    fake = _write(tmp_path / "fake.parquet", "time,a\n0,1\n")
    _raises(r"fake\.parquet: cannot read as Parquet", fake)
    _raises(r"missing\.csv: no such file", tmp_path / "missing.csv")
    _raises(r"head\.csv: the table has no rows", _write(tmp_path / "head.csv", "time,a\n"))


def test_other_faults(tmp_path):
    word = _write(tmp_path / "word.csv", "time,a\n0,1\n1,lots\n")
    _raises(r"word\.csv: 'a' holds a non-number 'lots' \(data row 2\)", word)
    wide = _write(tmp_path / "w.csv", WIDE)
    _raises(
        r"w\.csv: targets='a' names a column, which applies only to layout='long'",
        wide,
        targets="a",
    )
    flags = _write(tmp_path / "flags.csv", "time,variable,value,t\n0,a,1,0\n1,a,2,2\n")
    _raises(
        r"flags\.csv: target column 't' must be 0 or 1, found 2", flags, layout="long", targets="t"
    )
    hole = _write(tmp_path / "hole.csv", "time,variable,value,t\n0,a,1,0\n1,a,,1\n")
    _raises(
        r"hole\.csv: target row without a value \(data row 2\)", hole, layout="long", targets="t"
    )
    _raises(r"layout: must be 'wide' or 'long'", wide, layout="tall")


# --------------------------------------------------------------------------- spreadsheet exports


def test_spreadsheet_exports_read_as_the_comma_file(tmp_path):
    """The same table exported as ';' with decimal commas, ';' with dots, tabs in a .csv,
    UTF-16 with its BOM (Excel's "Unicode text"), Windows-1252 and UTF-8 with a BOM all give
    the values of the plain comma-separated file; a header with an accent keeps it."""
    rows = [("2024-01-01 00:00", 1.5, None), ("2024-01-01 01:00", None, 2.0),
            ("2024-01-01 02:00", 3.25, 4.0)]  # fmt: skip

    def table(sep: str, dec: str = ".", b: str = "b") -> str:
        cell = lambda v: "" if v is None else f"{v:g}".replace(".", dec)  # noqa: E731
        return "".join(sep.join(r) + "\n" for r in [("time", "a", b)] +
                       [(t, cell(a), cell(c)) for t, a, c in rows])  # fmt: skip

    want = load_table(_write(tmp_path / "plain.csv", table(",")))
    cases = {"semi_comma.csv": table(";", ","), "semi_dot.csv": table(";"),
             "tabs.csv": table("\t"), "bars.txt": table("|")}  # fmt: skip
    for name, text in cases.items():
        got = load_table(_write(tmp_path / name, text))
        np.testing.assert_array_equal(got["values"].values, want["values"].values, name)
        np.testing.assert_array_equal(got.time.values, want.time.values, err_msg=name)
    accent = table("\t", b="b\u00e9")
    for name, data in {"u16.txt": accent.encode("utf-16"),
                       "win.csv": accent.encode("cp1252"),
                       "bom.csv": accent.encode("utf-8-sig")}.items():  # fmt: skip
        (tmp_path / name).write_bytes(data)
        got = load_table(tmp_path / name)
        assert list(got.feature.values) == ["a", "b\u00e9"], name
        np.testing.assert_array_equal(got["values"].values, want["values"].values, name)


def test_mixed_decimal_marks_and_binary_files_are_refused(tmp_path):
    """Decimal commas are taken only when every text cell of such a column is a number:
    a ';' table mixing '1,5' and a word keeps the text and is refused naming a cell."""
    mixed = _write(tmp_path / "mixed.csv", "time;a\n0;1,5\n1;lots\n")
    _raises(r"mixed\.csv: column 'a' holds text \(e\.g\. '1,5'\)", mixed)
    (tmp_path / "blob.csv").write_bytes(bytes(range(256)) * 4)
    _raises(r"blob\.csv: cannot read as CSV: not UTF-8, UTF-16 or Windows-1252 text \(byte "
            r"0x81 at offset 129\)", tmp_path / "blob.csv")  # fmt: skip


def test_infinite_values_are_refused(tmp_path):
    inf = _write(tmp_path / "inf.csv", "time,a\n0,1\n1,-inf\n")
    _raises(r"inf\.csv: 'a' holds an infinite value, '-inf' \(data row 2\); leave the cell "
            "empty if it is missing", inf)  # fmt: skip
    big = _write(tmp_path / "big.csv", "time,a\n0,1e39\n1,2\n")
    _raises(r"big\.csv: 'a' holds a number beyond float32's range, '1e\+39' \(data row 1\)",
            big)  # fmt: skip
    text = _write(tmp_path / "text.csv", "time,a\n0,x\n1,Infinity\n")
    _raises(r"text\.csv: 'a' holds a non-number 'x'", text)


def test_time_column_found_under_another_name_and_day_first_dates(tmp_path):
    """``Date Time`` (Jena climate) or ``date`` is the time column when no ``time`` column exists;
    dates written day first (31/12/2021) are read day first when only that reading is in order."""
    named = _write(tmp_path / "n.csv", WIDE.replace("time,", "Date Time,"))
    np.testing.assert_array_equal(load_table(named)["time"].values, TIMES)
    two = _write(tmp_path / "two.csv", WIDE.replace("time,a,", "start_time,end_time,"))
    _raises(r"two\.csv: no time column 'time'.*several could be: 'start_time', 'end_time'", two)
    index = _write(
        tmp_path / "LD.txt", '"";"MT_001"\n"2011-01-01 00:15:00";1,5\n"2011-01-01 00:30:00";2,25\n'
    )  # UCI electricity: an unnamed index column
    ds = load_table(index)
    assert ds["time"].values[1] == np.datetime64("2011-01-01T00:30")
    np.testing.assert_array_equal(ds["values"].values[:, 0], [1.5, 2.25])
    none = _write(tmp_path / "none.csv", WIDE.replace("time,", "when,"))
    _raises(r"none\.csv: no time column 'time'.*name it with --time-column", none)
    days = [f"{d:02d}/{m:02d}/2021 06:00" for m in (1, 2) for d in range(1, 29)]
    text = "time,a\n" + "".join(f"{t},{i}\n" for i, t in enumerate(days))
    ds = load_table(_write(tmp_path / "dayfirst.csv", text))
    expect = pd.to_datetime(days, format="%d/%m/%Y %H:%M").to_numpy("datetime64[ns]")
    np.testing.assert_array_equal(ds["time"].values, expect)
    np.testing.assert_array_equal(ds["values"].values[:, 0], np.arange(56, dtype=np.float32))


def test_day_first_dates_in_any_row_order(tmp_path):
    """Shuffled day-first dates whose first row is ambiguous (11/01): pandas alone reads a mix
    of both orders; a first field above 12 anywhere makes every entry day first. Month-first
    dates stay month first, and a column holding both orders is refused."""
    rng = np.random.default_rng(0)
    days = [f"{d:02d}/{m:02d}/2021 06:00" for m in (1, 2) for d in range(1, 29)]
    rows = [days[10]] + [days[i] for i in rng.permutation(56) if i != 10]  # 11/01 first
    text = "time,a\n" + "".join(f"{t},{days.index(t)}\n" for t in rows)
    ds = load_table(_write(tmp_path / "shuffled.csv", text))
    expect = pd.to_datetime(days, format="%d/%m/%Y %H:%M").to_numpy("datetime64[ns]")
    np.testing.assert_array_equal(ds["time"].values, expect)
    np.testing.assert_array_equal(ds["values"].values[:, 0], np.arange(56, dtype=np.float32))
    us = [f"{m:02d}/{d:02d}/2021" for m in (1, 2) for d in (3, 20)]
    text = "time,a\n" + "".join(f"{t},{i}\n" for i, t in enumerate(reversed(us)))
    got = load_table(_write(tmp_path / "us.csv", text))["time"].values
    np.testing.assert_array_equal(
        got, pd.to_datetime(us, format="%m/%d/%Y").to_numpy("datetime64[ns]")
    )
    mixed = _write(tmp_path / "mixed.csv", "time,a\n20/01/2021,1\n01/25/2021,2\n02/02/2021,3\n")
    _raises(r"mixed\.csv: time column 'time' mixes day-first and month-first dates", mixed)


def test_uci_air_quality_layout(tmp_path):
    """UCI's air-quality export: ``;`` separators, decimal commas, day-first ``Date`` and a
    ``Time`` written ``18.00.00`` in two columns, two empty trailing columns and empty trailing
    rows. Date and Time are joined, the empty columns and rows are left out."""
    text = (
        "Date;Time;CO(GT);T;;\n"
        "10/03/2004;18.00.00;2,6;13,6;;\n"
        "10/03/2004;19.00.00;2;13,3;;\n"
        "13/03/2004;20.00.00;2,2;11,9;;\n"
        ";;;;;\n;;;;;\n"
    )
    ds = load_table(_write(tmp_path / "AirQualityUCI.csv", text))
    assert list(ds["feature"].values) == ["CO(GT)", "T"]
    expect = ["2004-03-10T18:00", "2004-03-10T19:00", "2004-03-13T20:00"]
    np.testing.assert_array_equal(ds["time"].values, np.array(expect, dtype="datetime64[ns]"))
    np.testing.assert_allclose(ds["values"].values, [[2.6, 13.6], [2.0, 13.3], [2.2, 11.9]])


def test_offsets_that_change_with_daylight_saving_become_utc(tmp_path):
    """A column whose UTC offset changes (+01:00 to +02:00 at a DST change) is one UTC axis,
    hourly across the change, instead of pandas' 'Mixed timezones' error."""
    text = "timestamp,a\n" + "".join(
        f"2020-03-29T{h:02d}:00:00{o},{i}\n"
        for i, (h, o) in enumerate([(0, "+01:00"), (1, "+01:00"), (3, "+02:00"), (4, "+02:00")])
    )
    ds = load_table(_write(tmp_path / "dst.csv", text))
    expected = pd.date_range("2020-03-28T23:00", periods=4, freq="1h").to_numpy()
    np.testing.assert_array_equal(ds.time.values, expected)
    np.testing.assert_array_equal(ds["values"].values[:, 0], [0, 1, 2, 3])


@pytest.mark.parametrize(
    ("entries", "reading"),
    [
        (["1704067200", "1704070800", "1704074400"], "epoch times in s"),
        (["1704067200000", "1704070800000", "1704074400000"], "epoch times in ms"),
        (["1704067200.0", "1704070800.0", "1704074400.0"], "epoch times in s"),
        (["2024010100", "2024010101", "2024010102"], "dates YYYYMMDDhh"),
        (["202401010000", "202401010100", "202401010200"], "dates YYYYMMDDhhmm"),
    ],
)
def test_numeric_dates_and_epoch_times_become_datetimes(tmp_path, entries, reading):
    """Unix epoch times (s, ms) and compact dates become datetimes, with a warning naming the
    reading; periods and --freq then work as with text dates."""
    text = "timestamp,x\n" + "".join(f"{e},{k}\n" for k, e in enumerate(entries))
    with pytest.warns(UserWarning, match=reading) as caught:
        ds = load_table(_write(tmp_path / "t.csv", text))
    assert "2024-01-01 00:00:00 to 2024-01-01 02:00:00" in str(caught[0].message)
    np.testing.assert_array_equal(ds.time.values, TIMES)


def test_numbers_that_are_not_dates_stay_numbers(tmp_path, recwarn):
    """Steps, hours since a start, and 8-digit numbers that are not all valid dates are kept."""
    for name, entries in [
        ("steps", ["0", "1", "2"]),
        ("hours", ["1900000", "1900006", "1900012"]),  # NCEP: hours since 1800
        ("ids", ["20240130", "20240131", "20240132"]),  # day 32: not a date
        ("mixed", ["9999999", "20240101", "20240102"]),  # 7 and 8 digits
    ]:
        text = "time,x\n" + "".join(f"{e},{k}\n" for k, e in enumerate(entries))
        ds = load_table(_write(tmp_path / f"{name}.csv", text))
        assert ds.time.dtype.kind in "if", name
        np.testing.assert_array_equal(ds.time.values, [float(e) for e in entries])
    assert not [w for w in recwarn if "read as" in str(w.message)]


def test_float32_rounding_of_large_slowly_varying_values_warns(tmp_path, recwarn):
    """A meter reading near 1.6e8 that moves by units is rounded by float32 (step 16) far beyond
    0.1 % of its spread: one warning naming it; ordinary columns give none."""
    rows = "".join(f"2024-01-01 {h:02d}:00,{160_000_000 + 3 * h},{h * 0.5}\n" for h in range(12))
    with pytest.warns(UserWarning, match="'meter' is stored as float32"):
        load_table(_write(tmp_path / "m.csv", "time,meter,x\n" + rows))
    load_table(_write(tmp_path / "w.csv", WIDE))
    assert not [w for w in recwarn if "float32" in str(w.message)]


# --------------------------------------------------------------------------- pandas HDF5

FILES = Path(__file__).parent / "files"  # written by pandas 3.1 + PyTables (DataFrame.to_hdf)


@pytest.mark.parametrize("name", ["pandas_fixed.h5", "pandas_table.h5"])
def test_pandas_hdf5_as_metr_la_ships_it(name):
    """METR-LA's layout: times as the index, integer sensor ids as columns, 0 for missing; the
    fixed and the table formats read without PyTables, the same as pandas reads them."""
    ds = load_table(FILES / name)
    assert ds.feature.values.tolist() == ["773869", "767541", "767542"]
    expected = pd.date_range("2012-03-01", periods=6, freq="5min").to_numpy("datetime64[ns]")
    np.testing.assert_array_equal(ds.time.values, expected)
    values = np.arange(18, dtype=np.float32).reshape(6, 3) + 50
    values[1, 2] = 0  # --missing-values 0 marks it missing at ingest
    np.testing.assert_array_equal(ds["values"].values, values)


def test_pandas_hdf5_blocks_and_zone():
    """Two dtype blocks keep the column order; a zone-aware index becomes naive UTC."""
    ds = load_table(FILES / "pandas_fixed_blocks_tz.h5")
    assert ds.feature.values.tolist() == ["a", "b", "c", "n"]
    assert ds.time.values[0] == np.datetime64("2012-02-29T23:00")  # 00:00 in Berlin
    np.testing.assert_array_equal(ds["values"].values[:, 3], np.arange(6))


def test_pandas_hdf5_refusals(tmp_path):
    import h5py

    _raises(r"holds 2 pandas tables \(a, b\); save one per file", FILES / "pandas_two.h5")
    with h5py.File(tmp_path / "mri.h5", "w") as f:
        f["kspace"] = np.zeros((2, 4, 4), np.complex64)
    _raises("holds no pandas table .*--kind medical", tmp_path / "mri.h5")
    _raises("cannot read as HDF5", _write(tmp_path / "text.h5", "time,a\n"))


# --------------------------------------------------------------------------- Excel


def test_excel_first_sheet_with_data_and_a_warning_for_the_others(tmp_path):
    """An .xlsx workbook: date cells stay dates, an empty first sheet is skipped, a later sheet
    with data is named in a warning; .xls / .ods are refused with what to do."""
    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path, engine="openpyxl") as book:
        pd.DataFrame().to_excel(book, sheet_name="cover", index=False)
        frame = pd.DataFrame({"Date": pd.to_datetime(TIMES), "a": [1.5, NAN, 3], "b": [NAN, 2, 4]})
        frame.to_excel(book, sheet_name="data", index=False)
        pd.DataFrame({"note": ["units: mg/m3"]}).to_excel(book, sheet_name="notes", index=False)
    with pytest.warns(UserWarning, match=r"read sheet 'data'; sheets 'notes' are left out"):
        ds = load_table(path)
    np.testing.assert_array_equal(ds.time.values, TIMES)
    np.testing.assert_array_equal(ds["values"].values, [[1.5, NAN], [NAN, 2], [3, 4]])
    _raises(r"save the \.xls spreadsheet as \.xlsx or CSV", _write(tmp_path / "old.xls", "x"))
    _raises(r"cannot read as Excel", _write(tmp_path / "fake.xlsx", "time,a\n0,1\n"))


@pytest.mark.parametrize("suffix", [".feather", ".json", ".jsonl"])
def test_feather_and_json_tables(tmp_path, suffix):
    frame = pd.DataFrame({"time": pd.to_datetime(TIMES), "a": [1.5, NAN, 3], "b": [NAN, 2, 4]})
    path = tmp_path / f"t{suffix}"
    if suffix == ".feather":
        frame.to_feather(path)
    else:
        frame.assign(time=frame.time.astype(str)).to_json(
            path, orient="records", lines=suffix == ".jsonl"
        )
    ds = load_table(path)
    np.testing.assert_array_equal(ds.time.values, TIMES)
    np.testing.assert_array_equal(ds["values"].values, [[1.5, NAN], [NAN, 2], [3, 4]])
    _raises(r"cannot read as JSON lines", _write(tmp_path / "bad.jsonl", "{not json\n"))


def test_excel_report_with_a_title_block_and_a_blank_corner(tmp_path):
    """A report sheet: a title and a note above the table, a blank first header cell (an index
    exported by pandas): the header is the first full row of text, the rest typed."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["Air quality, station 7"])
    sheet.append(["units: ug/m3", None, None])
    sheet.append([])
    sheet.append([None, "time", "pm25"])
    for k, t in enumerate(pd.to_datetime(TIMES)):
        sheet.append([k, t.to_pydatetime(), 10.5 + k])
    book.save(tmp_path / "report.xlsx")
    ds = load_table(tmp_path / "report.xlsx", drop_columns=["Unnamed: 0"])
    np.testing.assert_array_equal(ds.time.values, TIMES)
    np.testing.assert_array_equal(ds["values"].values[:, 0], [10.5, 11.5, 12.5])
