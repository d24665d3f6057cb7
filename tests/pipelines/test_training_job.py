"""`stdiff train --config`: each network trains on a store through the CLI; CSDI's target rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stdiff.cli import app


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
        "loop": {**LOOP, "cfg_dropout": 0.2, "sample_every": 60},
    }
    recs = _train(tmp_path, net, cfg)
    assert recs[-1]["step"] == 60 and np.isfinite(recs[-1]["loss"])
    assert (tmp_path / net / "checkpoints/step_000000060/weights.safetensors").is_file()
    assert (tmp_path / net / "samples/step_000000060.png").stat().st_size > 1000  # a grid


def test_csdi_trains_on_stays(tmp_path: Path, stay_store: Path, csdi_job) -> None:
    cfg = csdi_job(
        tmp_path / "csdi",
        stay_store,
        {"channels": 16, "layers": 2},
        optim={"lr": 3e-3, "warmup_steps": 5},
        loop={**LOOP, "sample_every": 60},
    )
    recs = _train(tmp_path, "csdi", cfg)
    assert recs[-1]["loss"] < recs[0]["loss"], recs
    assert "val_loss" in recs[-1] and recs[-1]["val_crps"] > 0 and recs[-1]["val_mae"] > 0
    assert (tmp_path / "csdi/samples/step_000000060.png").is_file()
    rows = (tmp_path / "csdi/metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr,grad_norm,samples_per_s") and "val_crps" in rows[0]
    assert len(rows) == 1 + len(recs)


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


def test_train_cli_under_torchrun(tmp_path: Path, stay_store: Path, torchrun, csdi_job) -> None:
    """`torchrun --nproc_per_node 2 -m stdiff train` joins one gloo group: one metrics
    writer (rank 0) and one set of checkpoints."""
    loop = {"steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 4, "progress": False}
    cfg = csdi_job(tmp_path / "ddp", stay_store, {"channels": 8, "layers": 1}, loop=loop)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun(29573, "-m", "stdiff", "train", "--config", str(path))
    steps = [
        json.loads(ln)["step"] for ln in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [2, 4]
    assert (tmp_path / "ddp/checkpoints/step_000000004/weights.safetensors").is_file()
