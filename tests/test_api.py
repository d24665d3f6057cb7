"""The Python API (``stdiff.load``, ``stdiff.train``, ``Model.impute / reconstruct / generate``;
forecasts in tests/pipelines/test_forecast.py): on in-memory xarray and on store paths, the same
numbers as the CLI (one implementation), refusals as ValueErrors naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

import stdiff
from stdiff.cli import app


def test_impute_in_memory_equals_the_cli(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    model = stdiff.load(run)
    assert model.task == "imputation"
    ds = xr.open_zarr(store, consolidated=False)
    imputed = model.impute(ds, members=3, sampler="ddim", steps=3, split="all", progress=False)
    assert dict(imputed["samples"].sizes) == {"stay": 40, "member": 3, "time": 12, "feature": 4}
    assert imputed.attrs["stdiff_job"]["evals"] == 3
    assert not list(tmp_path.iterdir())  # nothing left behind without `out`

    out = tmp_path / "cli.zarr"
    args = ["impute", "--checkpoint", str(run), "--data", str(store), "--out", str(out),
            "--members", "3", "--sampler", "ddim", "--steps", "3", "--set", "split=all"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cli = xr.open_zarr(out, consolidated=False)
    np.testing.assert_allclose(imputed["samples"].values, cli["samples"].values, rtol=0, atol=1e-6)

    # a path and an `out`: published there, returned lazily, same numbers again
    lazy = model.impute(store, out=tmp_path / "api.zarr", members=3, sampler="ddim", steps=3,
                        split="all", progress=False)  # fmt: skip
    assert (tmp_path / "api.zarr").is_dir() and lazy["samples"].chunks is not None
    np.testing.assert_allclose(lazy["samples"].values, cli["samples"].values, rtol=0, atol=1e-6)


def test_impute_a_slice_of_a_store(trained_csdi) -> None:
    store, run = trained_csdi
    part = xr.open_zarr(store, consolidated=False).isel(stay=slice(0, 5))
    imputed = stdiff.load(run).impute(part, members=2, steps=2, split="all", progress=False)
    assert imputed.sizes["stay"] == 5 and imputed.sizes["member"] == 2


def test_api_refusals_name_the_key(trained_csdi) -> None:
    store, run = trained_csdi
    model = stdiff.load(run)
    with pytest.raises(ValueError, match="members must be at least 1"):
        model.impute(store, members=0)
    with pytest.raises(ValueError, match="unknown key"):
        model.impute(store, member=3)
    with pytest.raises(ValueError, match="cannot forecast"):
        model.forecast(store, init="latest")
    raw = xr.Dataset({"values": (("stay", "time"), np.zeros((2, 3)))})
    with pytest.raises(ValueError, match="canonical form"):
        model.impute(raw)
    with pytest.raises(ValueError, match="checkpoint not found"):
        stdiff.load(Path(run) / "missing")


def test_train_from_a_mapping_and_a_path(tmp_path: Path, stay_store, csdi_job) -> None:
    job = csdi_job(tmp_path / "a", stay_store, {"channels": 8, "layers": 1},
                   loop={"steps": 4, "batch_size": 8, "checkpoint_every": 4, "progress": False})  # fmt: skip
    model = stdiff.train(job, overrides={"loop.steps": 2, "loop.checkpoint_every": 2})
    assert model.task == "imputation" and model.config.loop.steps == 2
    assert (tmp_path / "a/checkpoints/step_000000002").is_dir()
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({**job, "out": str(tmp_path / "b")}))
    again = stdiff.train(
        tmp_path / "job.yaml", overrides={"loop.steps": 2, "loop.checkpoint_every": 2}
    )
    assert again.path == tmp_path / "b"
    with pytest.raises(ValueError, match="unknown key"):
        stdiff.train(job, overrides={"loop.stepz": 2})


def test_reconstruct_and_generate(image_model) -> None:
    run, store = image_model
    model = stdiff.load(run)
    rec = model.reconstruct(store, task="inpaint", steps=4, members=2, max_images=3, resample=2,
                            jump_length=2, progress=False)  # fmt: skip
    assert rec.sizes["member"] == 2 and rec.sizes["image"] == 3
    assert np.isfinite(rec.attrs["stdiff_job"]["metrics"]["psnr"])
    gen = model.generate(n=4, labels=[1], steps=3, batch_size=4)
    assert gen["image"].shape == (4, 1, 16, 16) and set(gen["label"].values) == {1}
