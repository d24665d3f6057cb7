"""One table per stay (``--layout stays``): PhysioNet 2019-style ``.psv`` files, datetime stays,
row-step stays, the CSDI fold split, refusals, and a model trained and imputing on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.errors import DataError
from stdiff.datasets.stays import load_stays
from stdiff.datasets.store import open_store

NAN = np.nan
HEADER = "HR|Temp|Unit1|ICULOS|SepsisLabel\n"


def _psv(folder: Path, name: str, rows: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.psv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return path


def _sepsis(folder: Path, stays: int = 3) -> list[Path]:
    """p1: hours 1-3; p2: hours 2 and 4, two rows in hour 4 (the last observed value wins per
    column); p3: a header without rows; then filler stays."""
    files = [
        _psv(folder, "p1", ["80|36.6|1|1|0", "NaN|NaN|1|2|0", "85|37.0|1|3|1"]),
        _psv(folder, "p2", ["70|NaN|0|2|0", "72|38.1|0|4|0", "NaN|38.3|0|4|0"]),
        _psv(folder, "p3", []),
    ]
    for k in range(stays - 3):
        files.append(_psv(folder, f"q{k}", [f"{60 + k}|36|1|{h}|0" for h in range(1, 5)]))
    return files


def test_psv_stays_on_iculos_hours(tmp_path):
    ds = load_stays(_sepsis(tmp_path / "set"), time_column="ICULOS", drop_columns=["SepsisLabel"])
    assert ds["values"].dims == ("stay", "time", "feature")
    assert ds.stay.values.tolist() == ["p1", "p2", "p3"]
    assert ds.feature.values.tolist() == ["HR", "Temp", "Unit1"]
    expected = np.full((3, 3, 3), NAN, np.float32)
    expected[0] = [[80, 36.6, 1], [NAN, NAN, 1], [85, 37.0, 1]]
    expected[1, 0], expected[1, 2] = [70, NAN, 0], [72, 38.3, 0]  # hour 3 empty; last observed
    np.testing.assert_allclose(ds["values"].values, expected)
    np.testing.assert_array_equal(ds["observed_mask"].values, ~np.isnan(expected))
    with pytest.warns(UserWarning, match=r"2 of 3 stays are longer than --stay-length 2; .* 3\)"):
        short = load_stays(_sepsis(tmp_path / "set"), time_column="ICULOS", length=2)
    assert short.sizes["time"] == 2 and "SepsisLabel" in short.feature.values


def test_datetime_stays_bin_by_freq_and_rows_without_time_are_steps(tmp_path):
    folder = tmp_path / "adm"
    folder.mkdir()
    (folder / "a.csv").write_text(
        "charttime,hr\n2150-01-01 10:05,1\n2150-01-01 10:40,2\n2150-01-01 11:10,3\n"
    )
    (folder / "b.csv").write_text("charttime,hr\n2151-06-01 00:00,4\n")
    ds = load_stays(sorted(folder.iterdir()), time_column="charttime", freq="30min")
    np.testing.assert_array_equal(ds["values"].values[:, :, 0], [[1, 2, 3], [4, NAN, NAN]])
    (folder / "c.csv").write_text("hr,sbp\n5,100\n6,\n")
    ds = load_stays([folder / "c.csv"])
    np.testing.assert_array_equal(ds["values"].values[0], [[5, 100], [6, NAN]])


def test_stays_refusals(tmp_path):
    files = _sepsis(tmp_path / "set")
    with pytest.raises(DataError, match="--drop-columns 'Label' is in none of the tables"):
        load_stays(files, drop_columns=["Label"])
    with pytest.raises(DataError, match="--time-column: 'ICU' is in none of the tables"):
        load_stays(files, time_column="ICU")
    with pytest.raises(DataError, match=r"--stay-length.*positive"):
        load_stays(files, length=0)
    run = CliRunner().invoke
    base = [
        "ingest",
        str(tmp_path / "set"),
        "--kind",
        "timeseries",
        "--out",
        str(tmp_path / "o.zarr"),
    ]
    res = run(app, [*base, "--layout", "stays", "--train-period", "2020-01-01:2020-02-01"])
    assert res.exit_code == 2 and "--train-period does not apply to --layout stays" in res.output
    res = run(app, [*base, "--stay-length", "4"])
    assert res.exit_code == 2 and "--stay-length applies to --layout stays" in res.output
    res = run(app, [*base, "--layout", "stays"])  # 2 stays observe anything
    assert res.exit_code == 2 and "2 stays observe anything" in res.output
    (tmp_path / "set/p3.psv").unlink()
    res = run(app, base)  # read as per-station tables: no time column, and a hint
    assert res.exit_code == 2 and "--layout stays" in res.output
    assert not (tmp_path / "o.zarr").exists()


def test_stays_ingest_train_impute(tmp_path):
    """A folder of 30 stays through `stdiff ingest --layout stays`, CSDI's fold split, a short
    training run and `stdiff impute` on the test stays."""
    _sepsis(tmp_path / "set", stays=30)
    store = tmp_path / "stays.zarr"
    res = CliRunner().invoke(app, [
        "ingest", str(tmp_path / "set"), "--kind", "timeseries", "--layout", "stays",
        "--time-column", "ICULOS", "--drop-columns", "SepsisLabel", "--stay-length", "4",
        "--out", str(store), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_store(store)
    assert dict(ds.sizes) == {"stay": 30, "time": 4, "feature": 3}
    assert int(ds["stay_has_data"].sum()) == 29 and "by stay" in ds.attrs["split"]
    job = {
        "out": str(tmp_path / "run"), "device": "cpu", "seed": 0,
        "data": {"store": str(store), "task": "imputation"},
        "model": {"net": "csdi", "params": {"num_features": 3, "channels": 8, "layers": 1,
                                            "heads": 2}, "prediction": "v", "sigma_data": 1.0,
                  "noise_conditioning": "timestep"},
        "schedule": {"name": "csdi_quad"},
        "loop": {"steps": 10, "batch_size": 8, "log_every": 5, "checkpoint_every": 10,
                 "progress": False},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "imputed.zarr"
    res = CliRunner().invoke(app, ["impute", "--checkpoint", str(tmp_path / "run"), "--data",
                                   str(store), "--out", str(out), "--sampler", "dpmpp_2m_sde",
                                   "--steps", "4", "--members", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    imputed = open_store(out)
    assert imputed.sizes["member"] == 4 and np.isfinite(imputed["median"].values).all()


def test_a_bad_cell_is_named_by_its_file_and_row(tmp_path):
    files = _sepsis(tmp_path / "set", stays=4)
    files[3].write_text(HEADER + "60|36|1|1|0\n61|high|1|2|0\n")
    with pytest.raises(
        DataError, match=r"q0\.psv: 'Temp' holds a non-number 'high' \(data row 2\)"
    ):
        load_stays(files, time_column="ICULOS")
    files[3].write_text(HEADER + "60|36|1||0\n")
    with pytest.raises(DataError, match=r"q0\.psv: time column 'ICULOS' is empty in data row 1"):
        load_stays(files, time_column="ICULOS")


def test_stays_too_large_for_memory_are_refused(tmp_path, monkeypatch):
    import stdiff.datasets.outputs as outputs

    files = _sepsis(tmp_path / "set", stays=6)
    monkeypatch.setattr(outputs, "available_memory", lambda: 100)
    with pytest.raises(
        DataError, match=r"6 stays x 4 steps x 4 features would take .* --stay-length"
    ):
        load_stays(files, time_column="ICULOS")
