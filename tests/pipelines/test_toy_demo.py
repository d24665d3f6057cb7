"""The 2-D demo end to end on the CPU: training lowers the loss, samples approach the data.

Bound: with 2,000 samples the energy distance between two independent data sets is about 0.002;
a trained model must come within 0.02 (an untrained one measures about 0.23), for every sampler.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import xarray as xr
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.toy2d import toy2d
from stdiff.diffusion.rng import member_seed
from stdiff.diffusion.samplers import sample
from stdiff.pipelines.engine.config import load_config
from stdiff.pipelines.jobs.toy import ToyDemoConfig, build_denoiser, load_toy_denoiser, run_demo
from stdiff.pipelines.metrics.distances import energy_distance

REPO = Path(__file__).resolve().parents[2]
SMALL = {"train.steps": 800, "train.batch_size": 256, "sample.n_samples": 2000, "device": "cpu"}


def test_demo_trains_and_samples_close_to_data(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/demo_toy2d.yaml", ToyDemoConfig, SMALL)
    m = run_demo(cfg, tmp_path)
    assert m["train"]["loss_last_10pct"] < 0.9 * m["train"]["loss_first_10pct"]
    assert m["energy_distance_floor"] < 0.01
    for name, r in m["samplers"].items():
        assert r["energy_distance"] < 0.02, (name, r)
    # untrained network, same sampler: far away
    untrained = build_denoiser(cfg).eval()
    x = sample(untrained, (2000, 2), untrained.schedule.discretize(18), sampler="heun")
    data = torch.from_numpy(toy2d("ring8", 2000, 1)["x"].values)
    assert energy_distance(x, data) > 0.1
    # outputs: checkpoint reloads to the same network, zarr store, plot, metrics
    reloaded, rcfg = load_toy_denoiser(tmp_path / "checkpoint.safetensors")
    assert rcfg == cfg
    ds = xr.open_zarr(tmp_path / "samples.zarr", consolidated=False)
    gen = torch.Generator().manual_seed(member_seed(cfg.seed, 3, 0))  # the heun run's stream
    again = sample(
        reloaded, (2000, 2), reloaded.schedule.discretize(18), sampler="heun", generator=gen
    )
    torch.testing.assert_close(again, torch.from_numpy(ds["heun"].values))
    assert set(ds.data_vars) == {"heun", "dpmpp_2m", "ddpm", "data"} and ds["heun"].shape == (
        2000,
        2,
    )
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        json.loads((tmp_path / "metrics.json").read_text())["samplers"].keys()
        == m["samplers"].keys()
    )


def test_same_seed_same_results(tmp_path: Path) -> None:
    over = {**SMALL, "train.steps": 30, "sample.n_samples": 200}
    cfg = load_config(REPO / "configs/demo_toy2d.yaml", ToyDemoConfig, over)
    a = run_demo(cfg, tmp_path / "a")
    b = run_demo(cfg, tmp_path / "b")
    for name in a["samplers"]:
        assert a["samplers"][name]["energy_distance"] == b["samplers"][name]["energy_distance"]
    assert a["train"]["loss_last_10pct"] == b["train"]["loss_last_10pct"]


def test_cli_help_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "demo" in res.output and "info" in res.output
    res = runner.invoke(app, ["demo", "--config", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "none.yaml: config file not found" in res.output
    res = runner.invoke(app, ["demo", "--set", "train.steps"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["info", "--json"])
    assert res.exit_code == 0 and '"heun"' in res.output


def test_cli_demo_runs(tmp_path: Path) -> None:
    args = ["demo", "--config", str(REPO / "configs/demo_toy2d.yaml"), "--out", str(tmp_path)]
    for k, v in {**SMALL, "train.steps": 50, "sample.n_samples": 300}.items():
        args += ["--set", f"{k}={v}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "energy distance" in res.output and (tmp_path / "checkpoint.safetensors").is_file()
