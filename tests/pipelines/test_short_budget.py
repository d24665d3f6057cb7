"""Short budgets degrade gracefully: the training data's range is kept in the checkpoint, an
under-trained model's predictions are clipped to it (samples never leave the data's range), and
the job warns in one line saying how much was clipped."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import yaml
from typer.testing import CliRunner

from stdiff.cli import app, main
from stdiff.pipelines.engine.checkpoint import latest_checkpoint, load_checkpoint


def _train(tmp_path: Path, stay_store: Path, csdi_job, steps: int) -> Path:
    cfg = csdi_job(tmp_path / "run", stay_store, {"channels": 16, "layers": 2},
                   optim={"lr": 3e-3, "warmup_steps": 5},
                   loop={"steps": steps, "batch_size": 16, "checkpoint_every": steps,
                         "progress": False})  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    return tmp_path / "run"


def _impute(run: Path, store: Path, out: Path, *extra: str) -> tuple[int, str]:
    """Through the console script's entry (the error boundary prints warnings as one line)."""
    args = ["impute", "--checkpoint", str(run), "--data", str(store), "--out", str(out),
            "--members", "3", "--steps", "8", "--set", "split=all", "--set", "max_stays=6", *extra]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
            code = main(args)
    return code, buf.getvalue()


def test_an_untrained_model_is_clipped_to_the_data_range_with_a_warning(
    tmp_path, stay_store, csdi_job
) -> None:
    run = _train(tmp_path, stay_store, csdi_job, steps=1)  # eps-prediction, one step: untrained
    _, _, meta = load_checkpoint(latest_checkpoint(run) / "weights.safetensors")
    r = meta["x0_range"]  # one range per feature, each covering that feature's training data
    lo, hi = np.asarray(r["lo"]), np.asarray(r["hi"])
    assert r["dim"] == -1 and lo.shape == hi.shape == (4,)
    ds = xr.open_zarr(stay_store, consolidated=False)
    z = ((ds["values"] - ds["values_mean"]) / ds["values_std"]).fillna(0.0)  # as trained on
    zmin, zmax = z.min(("stay", "time")).values, z.max(("stay", "time")).values
    assert (lo <= zmin).all() and (hi >= zmax).all() and (hi - lo < 1.5 * (zmax - zmin)).all()

    code, err = _impute(run, stay_store, tmp_path / "clipped.zarr")
    assert code == 0, err
    assert err.count("stdiff: warning:") == 1 and "were clipped" in err
    warning = next(ln for ln in err.splitlines() if "warning" in ln)
    assert str(run) in warning and "under-trained" in warning
    attrs = json.loads(xr.open_zarr(tmp_path / "clipped.zarr", consolidated=False).attrs["result"])
    assert attrs["x0_clipped"] > 0.01
    mean, std = ds["values_mean"].values, ds["values_std"].values
    samples = xr.open_zarr(tmp_path / "clipped.zarr", consolidated=False)["samples"].values
    normalised = (samples - mean) / std
    assert (normalised >= lo - 1e-4).all() and (normalised <= hi + 1e-4).all()

    code, err = _impute(run, stay_store, tmp_path / "raw.zarr", "--set", "clip_x0=false")
    assert code == 0 and "warning" not in err, err
    wild = (xr.open_zarr(tmp_path / "raw.zarr", consolidated=False)["samples"].values - mean) / std
    assert ((wild < lo) | (wild > hi)).any()  # what the clip prevents


def test_a_trained_model_is_not_warned_about(tmp_path, stay_store, csdi_job) -> None:
    # 300 steps: none of the final predictions leave the range (60 steps: 0.4-2.4 %)
    run = _train(tmp_path, stay_store, csdi_job, steps=300)
    code, err = _impute(run, stay_store, tmp_path / "ok.zarr")
    assert code == 0 and "warning" not in err, err
    result = json.loads(xr.open_zarr(tmp_path / "ok.zarr", consolidated=False).attrs["result"])
    assert result["x0_clipped"] < 1e-3 and result["x0_clipped_all_steps"] > 0  # large sigma
