"""Zip archives as ingest sources: extracted beside --out, read as their content, removed after."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.store import open_store


def _ingest(tmp_path: Path, source: Path, kind: str, out: str):
    args = ["ingest", str(source), "--kind", kind, "--out", str(tmp_path / out), "--no-progress"]
    return CliRunner().invoke(app, args)


def _leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in tmp_path.rglob("*unzip*")]


def test_zipped_table_reads_as_the_table_and_leaves_nothing_behind(tmp_path):
    """A table zipped on a Mac (``__MACOSX/._*`` entries beside it) gives the same store as the
    table itself; the store names the archive; no extraction folder remains."""
    times = pd.date_range("2024-01-01", periods=48, freq="1h")
    values = np.sin(np.arange(48) / 5)
    pd.DataFrame({"time": times, "x": values}).to_csv(tmp_path / "t.csv", index=False)
    with zipfile.ZipFile(tmp_path / "t.zip", "w") as z:
        z.write(tmp_path / "t.csv", "data/t.csv")
        z.writestr("__MACOSX/data/._t.csv", b"\x00\x05\x16\x07")
    assert _ingest(tmp_path, tmp_path / "t.csv", "timeseries", "plain.zarr").exit_code == 0
    res = _ingest(tmp_path, tmp_path / "t.zip", "timeseries", "zipped.zarr")
    assert res.exit_code == 0, res.output
    plain, zipped = open_store(tmp_path / "plain.zarr"), open_store(tmp_path / "zipped.zarr")
    for name in ("values", "observed_mask", "split"):
        np.testing.assert_array_equal(plain[name].values, zipped[name].values)
    np.testing.assert_array_equal(plain.time.values, zipped.time.values)
    assert zipped.attrs["source"] == str(tmp_path / "t.zip")
    assert _leftovers(tmp_path) == []


def test_zipped_weather_files_split_by_variable(tmp_path):
    """A Copernicus-style zip of one netCDF per variable ingests as one grid."""
    t = pd.date_range("2020-01-01", periods=12, freq="6h")
    lat, lon = np.linspace(-60, 60, 5), np.arange(0, 360, 45.0)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / "era5.zip", "w") as z:
        for name in ("t2m", "sp"):
            field = rng.normal(280, 5, (12, 5, 8)).astype(np.float32)
            ds = xr.Dataset({name: (("valid_time", "latitude", "longitude"), field)},
                            coords={"valid_time": t, "latitude": lat, "longitude": lon})  # fmt: skip
            ds.to_netcdf(tmp_path / f"{name}.nc")
            z.write(tmp_path / f"{name}.nc", f"data_stream-oper_{name}.nc")
    res = _ingest(tmp_path, tmp_path / "era5.zip", "weather", "w.zarr")
    assert res.exit_code == 0, res.output
    assert {"t2m", "sp"} <= set(open_store(tmp_path / "w.zarr").data_vars)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"inner/bad.csv": "time,x\n2024-01-01,1\n2024-01-01,2\n"}, r"a\.zip!/inner/bad\.csv: "),
        ({"__MACOSX/._x": "junk"}, "the zip archive holds no files"),
        (None, "cannot read as a zip archive"),
    ],
)
def test_bad_archives_one_line_nothing_left(tmp_path, content, message):
    path = tmp_path / "a.zip"
    if content is None:
        path.write_text("not a zip")
    else:
        with zipfile.ZipFile(path, "w") as z:
            for name, text in content.items():
                z.writestr(name, text)
    res = _ingest(tmp_path, path, "timeseries", "out.zarr")
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1
    assert re.search(message, res.output), res.output
    assert not (tmp_path / "out.zarr").exists() and _leftovers(tmp_path) == []


def test_nested_single_folders_lead_to_the_content(tmp_path):
    with zipfile.ZipFile(tmp_path / "n.zip", "w") as z:
        z.writestr("export/2024/aq.csv", "time,x\n2024-01-01,1\n2024-01-02,2\n")
    res = _ingest(tmp_path, tmp_path / "n.zip", "timeseries", "n.zarr")
    assert res.exit_code == 0, res.output
    assert open_store(tmp_path / "n.zarr").sizes["time"] == 2
    res = _ingest(tmp_path, tmp_path / "n.zip", "medical", "m.zarr")
    assert res.exit_code == 2 and "n.zip!/export/2024/aq.csv: expected a NIfTI" in res.output
