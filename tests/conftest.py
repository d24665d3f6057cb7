"""Shared fixtures: exact Gaussian and Gaussian-mixture data, the real-data folder, a small store of
stays and a small trained CSDI, a small images store and a small trained class-conditional DiT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from stdiff.datasets.splits import csdi_fold_split, normalization_stats, time_split
from stdiff.datasets.store import attach_stats, write_store
from stdiff.diffusion.analytic import GaussianMixture

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def gaussian() -> GaussianMixture:
    """N(mu, S) in 2-D with correlated, unequal variances."""
    return GaussianMixture(
        torch.tensor([[1.0, -0.5]]), torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=torch.float64)
    )


@pytest.fixture
def mixture() -> GaussianMixture:
    """A 3-component 2-D mixture with unequal weights and anisotropic covariances."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.5], [0.0, 2.5]])
    covs = torch.tensor(
        [[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.1]]],
        dtype=torch.float64,
    )
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder beside the project; tests that need it skip with a reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only on development machines)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Tiny network ops run several times faster with one intra-op thread on a shared 2-core
    machine; the previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def torchrun():
    """Run ``torchrun --nproc_per_node 2 --master_port PORT ARGS...`` on the CPU (gloo); returns
    the CompletedProcess after asserting it succeeded."""
    import os
    import subprocess
    import sys

    def run(port: int, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd += ["--master_port", str(port), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    return run


def make_stay_store(path: Path, n: int = 40, features: int = 4, length: int = 12) -> Path:
    """Noisy phase-shifted sines, 30 % missing, CSDI-style layout (stay, time, feature)."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 6, length)
    v = np.sin(t[None, :, None] + rng.uniform(0, 6, (n, 1, features))).astype(np.float32)
    v[rng.random(v.shape) < 0.3] = np.nan
    ds = xr.Dataset(
        {
            "values": (("stay", "time", "feature"), v),
            "observed_mask": (("stay", "time", "feature"), (~np.isnan(v)).astype(np.uint8)),
        },
        coords={"stay": np.arange(n), "feature": [f"f{i}" for i in range(features)]},
        attrs={"kind": "timeseries", "source": "synthetic"},
    )
    ds = attach_stats(ds, normalization_stats(ds, ["values"], csdi_fold_split(n)))
    write_store(ds, path, content_hash="s")
    return path


@pytest.fixture
def stay_store(tmp_path: Path) -> Path:
    return make_stay_store(tmp_path / "stays.zarr")


def _csdi_job(out: Path, store: Path, params: dict, **extra) -> dict:
    """A CSDI imputation job on ``store`` (eps prediction on the quad schedule, as the paper)."""
    model = {
        "net": "csdi",
        "params": {"num_features": 4, "heads": 2, **params},
        "prediction": "eps",
        "sigma_data": 1.0,
        "noise_conditioning": "timestep",
    }
    return {
        "out": str(out),
        "device": "cpu",
        "data": {"store": str(store), "task": "imputation"},
        "model": model,
        "schedule": {"name": "csdi_quad"},
        **extra,
    }


@pytest.fixture
def csdi_job():
    return _csdi_job


@pytest.fixture(scope="module")
def trained_csdi(tmp_path_factory) -> tuple[Path, Path]:
    """(store, run folder) of a small CSDI trained 60 steps through `stdiff train`."""
    import yaml
    from typer.testing import CliRunner

    from stdiff.cli import app

    root = tmp_path_factory.mktemp("csdi")
    store = make_stay_store(root / "stays.zarr")
    loop = {
        "steps": 60,
        "batch_size": 16,
        "log_every": 20,
        "checkpoint_every": 60,
        "progress": False,
    }
    cfg = _csdi_job(
        root / "run",
        store,
        {"channels": 16, "layers": 2},
        optim={"lr": 3e-3, "warmup_steps": 5},
        loop=loop,
    )
    (root / "job.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(root / "job.yaml")])
    assert res.exit_code == 0, res.output
    return store, root / "run"


def make_image_store(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    n = len(images)
    ds = xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), images),
            "label": ("sample", labels.astype(np.int64)),
            "split": ("sample", (np.arange(n) % 4 == 0).astype(np.int8)),  # every 4th held back
        },
        attrs={"kind": "images", "classes": ["a", "b", "c"]},
    )
    write_store(ds, path, content_hash=path.name)
    return path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> tuple[Path, Path]:
    """A class-conditional DiT trained for a few steps on 16 x 16 blobs of 3 classes:
    ``(run folder, store)``; every 4th image is held back (split 1)."""
    import yaml
    from typer.testing import CliRunner

    from stdiff.cli import app

    tmp = tmp_path_factory.mktemp("recon")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    labels = rng.integers(0, 3, 96)
    centres = np.array([[5, 5], [10, 10], [5, 11]])[labels] + rng.integers(-1, 2, (96, 2))
    blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 8)
    store = make_image_store(tmp / "blobs.zarr", (blobs * 255).astype(np.uint8)[:, None], labels)
    cfg = {
        "out": str(tmp / "run"),
        "device": "cpu",
        "data": {"store": str(store), "task": "images"},
        "model": {
            "net": "dit_custom",
            "params": {
                "in_channels": 1,
                "patch_size": 2,
                "depth": 1,
                "hidden": 32,
                "num_heads": 2,
                "num_classes": 3,
            },
        },
        "optim": {"lr": 2e-3, "warmup_steps": 5},
        "loop": {
            "steps": 30,
            "batch_size": 16,
            "cfg_dropout": 0.2,
            "log_every": 10,
            "checkpoint_every": 30,
            "progress": False,
        },
    }
    (tmp / "train.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp / "train.yaml")])
    assert res.exit_code == 0, res.output
    return tmp / "run", store


@pytest.fixture
def make_images():
    """``make_image_store(path, images, labels)``: an images store for a test."""
    return make_image_store


GRID_TIMES = pd.date_range("2013-01-01", periods=4 * 40, freq="6h")


def make_grid_store(path: Path) -> Path:
    """A small regional 6-hourly air-temperature grid (Jan-Feb 2013 training, Feb validation)."""
    rng = np.random.default_rng(0)
    air = 280 + rng.normal(0, 2, (len(GRID_TIMES), 6, 8)).astype(np.float32)
    ds = xr.Dataset(
        {"air": (("time", "lat", "lon"), air, {"units": "K"})},
        coords={"time": GRID_TIMES, "lat": np.linspace(60, 35, 6), "lon": np.linspace(200, 235, 8)},
        attrs={"kind": "weather", "source": "synthetic"},
    )
    split = time_split(ds, ("2013-01-01", "2013-01-31"), ("2013-02-01", "2013-02-09"))
    ds = attach_stats(ds, normalization_stats(ds, ["air"], split, time_differences=True))
    write_store(ds, path, content_hash="grid")
    return path


def weather_job(out: Path, store: Path) -> dict:
    """A 2-step tiny-DiT forecast training job on ``store``."""
    return {
        "out": str(out), "device": "cpu",
        "data": {"store": str(store), "task": "forecast",
                 "train_period": ["2013-01-01", "2013-01-31"]},
        "model": {"net": "dit_custom", "prediction": "edm", "sigma_data": 1.0,
                  "params": {"patch_size": 2, "depth": 1, "hidden": 16, "num_heads": 2}},
        "schedule": {"name": "edm"},
        "loop": {"steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 2,
                 "progress": False},
    }  # fmt: skip


@pytest.fixture(scope="session")
def weather_builders():
    """``(make_grid_store(path), weather_job(out, store))`` for tests that need a weather model."""
    return make_grid_store, weather_job
