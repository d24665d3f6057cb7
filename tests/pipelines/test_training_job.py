"""`stdiff train --config`: each network trains on a store through the CLI; CSDI's target rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from typer.testing import CliRunner

from datasets.splits import csdi_fold_split, normalization_stats
from datasets.store import attach_stats, write_store
from pipelines.cli import app
from pipelines.training_job import csdi_random_targets


def test_csdi_random_targets() -> None:
    g = torch.Generator().manual_seed(0)
    observed = (torch.rand(64, 12, 5, generator=g) < 0.4).float()
    cond = csdi_random_targets(observed, torch.Generator().manual_seed(1))
    assert bool((cond <= observed).all())
    again = csdi_random_targets(observed, torch.Generator().manual_seed(1))
    assert torch.equal(cond, again)
    frac = 1 - cond.sum((1, 2)) / observed.sum((1, 2)).clamp_min(1)
    assert 0.3 < float(frac.mean()) < 0.7  # ratio ~ U(0, 1): mean about one half


@pytest.fixture
def image_store(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "imgs.npz",
        images=rng.integers(0, 255, (64, 8, 8), dtype=np.uint8),
        labels=rng.integers(0, 3, 64),
    )
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            str(tmp_path / "imgs.npz"),
            "--kind",
            "images",
            "--out",
            str(tmp_path / "imgs.zarr"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    return tmp_path / "imgs.zarr"


@pytest.fixture
def stay_store(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    t = np.linspace(0, 6, 12)
    v = np.sin(t[None, :, None] + rng.uniform(0, 6, (40, 1, 4))).astype(np.float32)
    v[rng.random(v.shape) < 0.3] = np.nan
    ds = xr.Dataset(
        {
            "values": (("stay", "time", "feature"), v),
            "observed_mask": (("stay", "time", "feature"), (~np.isnan(v)).astype(np.uint8)),
        },
        coords={"stay": np.arange(40)},
        attrs={"kind": "timeseries", "source": "synthetic"},
    )
    ds = attach_stats(ds, normalization_stats(ds, ["values"], csdi_fold_split(40)))
    write_store(ds, tmp_path / "stays.zarr", content_hash="s")
    return tmp_path / "stays.zarr"


def _train(tmp_path: Path, name: str, cfg: dict) -> list[dict]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert res.exit_code == 0, res.output
    assert "trained to step" in res.output
    return [json.loads(ln) for ln in (Path(cfg["out"]) / "metrics.jsonl").read_text().splitlines()]


LOOP = {
    "steps": 60,
    "batch_size": 16,
    "log_every": 20,
    "checkpoint_every": 60,
    "progress": False,
    "val_every": 60,
    "val_batches": 1,
}


@pytest.mark.parametrize(
    ("net", "params"),
    [
        (
            "unet",
            {
                "in_channels": 1,
                "base_channels": 16,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "num_classes": 3,
            },
        ),
        (
            "dit_custom",
            {
                "in_channels": 1,
                "patch_size": 2,
                "depth": 2,
                "hidden": 64,
                "num_heads": 4,
                "num_classes": 3,
            },
        ),
    ],
)
def test_image_networks_train(tmp_path: Path, image_store: Path, net: str, params: dict) -> None:
    cfg = {
        "out": str(tmp_path / net),
        "device": "cpu",
        "data": {"store": str(image_store), "task": "images"},
        "model": {"net": net, "params": params},
        "optim": {"lr": 1e-3, "warmup_steps": 5},
        "loop": {**LOOP, "cfg_dropout": 0.2},
    }
    recs = _train(tmp_path, net, cfg)
    assert recs[-1]["step"] == 60 and np.isfinite(recs[-1]["loss"])
    assert (tmp_path / net / "checkpoints/step_000000060/weights.safetensors").is_file()


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


def test_csdi_trains_on_stays(tmp_path: Path, stay_store: Path) -> None:
    cfg = _csdi_job(
        tmp_path / "csdi",
        stay_store,
        {"channels": 16, "layers": 2},
        optim={"lr": 3e-3, "warmup_steps": 5},
        loop=LOOP,
    )
    recs = _train(tmp_path, "csdi", cfg)
    assert recs[-1]["loss"] < recs[0]["loss"], recs
    assert "val_loss" in recs[-1]


def test_bad_job_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path),
                "data": {"store": "x", "task": "images"},
                "model": {"net": "vit"},
            }
        )
    )
    res = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert res.exit_code == 2 and "net 'vit' is not known; choose one of" in res.output


def test_train_cli_under_torchrun(tmp_path: Path, stay_store: Path, torchrun) -> None:
    """`torchrun --nproc_per_node 2 -m pipelines.cli train` joins one gloo group: one metrics
    writer (rank 0) and one set of checkpoints."""
    loop = {"steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 4, "progress": False}
    cfg = _csdi_job(tmp_path / "ddp", stay_store, {"channels": 8, "layers": 1}, loop=loop)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun(29573, "-m", "pipelines.cli", "train", "--config", str(path))
    steps = [
        json.loads(ln)["step"] for ln in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [2, 4]
    assert (tmp_path / "ddp/checkpoints/step_000000004/weights.safetensors").is_file()
