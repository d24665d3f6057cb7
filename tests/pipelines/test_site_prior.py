"""Site coordinates as side information, end to end through the CLI: `stdiff ingest
--site-coords` stores each feature's latitude/longitude (one-line errors naming the file, nothing
written), `model.params.coords: store` carries them into the checkpoint, and a CSDI with the
geographic prior and interpolated conditioning trains and imputes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.store import open_store

SITES = {"north": (40.3, 116.4), "south": (39.8, 116.4), "west": (39.9, 116.1)}
FLAGS = ("--kind", "timeseries", "--time-columns", "year,month,day,hour", "--freq", "1h",
         "--test-months", "2", "--no-progress")  # fmt: skip


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _stations(folder: Path, days: int = 45) -> Path:
    folder.mkdir(parents=True)
    t = pd.date_range("2014-01-01", periods=24 * days, freq="1h")
    rng = np.random.default_rng(0)
    common = np.cumsum(rng.normal(0, 1, len(t)))  # a regional signal every site shares
    for k, name in enumerate(SITES):
        frame = pd.DataFrame(
            {"year": t.year, "month": t.month, "day": t.day, "hour": t.hour,
             "PM2.5": 50 + 10 * k + 5 * common + rng.normal(0, 1, len(t)), "station": name}
        )  # fmt: skip
        frame.loc[rng.random(len(t)) < 0.1, "PM2.5"] = np.nan
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def _coords_csv(path: Path, rows: dict) -> Path:
    lines = ["# a comment line", "Station, Latitude, Longitude, elevation"]
    lines += [f"{s}, {a}, {b}, 50" for s, (a, b) in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def geo_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("geo")
    store = root / "s.zarr"
    coords = _coords_csv(root / "sites.csv", {**SITES, "elsewhere": (0.0, 0.0)})
    res = _cli("ingest", _stations(root / "csv"), "--out", store, "--site-coords", coords, *FLAGS)
    assert res.exit_code == 0, res.output
    return store


def test_ingest_stores_each_features_site(geo_store: Path) -> None:
    ds = open_store(geo_store)
    for f, st, a, b in zip(ds["feature"].values, ds["station"].values, ds["lat"].values,
                           ds["lon"].values, strict=True):  # fmt: skip
        assert (a, b) == SITES[str(st)], f
    assert ds["lat"].attrs["units"] == "degrees_north"


@pytest.mark.parametrize(
    "rows, needle",
    [
        ({"north": (40.3, 116.4), "south": (39.8, 116.4)}, "no row for station 'west'"),
        ({**SITES, "north": (95.0, 116.4)}, "latitude must be a number in [-90, 90]"),
    ],
)
def test_bad_coordinates_are_one_line_and_leave_nothing(tmp_path: Path, rows, needle) -> None:
    csv = _stations(tmp_path / "csv")
    coords = _coords_csv(tmp_path / "sites.csv", rows)
    res = _cli("ingest", csv, "--out", tmp_path / "s.zarr", "--site-coords", coords, *FLAGS)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "sites.csv" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()
    (tmp_path / "nocol.csv").write_text("station,x_km\nnorth,1\n")
    res = _cli("ingest", csv, "--out", tmp_path / "s.zarr", "--site-coords",
               tmp_path / "nocol.csv", *FLAGS)  # fmt: skip
    assert res.exit_code == 2 and "no latitude column" in res.output, res.output


def _job(tmp_path: Path, store: Path, params: dict) -> Path:
    job = {
        "out": str(tmp_path / "run"), "device": "cpu", "seed": 0,
        "data": {"store": str(store), "task": "imputation", "window": 12, "mask": "random"},
        "model": {"net": "csdi", "params": {"channels": 16, "layers": 1, "heads": 2, **params},
                  "prediction": "v", "sigma_data": 1.0, "noise_conditioning": "timestep"},
        "schedule": {"name": "csdi_quad"},
        "optim": {"lr": 3e-3, "warmup_steps": 0},
        "loop": {"steps": 6, "batch_size": 8, "log_every": 3, "checkpoint_every": 6,
                 "progress": False},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_prior_trains_and_imputes(geo_store: Path, tmp_path: Path) -> None:
    from stdiff.pipelines.engine.runner import load_denoiser

    res = _cli("train", "--config", _job(tmp_path, geo_store, {"coords": "store", "interp": True}))
    assert res.exit_code == 0, res.output
    den, tcfg, _ = load_denoiser(tmp_path / "run")
    ds = open_store(geo_store)
    assert tcfg.model.params["coords"] == [[float(a), float(b)] for a, b in
                                           zip(ds["lat"].values, ds["lon"].values, strict=True)]  # fmt: skip
    assert den.net.geo and den.net.interp
    res = _cli("impute", "--checkpoint", tmp_path / "run", "--data", geo_store, "--out",
               tmp_path / "imp.zarr", "--sampler", "ddim", "--steps", "3", "--members", "2",
               "--set", "eval_ratio=0.2", "--set", "max_steps=48")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert np.isfinite(open_store(tmp_path / "imp.zarr")["samples"].values).all()


def test_coords_from_a_store_without_them_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "plain.zarr"
    res = _cli("ingest", _stations(tmp_path / "csv", days=40), "--out", store, *FLAGS)
    assert res.exit_code == 0, res.output
    res = _cli("train", "--config", _job(tmp_path, store, {"coords": "store"}))
    assert res.exit_code == 2, res.output
    assert "model.params.coords is 'store'" in res.output and "--site-coords" in res.output
    assert not (tmp_path / "run").exists()
