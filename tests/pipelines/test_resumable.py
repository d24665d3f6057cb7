"""Resumable and concurrent inference outputs (``datasets.regions``): a run killed midway and
run again computes only the missing chunks and ends identical to an uninterrupted run; two runs
writing different chunks of one store at once do not corrupt it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from stdiff.pipelines.jobs.impute import ImputeConfig, run_imputation

STDIFF = str(Path(sys.executable).parent / "stdiff")


def _cfg(run: Path, store: Path, out: Path, **kw) -> ImputeConfig:
    base = {"checkpoint": str(run), "data": str(store), "out": str(out), "sampler": "ddpm",
            "steps": 20, "members": 4, "batch_size": 4, "split": "all", "max_stays": 16,
            "eval_ratio": 0.2, "device": "cpu"}  # fmt: skip
    return ImputeConfig(**{**base, **kw})


def _cli(cfg: ImputeConfig, extra: list[str] = ()) -> list[str]:
    sets = [f"{k}={v}" for k, v in (("sampler", cfg.sampler), ("batch_size", cfg.batch_size),
            ("split", "all"), ("max_stays", cfg.max_stays), ("eval_ratio", cfg.eval_ratio),
            ("device", "cpu"))]  # fmt: skip
    args = [STDIFF, "impute", "--checkpoint", cfg.checkpoint, "--data", cfg.data, "--out", cfg.out,
            "--steps", str(cfg.steps), "--members", str(cfg.members)]  # fmt: skip
    for s in [*sets, *extra]:
        args += ["--set", s]
    return args


def _samples(path: Path) -> np.ndarray:
    return xr.open_zarr(path, consolidated=False)["samples"].values


def test_killed_run_resumes_the_missing_chunks(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    ref = run_imputation(_cfg(run, store, tmp_path / "ref.zarr"), progress=False)
    assert ref["complete"] and ref["computed"] == [0, 1, 2, 3]
    out = tmp_path / "out.zarr"
    cfg = _cfg(run, store, out, steps=50, members=48)  # slow chunks: the kill lands midway
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(_cli(cfg), env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    done = Path(f"{out}.partial/done")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if done.is_dir() and len(list(done.iterdir())) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(int(p.name) for p in done.iterdir())
    log.close()
    assert 1 <= len(finished) < 4, (tmp_path / "killed.log").read_text()[-2000:]
    assert not out.exists()  # killed midway, nothing published
    again = run_imputation(cfg, progress=False)
    assert again["complete"] and again["computed"] == [c for c in range(4) if c not in finished]
    full = run_imputation(_cfg(run, store, tmp_path / "full.zarr", steps=50, members=48),
                          progress=False)  # fmt: skip
    np.testing.assert_array_equal(_samples(out), _samples(tmp_path / "full.zarr"))
    # equal samples; the summed score may differ in the last bit (SIMD sums depend on alignment)
    assert again["metrics"]["crps"] == pytest.approx(full["metrics"]["crps"], rel=1e-12, abs=0)
    assert not Path(f"{out}.partial").exists() and not Path(f"{out}.partial.lock").exists()


def test_two_concurrent_runs_fill_one_store(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    out = tmp_path / "shared.zarr"
    cfg = _cfg(run, store, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(_cli(cfg, [f"chunks={chunks}"]), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for chunks in ("[0,2]", "[1,3]")]  # fmt: skip
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    assert out.is_dir() and not Path(f"{out}.partial").exists()
    ref = run_imputation(_cfg(run, store, tmp_path / "ref.zarr"), progress=False)
    np.testing.assert_array_equal(_samples(out), _samples(tmp_path / "ref.zarr"))
    got = xr.open_zarr(out, consolidated=False)
    assert got.attrs["kind"] == "imputation" and ref["metrics"]["crps"] > 0


def test_changed_settings_start_over(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    out = tmp_path / "o.zarr"
    part = run_imputation(_cfg(run, store, out, chunks=[0]), progress=False)
    assert not part["complete"] and part["pending"] == [1, 2, 3] and not out.exists()
    other = run_imputation(_cfg(run, store, out, members=2), progress=False)  # new fingerprint
    assert other["computed"] == [0, 1, 2, 3] and other["complete"]
    assert _samples(out).shape[1] == 2


def test_identical_rerun_is_a_no_op_with_the_same_metrics(tmp_path: Path, trained_csdi) -> None:
    store, run = trained_csdi
    cfg = _cfg(run, store, tmp_path / "o.zarr", steps=5, members=2)
    first = run_imputation(cfg, progress=False)
    stamp = (tmp_path / "o.zarr" / "zarr.json").stat().st_mtime_ns
    again = run_imputation(cfg, progress=False)
    assert again["computed"] == [] and again["complete"] and again["unchanged"]
    assert again["metrics"]["crps"] == first["metrics"]["crps"]
    assert (tmp_path / "o.zarr" / "zarr.json").stat().st_mtime_ns == stamp


def test_a_retrained_checkpoint_at_the_same_path_is_not_resumed(tmp_path, stay_store, csdi_job):
    """The partial output of a model is not finished with another model trained into the same
    folder: the fingerprint holds the weights' identity, not only their path."""
    import yaml

    from stdiff.cli import main

    def train(seed: int) -> None:
        cfg = csdi_job(tmp_path / "run", stay_store, {"channels": 8, "layers": 1}, seed=seed,
                       loop={"steps": 2, "batch_size": 8, "checkpoint_every": 2,
                             "progress": False})  # fmt: skip
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", "--config", str(tmp_path / "job.yaml"), "--overwrite"]) == 0

    train(0)
    cfg = ImputeConfig(checkpoint=str(tmp_path / "run"), data=str(stay_store),
                       out=str(tmp_path / "o.zarr"), steps=2, members=2, batch_size=8,
                       split="all", device="cpu")  # fmt: skip
    part = run_imputation(replace(cfg, chunks=[0]), progress=False)
    assert part["computed"] == [0] and part["pending"]
    train(1)  # another model, same folder, same step
    again = run_imputation(cfg, progress=False)
    assert again["complete"] and again["computed"] == list(range(part["chunks"]))
