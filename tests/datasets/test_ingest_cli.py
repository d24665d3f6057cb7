"""`stdiff ingest` end to end: canonical stores with train-only statistics, the re-ingest no-op,
one-line errors with no store left behind, and every real data set when ../shared/data is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.store import open_store
from stdiff.datasets.windows import ForecastWindows, SampleWindows


def _run(*args: str):
    return CliRunner().invoke(app, ["ingest", *map(str, args), "--no-progress"])


@pytest.fixture
def weather_nc(tmp_path: Path) -> Path:
    time = pd.date_range("2013-12-01", "2014-01-31T18", freq="6h")
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "t": (
                ("time", "latitude", "longitude"),
                rng.normal(270, 3, (len(time), 4, 6)).astype(np.float32),
                {"units": "K"},
            )
        },
        coords={
            "time": time,
            "latitude": [60.0, 50.0, 40.0, 30.0],
            "longitude": np.arange(-150.0, 150.0, 50.0),
        },
    )
    path = tmp_path / "t.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def test_weather_ingest_stats_noop(weather_nc: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.zarr"
    args = (
        weather_nc,
        "--kind",
        "weather",
        "--out",
        out,
        "--train-period",
        "2013-12-01:2013-12-31",
        "--test-period",
        "2014-01-01:2014-01-31",
    )
    res = _run(*args)
    assert res.exit_code == 0, res.output
    assert "written" in res.output
    ds = open_store(out)
    assert ds["t"].dims == ("time", "lat", "lon") and list(ds.lat.values) == [
        30.0,
        40.0,
        50.0,
        60.0,
    ]
    december = ds["t"].sel(time=slice("2013-12-01", "2013-12-31")).values
    assert float(ds["t_mean"]) == pytest.approx(float(december.mean()), rel=1e-5)
    assert "t_diff_std" in ds and "training split only" in ds.attrs["normalization"]
    res2 = _run(*args)
    assert res2.exit_code == 0 and "unchanged" in res2.output
    w = ForecastWindows(out, ["t"], context=2, leads=[1])
    assert w[0]["context"].shape == (2, 1, 4, 6)


@pytest.mark.parametrize(
    ("make", "kind", "match"),
    [
        (lambda p: p / "missing.nc", "weather", "missing.nc: no such file"),
        (lambda p: (p / "notes.nc").write_text("hello") and p / "notes.nc", "weather", "notes.nc"),
        (lambda p: p / "x.nc", "rainfall", "choose one of"),
    ],
)
def test_bad_input_one_line_no_store(tmp_path: Path, make, kind: str, match: str) -> None:
    src = make(tmp_path)
    out = tmp_path / "o.zarr"
    res = _run(src, "--kind", kind, "--out", out)
    assert res.exit_code == 2
    assert match in res.output and res.output.count("\n") == 1, res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.zarr")]


def _inf_weather(p: Path) -> Path:
    """The test period (not the training one) holds one infinite value."""
    ds = xr.open_dataset(_weather_file(p))
    ds["t"][-1, 0, 0] = np.inf
    ds.to_netcdf(p / "inf.nc", engine="h5netcdf")
    return p / "inf.nc"


def _weather_file(p: Path) -> Path:
    time = pd.date_range("2013-12-01", periods=40, freq="6h")
    ds = xr.Dataset({"t": (("time", "lat", "lon"), np.full((40, 4, 6), 270.0, np.float32))},
                    coords={"time": time, "lat": [30.0, 40, 50, 60], "lon": np.arange(6.0) * 50})  # fmt: skip
    ds.to_netcdf(p / "w.nc", engine="h5netcdf")
    return p / "w.nc"


def _nan_npz(p: Path) -> Path:
    images = np.zeros((4, 8, 8), np.float32)
    images[2, 3, 3] = np.nan
    np.savez(p / "nan.npz", x=images, y=np.arange(4))
    return p / "nan.npz"


def _nan_nifti(p: Path) -> Path:
    import nibabel as nib

    vol = np.ones((6, 6, 4), np.float32)
    vol[0] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p / "masked.nii.gz")
    return p / "masked.nii.gz"


@pytest.mark.parametrize(
    ("make", "kind", "match"),
    [
        (_inf_weather, "weather", "inf.nc: infinite values in {'t': 1} (variable: count)"),
        (_nan_npz, "images", "nan.npz: 1 image(s) hold NaN or infinite pixels (the first is sample 2)"),
        (_nan_nifti, "medical", "masked.nii.gz: 24 voxel(s) are NaN or infinite"),
        (lambda p: (p / "inf.csv").write_text("time,a\n0,1\n1,inf\n") and p / "inf.csv",
         "timeseries", "'a' holds an infinite value, 'inf' (data row 2)"),
    ],
)  # fmt: skip
def test_non_finite_values_are_refused(tmp_path: Path, make, kind: str, match: str) -> None:
    """NaN is a missing value only where the format has missing values (series, grids);
    infinities never are, and images and volumes must be finite: one line, no store."""
    test_bad_input_one_line_no_store(tmp_path, make, kind, match)


def test_real_ncep_ingest(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "air.zarr"
    res = _run(
        shared_data / "ncep_air_temperature/air_temperature.zarr",
        "--kind",
        "weather",
        "--out",
        out,
        "--train-period",
        "2013-01-01:2013-12-31",
        "--test-period",
        "2014-01-01:2014-12-31",
    )
    assert res.exit_code == 0, res.output
    ds = open_store(out)
    assert ds["air"].shape == (2920, 25, 53) and ds["air"].attrs.get("units") in ("degK", "K")
    assert "1460 train" in ds.attrs["split"] and "1460 test" in ds.attrs["split"]


def test_real_physionet_ingest(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "physio.zarr"
    res = _run(shared_data / "physionet2012/set-a.tar.gz", "--kind", "timeseries", "--out", out)
    assert res.exit_code == 0, res.output
    ds = open_store(out)
    assert ds["values"].shape == (4000, 48, 35)
    missing = 1 - float(ds["observed_mask"].mean())
    print(f"PhysioNet set-a missing ratio {missing:.3f}")
    assert 0.75 < missing < 0.85
    assert "2797 train / 401 valid / 799 test" in ds.attrs["split"]
    flags = ds["stay_has_data"].values.astype(bool)  # the stored split needs no scan of the mask
    assert flags.sum() == 3997
    np.testing.assert_array_equal(flags, ds["observed_mask"].values.reshape(4000, -1).any(1))
    item = SampleWindows(out, "stay", ["values", "observed_mask"])[0]
    assert item["values"].shape == (48, 35)


def test_real_images_and_medical_ingest(shared_data: Path, tmp_path: Path) -> None:
    res = _run(shared_data / "fashion_mnist", "--kind", "images", "--out", tmp_path / "f.zarr")
    assert res.exit_code == 0, res.output
    ds = open_store(tmp_path / "f.zarr")
    assert ds["image"].shape == (70000, 1, 28, 28)
    train = ds["label"].values[ds["split"].values == 0]
    assert np.bincount(train).tolist() == [6000] * 10
    res = _run(
        shared_data / "brain_mri/ch2.nii.gz", "--kind", "medical", "--out", tmp_path / "b.zarr"
    )
    assert res.exit_code == 0, res.output
    mri = open_store(tmp_path / "b.zarr")
    assert mri["image"].ndim == 3 and sorted(mri["image"].shape) == [181, 181, 217]
    s = SampleWindows(tmp_path / "b.zarr", "slice", ["image"])[90]
    assert s["image"].ndim == 2


def test_input_of_another_kind_says_which(tmp_path: Path) -> None:
    """A table given as images, images given as a table: the one-line error ends with the kind
    the input looks like."""
    pd.DataFrame({"time": pd.date_range("2024-01-01", periods=3), "x": [1.0, 2, 3]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    (tmp_path / "pics/cat").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "pics/cat/a.png")
    for source, kind, guess in [("t.csv", "images", "timeseries"), ("t.csv", "weather", "timeseries"),
                                ("pics", "timeseries", "images")]:  # fmt: skip
        res = CliRunner().invoke(app, ["ingest", str(tmp_path / source), "--kind", kind,
                                       "--out", str(tmp_path / "o.zarr")])  # fmt: skip
        assert res.exit_code == 2 and res.output.strip().endswith(
            f"it looks like --kind {guess} data"
        )
        assert not (tmp_path / "o.zarr").exists()
