"""The bad-input suite: what a careful user gets wrong, through the CLI as they run it.

Every case runs ``stdiff ...`` in-process through the console script's entry point
(``stdiff.cli.main``, the error boundary included) in a shared world of small stores and trained
runs, and asserts: exit code 2, exactly one line on stderr, that line naming the culprit (file,
key or flag), and no path added, removed or changed anywhere in the world. A few cases run the
real console script in a subprocess to prove the same from outside.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from stdiff.cli import main


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    """``stdiff ARGS`` through the entry point; (exit code, non-empty stderr lines)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.strip()]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its size and modification time."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, trained_csdi, image_model, weather_builders) -> dict[str, Path]:
    """Stores, trained runs and the user's own files that the cases point at."""
    root = tmp_path_factory.mktemp("world")
    stays, csdi = trained_csdi
    irun, images = image_model
    make_grid, weather_job = weather_builders
    grid = make_grid(root / "grid.zarr")
    (root / "wjob.yaml").write_text(yaml.safe_dump(weather_job(root / "wrun", grid)))
    assert main(["train", "--config", str(root / "wjob.yaml")]) == 0
    (root / "mine").mkdir()
    (root / "mine" / "thesis.txt").write_text("years of work\n")
    (root / "notes.txt").write_text("a user's file\n")
    (root / "empty.csv").write_text("")
    (root / "broken.tar.gz").write_text("not a tar archive")
    (root / "garbage.nc").write_bytes(b"\x00garbage" * 20)
    (root / "garbage.nii").write_bytes(b"\x01" * 64)
    (root / "emptydir").mkdir()
    (root / "words.csv").write_text("time,a\n2013-01-01,x\n2013-01-02,y\n")
    (root / "notime.csv").write_text("a,b\n1,2\n3,4\n")
    np.savez(root / "noimages.npz", something=np.zeros(3))
    np.savez(root / "vol3d.npz", images=np.zeros((4, 8, 8, 8), np.uint8))
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "bad.yaml").write_text("out: [unclosed\n")
    (root / "empty.yaml").write_text("")
    (root / "latin1.yaml").write_bytes("out: caf\xe9\n".encode("latin-1"))
    # Windows-1252 is read (spreadsheet exports); bytes it does not define are not text
    (root / "undecodable.csv").write_bytes(b"time,caf\x81\x8d\n2013-01-01,1\n")
    (root / "infinite.csv").write_text("time,a\n2013-01-01,1\n2013-01-02,inf\n")
    np.savez(root / "nanimages.npz", x=np.full((3, 4, 4), np.nan, np.float32), y=np.arange(3))
    (root / "corrupt.zarr").mkdir()
    (root / "corrupt.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": ')
    _zero_size_nifti(root / "zero.nii.gz")
    for name, rows in (("short", 5), ("onestep", 1)):  # series with the stays' features f0..f3
        _series_csv(root / f"{name}.csv", rows)
        assert main(["ingest", str(root / f"{name}.csv"), "--kind", "timeseries", "--out",
                     str(root / f"{name}.zarr"), "--no-progress"]) == 0  # fmt: skip
    _one_step_grid(root / "onestep.nc")
    _rows_of(grid, root / "grid5.zarr", 5)
    _one_step_grid(root / "huge.nc", 1e39)  # float64 beyond float32's range
    np.savez(root / "huge.npz", images=np.full((2, 4, 4), 1e39), labels=np.zeros(2, int))
    assert main(["ingest", str(root / "onestep.nc"), "--kind", "weather", "--out",
                 str(root / "onestep_grid.zarr"), "--no-progress"]) == 0  # fmt: skip
    job = yaml.safe_load((csdi / "job.yaml").read_text()) if (csdi / "job.yaml").exists() else None
    base = job or _csdi_job_yaml(csdi.parent / "job.yaml")
    base["out"] = str(root / "new_run")
    (root / "job.yaml").write_text(yaml.safe_dump(base))
    _damaged_checkpoints(root, csdi)
    return {"root": root, "stays": stays, "csdi": csdi, "images": images, "irun": irun,
            "grid": grid, "wrun": root / "wrun"}  # fmt: skip


def _series_csv(path: Path, rows: int) -> None:
    """A table of ``rows`` hourly steps of the four features the trained CSDI knows."""
    lines = ["time,f0,f1,f2,f3"] + [f"2013-01-01T{h:02d}:00,{h},1,2,3" for h in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def _rows_of(store: Path, path: Path, rows: int) -> None:
    """The first ``rows`` latitudes of a weather store: the same data on another grid."""
    from stdiff.datasets.store import open_store, write_store

    write_store(open_store(store).isel(lat=slice(0, rows)).load(), path, content_hash="rows")


def _one_step_grid(path: Path, value: float = 280.0) -> None:
    """A weather file of one time step (a single analysis someone wants to forecast from)."""
    xr.Dataset(
        {"air": (("time", "lat", "lon"), np.full((1, 3, 4), value), {"units": "K"})},
        coords={"time": [np.datetime64("2013-01-01T00")], "lat": [40.0, 45, 50],
                "lon": [0.0, 5, 10, 15]},
    ).to_netcdf(path)  # fmt: skip


def _zero_size_nifti(path: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((0, 4, 4), np.float32), np.eye(4)), str(path))


def _csdi_job_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _damaged_checkpoints(root: Path, csdi: Path) -> None:
    """Copies of the trained CSDI run, each damaged in one way a disk or a user can."""
    import shutil

    from safetensors.torch import load_file, save_file

    step = sorted((csdi / "checkpoints").glob("step_*"))[-1]
    weights = step / "weights.safetensors"

    def copy(name: str) -> Path:
        dst = root / name / "checkpoints" / step.name
        shutil.copytree(step, dst)
        return dst

    (copy("ck_truncated") / "weights.safetensors").write_bytes(weights.read_bytes()[:500])
    opt = copy("ck_badopt") / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[: len(opt.read_bytes()) // 2])
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if not k.startswith("ema.")},
              str(copy("ck_noema") / "weights.safetensors"), metadata=header)  # fmt: skip
    bad = dict(header, config=header["config"][:-5])
    save_file(tensors, str(copy("ck_badjson") / "weights.safetensors"), metadata=bad)
    shapes = {k: (v[..., :1].contiguous() if v.ndim > 1 else v) for k, v in tensors.items()}
    save_file(shapes, str(copy("ck_shapes") / "weights.safetensors"), metadata=header)
    (copy("ck_state") / "state.json").write_text('{"step": ')


# (id, argv with {placeholders}, what the one line must name)
# fmt: off
CASES: list[tuple[str, list[str], str]] = [
    # --- the command line itself
    ("unknown-command", ["frobnicate"], "frobnicate"),
    ("unknown-option", ["info", "--colour"], "--colour"),
    ("missing-option", ["impute", "--checkpoint", "{csdi}"], "--data"),
    ("int-flag-not-int", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out",
                          "{root}/o.zarr", "--steps", "ten"], "--steps"),
    # --- ingest
    ("ingest-missing", ["ingest", "{root}/nothere.nc", "--kind", "weather", "--out", "{root}/o.zarr"], "nothere.nc"),
    ("ingest-bad-kind", ["ingest", "{root}/garbage.nc", "--kind", "radar", "--out", "{root}/o.zarr"], "kind"),
    ("ingest-empty-csv", ["ingest", "{root}/empty.csv", "--kind", "timeseries", "--out", "{root}/o.zarr"], "empty.csv"),
    ("ingest-not-tar", ["ingest", "{root}/broken.tar.gz", "--kind", "timeseries", "--out", "{root}/o.zarr"], "broken.tar.gz"),
    ("ingest-garbage-nc", ["ingest", "{root}/garbage.nc", "--kind", "weather", "--out", "{root}/o.zarr"], "garbage.nc"),
    ("ingest-empty-dir-weather", ["ingest", "{root}/emptydir", "--kind", "weather", "--out", "{root}/o.zarr"], "emptydir"),
    ("ingest-empty-dir-images", ["ingest", "{root}/emptydir", "--kind", "images", "--out", "{root}/o.zarr"], "emptydir"),
    ("ingest-garbage-nifti", ["ingest", "{root}/garbage.nii", "--kind", "medical", "--out", "{root}/o.zarr"], "garbage.nii"),
    ("ingest-csv-as-medical", ["ingest", "{root}/words.csv", "--kind", "medical", "--out", "{root}/o.zarr"], "words.csv"),
    ("ingest-text-values", ["ingest", "{root}/words.csv", "--kind", "timeseries", "--out", "{root}/o.zarr"], "words.csv"),
    ("ingest-no-time-column", ["ingest", "{root}/notime.csv", "--kind", "timeseries", "--out", "{root}/o.zarr"], "time"),
    ("ingest-npz-no-images", ["ingest", "{root}/noimages.npz", "--kind", "images", "--out", "{root}/o.zarr"], "noimages.npz"),
    ("ingest-coarsen-0", ["ingest", "{grid}", "--kind", "weather", "--coarsen", "0", "--out", "{root}/o.zarr"], "coarsen"),
    ("ingest-period-format", ["ingest", "{grid}", "--kind", "weather", "--train-period", "2013", "--out", "{root}/o.zarr"], "--train-period"),
    ("ingest-fold-7", ["ingest", "{root}/broken.tar.gz", "--kind", "timeseries", "--fold", "7", "--out", "{root}/o.zarr"], "fold"),
    ("ingest-bad-layout", ["ingest", "{root}/notime.csv", "--kind", "timeseries", "--layout", "diagonal", "--out", "{root}/o.zarr"], "layout"),
    ("ingest-bad-axis", ["ingest", "{root}/garbage.nii", "--kind", "medical", "--axis", "oblique", "--out", "{root}/o.zarr"], "axis"),
    ("ingest-unknown-variable", ["ingest", "{grid}", "--kind", "weather", "--variables", "rain", "--out", "{root}/o.zarr"], "rain"),
    ("ingest-out-user-file", ["ingest", "{grid}", "--kind", "weather", "--out", "{root}/notes.txt"], "notes.txt"),
    ("ingest-out-user-folder", ["ingest", "{grid}", "--kind", "weather", "--out", "{root}/mine"], "mine"),
    ("ingest-npz-volumes", ["ingest", "{root}/vol3d.npz", "--kind", "images", "--labels-key", "none", "--out", "{root}/o.zarr"], "vol3d.npz"),
    ("ingest-zero-size-nifti", ["ingest", "{root}/zero.nii.gz", "--kind", "medical", "--out", "{root}/o.zarr"], "zero.nii.gz"),
    ("ingest-coarsen-not-divisor", ["ingest", "{grid}", "--kind", "weather", "--coarsen", "5", "--out", "{root}/o.zarr"], "--coarsen"),
    ("ingest-undecodable-csv", ["ingest", "{root}/undecodable.csv", "--kind", "timeseries", "--out", "{root}/o.zarr"], "undecodable.csv"),
    ("ingest-infinite-csv", ["ingest", "{root}/infinite.csv", "--kind", "timeseries", "--out", "{root}/o.zarr"], "infinite.csv"),
    ("ingest-nan-images", ["ingest", "{root}/nanimages.npz", "--kind", "images", "--out", "{root}/o.zarr"], "nanimages.npz"),
    ("ingest-weather-beyond-float32", ["ingest", "{root}/huge.nc", "--kind", "weather", "--out", "{root}/o.zarr"], "huge.nc"),
    ("ingest-images-beyond-float32", ["ingest", "{root}/huge.npz", "--kind", "images", "--out", "{root}/o.zarr"], "huge.npz"),
    ("ingest-corrupt-zarr", ["ingest", "{root}/corrupt.zarr", "--kind", "weather", "--out", "{root}/o.zarr"], "corrupt.zarr"),
    ("ingest-out-is-source", ["ingest", "{grid}", "--kind", "weather", "--out", "{grid}"], "--out"),
    ("ingest-out-other-ingest", ["ingest", "{grid}", "--kind", "weather", "--out", "{stays}"], "--overwrite"),
    ("ingest-out-job-output", ["ingest", "{grid}", "--kind", "weather", "--out", "{root}/wrun"], "wrun"),
    ("ingest-out-parent-is-file", ["ingest", "{grid}", "--kind", "weather", "--out", "{root}/notes.txt/o.zarr"], "notes.txt"),
    # --- train: configs
    ("train-config-missing", ["train", "--config", "{root}/nothere.yaml"], "nothere.yaml"),
    ("train-config-is-dir", ["train", "--config", "{root}/emptydir"], "emptydir"),
    ("train-config-bad-yaml", ["train", "--config", "{root}/bad.yaml"], "bad.yaml"),
    ("train-config-list", ["train", "--config", "{root}/list.yaml"], "list.yaml"),
    ("train-config-empty", ["train", "--config", "{root}/empty.yaml"], "empty.yaml"),
    ("train-config-latin1", ["train", "--config", "{root}/latin1.yaml"], "latin1.yaml"),
    ("train-cuda-absent", ["train", "--config", "{root}/job.yaml", "--set", "device=cuda"], "cuda"),
    ("train-store-corrupt", ["train", "--config", "{root}/job.yaml", "--set", "data.store={root}/corrupt.zarr"], "corrupt.zarr"),
    ("train-unknown-key", ["train", "--config", "{root}/job.yaml", "--set", "colour=red"], "colour"),
    ("train-unknown-nested-key", ["train", "--config", "{root}/job.yaml", "--set", "loop.stepz=3"], "stepz"),
    ("train-batch-0", ["train", "--config", "{root}/job.yaml", "--set", "loop.batch_size=0"], "batch_size"),
    ("train-batch-above-split", ["train", "--config", "{root}/job.yaml", "--set", "loop.batch_size=100000"], "batch_size"),
    ("train-checkpoint-every-0", ["train", "--config", "{root}/job.yaml", "--set", "loop.checkpoint_every=0"], "checkpoint_every"),
    ("train-steps-negative", ["train", "--config", "{root}/job.yaml", "--set", "loop.steps=-5"], "steps"),
    ("train-log-every-negative", ["train", "--config", "{root}/job.yaml", "--set", "loop.log_every=-1"], "log_every"),
    ("train-val-every-negative", ["train", "--config", "{root}/job.yaml", "--set", "loop.val_every=-2"], "val_every"),
    ("train-lr-negative", ["train", "--config", "{root}/job.yaml", "--set", "optim.lr=-0.1"], "lr"),
    ("train-lr-nan", ["train", "--config", "{root}/job.yaml", "--set", "optim.lr=.nan"], "lr"),
    ("train-lr-string", ["train", "--config", "{root}/job.yaml", "--set", "optim.lr=fast"], "lr"),
    ("train-ema-above-1", ["train", "--config", "{root}/job.yaml", "--set", "loop.ema_decay=1.5"], "ema_decay"),
    ("train-dropout-1", ["train", "--config", "{root}/job.yaml", "--set", "loop.cfg_dropout=1"], "cfg_dropout"),
    ("train-betas", ["train", "--config", "{root}/job.yaml", "--set", "optim.betas=[0.9]"], "betas"),
    ("train-grad-accum-0", ["train", "--config", "{root}/job.yaml", "--set", "optim.grad_accum=0"], "grad_accum"),
    ("train-unknown-net", ["train", "--config", "{root}/job.yaml", "--set", "model.net=resnet"], "resnet"),
    ("train-net-channels-0", ["train", "--config", "{root}/job.yaml", "--set", "model.params.channels=0"], "model"),
    ("train-net-layers-negative", ["train", "--config", "{root}/job.yaml", "--set", "model.params.layers=-1"], "model"),
    ("train-net-heads-indivisible", ["train", "--config", "{root}/job.yaml", "--set", "model.params.heads=5"], "model"),
    ("train-net-unknown-param", ["train", "--config", "{root}/job.yaml", "--set", "model.params.wings=2"], "wings"),
    ("train-net-features-wrong", ["train", "--config", "{root}/job.yaml", "--set", "model.params.num_features=9"], "model"),
    ("train-bad-prediction", ["train", "--config", "{root}/job.yaml", "--set", "model.prediction=score"], "prediction"),
    ("train-bad-schedule", ["train", "--config", "{root}/job.yaml", "--set", "schedule.name=zigzag"], "zigzag"),
    ("train-bad-device", ["train", "--config", "{root}/job.yaml", "--set", "device=tpu"], "device"),
    ("train-seed-string", ["train", "--config", "{root}/job.yaml", "--set", "seed=lucky"], "seed"),
    ("train-store-missing", ["train", "--config", "{root}/job.yaml", "--set", "data.store={root}/nothere.zarr"], "nothere.zarr"),
    ("train-store-is-csv", ["train", "--config", "{root}/job.yaml", "--set", "data.store={root}/words.csv"], "words.csv"),
    ("train-store-wrong-task", ["train", "--config", "{root}/job.yaml", "--set", "data.store={images}"], "blobs.zarr"),
    ("train-bad-task", ["train", "--config", "{root}/job.yaml", "--set", "data.task=dance"], "task"),
    ("train-out-is-file", ["train", "--config", "{root}/job.yaml", "--set", "out={root}/notes.txt"], "notes.txt"),
    ("train-out-user-folder", ["train", "--config", "{root}/job.yaml", "--set", "out={root}/mine"], "mine"),
    ("train-out-existing-run", ["train", "--config", "{root}/job.yaml", "--set", "out={csdi}"], "--resume"),
    ("train-set-no-equals", ["train", "--config", "{root}/job.yaml", "--set", "loop.steps"], "--set"),
    ("train-set-bad-yaml", ["train", "--config", "{root}/job.yaml", "--set", "loop.steps=[1,"], "--set"),
    ("train-weather-one-step", ["train", "--config", "{root}/wjob.yaml", "--set", "data.store={root}/onestep_grid.zarr", "--set", "out={root}/new_wrun"], "onestep_grid.zarr"),
    ("train-resume-missing", ["train", "--config", "{root}/job.yaml", "--resume", "{root}/nothere"], "nothere"),
    ("train-resume-empty", ["train", "--config", "{root}/job.yaml", "--resume", "{root}/emptydir"], "emptydir"),
    ("train-resume-truncated-optimizer", ["train", "--config", "{root}/job.yaml", "--resume", "{root}/ck_badopt"], "ck_badopt"),
    ("train-resume-damaged-state", ["train", "--config", "{root}/job.yaml", "--resume", "{root}/ck_state"], "ck_state"),
    ("train-resume-wrong-shapes", ["train", "--config", "{root}/job.yaml", "--resume", "{root}/ck_shapes"], "ck_shapes"),
    ("train-resume-no-ema", ["train", "--config", "{root}/job.yaml", "--resume", "{root}/ck_noema"], "ck_noema"),
    # --- impute
    ("impute-checkpoint-missing", ["impute", "--checkpoint", "{root}/nothere", "--data", "{stays}", "--out", "{root}/o.zarr"], "nothere"),
    ("impute-checkpoint-empty-dir", ["impute", "--checkpoint", "{root}/emptydir", "--data", "{stays}", "--out", "{root}/o.zarr"], "emptydir"),
    ("impute-checkpoint-truncated", ["impute", "--checkpoint", "{root}/ck_truncated", "--data", "{stays}", "--out", "{root}/o.zarr"], "ck_truncated"),
    ("impute-checkpoint-bad-json", ["impute", "--checkpoint", "{root}/ck_badjson", "--data", "{stays}", "--out", "{root}/o.zarr"], "ck_badjson"),
    ("impute-checkpoint-shapes", ["impute", "--checkpoint", "{root}/ck_shapes", "--data", "{stays}", "--out", "{root}/o.zarr"], "ck_shapes"),
    ("impute-checkpoint-no-ema", ["impute", "--checkpoint", "{root}/ck_noema", "--data", "{stays}", "--out", "{root}/o.zarr"], "ck_noema"),
    ("impute-checkpoint-is-file", ["impute", "--checkpoint", "{root}/notes.txt", "--data", "{stays}", "--out", "{root}/o.zarr"], "notes.txt"),
    ("impute-image-model", ["impute", "--checkpoint", "{irun}", "--data", "{stays}", "--out", "{root}/o.zarr"], "imputation"),
    ("impute-data-missing", ["impute", "--checkpoint", "{csdi}", "--data", "{root}/nothere.zarr", "--out", "{root}/o.zarr"], "nothere.zarr"),
    ("impute-data-weather", ["impute", "--checkpoint", "{csdi}", "--data", "{grid}", "--out", "{root}/o.zarr"], "grid.zarr"),
    ("impute-data-images", ["impute", "--checkpoint", "{csdi}", "--data", "{images}", "--out", "{root}/o.zarr"], "blobs.zarr"),
    ("impute-data-csv", ["impute", "--checkpoint", "{csdi}", "--data", "{root}/words.csv", "--out", "{root}/o.zarr"], "words.csv"),
    ("impute-out-is-data", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{stays}"], "--out"),
    ("impute-out-inside-data", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{stays}/o.zarr"], "--out"),
    ("impute-out-contains-data", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{stays}/.."], "--out"),
    ("impute-out-is-checkpoint", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{csdi}"], "--out"),
    ("impute-out-user-folder", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/mine"], "mine"),
    ("impute-out-user-file", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/notes.txt"], "notes.txt"),
    ("impute-out-ingest-store", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{grid}"], "grid.zarr"),
    ("impute-out-parent-file", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/notes.txt/o.zarr"], "notes.txt"),
    ("impute-steps-0", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--steps", "0"], "steps"),
    ("impute-members-0", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--members", "0"], "members"),
    ("impute-members-billion", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--members", "1000000000"], "--members"),
    ("impute-bad-sampler", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--sampler", "magic"], "magic"),
    ("impute-eval-ratio-2", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--set", "eval_ratio=2"], "eval_ratio"),
    ("impute-bad-split", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--set", "split=later"], "split"),
    ("impute-chunks-out-of-range", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--set", "chunks=[99]"], "chunks"),
    ("impute-window-longer-than-series", ["impute", "--checkpoint", "{csdi}", "--data", "{root}/short.zarr", "--out", "{root}/o.zarr", "--set", "window=8", "--set", "split=all"], "window=5"),
    ("impute-series-of-one-step", ["impute", "--checkpoint", "{csdi}", "--data", "{root}/onestep.zarr", "--out", "{root}/o.zarr", "--set", "window=2", "--set", "split=all"], "onestep.zarr"),
    ("impute-window-1", ["impute", "--checkpoint", "{csdi}", "--data", "{root}/short.zarr", "--out", "{root}/o.zarr", "--set", "window=1"], "window"),
    ("impute-config-missing", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--config", "{root}/nothere.yaml"], "nothere.yaml"),
    ("impute-sampler-option", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--set", "options.colour=1"], "colour"),
    # --- forecast
    ("forecast-data-stays", ["forecast", "--checkpoint", "{wrun}", "--data", "{stays}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00"], "stays.zarr"),
    ("forecast-csdi-model", ["forecast", "--checkpoint", "{csdi}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00"], "forecast"),
    ("forecast-init-outside", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2020-01-01T00"], "2020-01-01"),
    ("forecast-init-garbage", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "yesterday"], "yesterday"),
    ("forecast-lead-garbage", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00", "--lead", "soon"], "lead"),
    ("forecast-members-0", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00", "--members", "0"], "members"),
    ("forecast-members-billion", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00", "--members", "1000000000"], "--members"),
    ("forecast-lead-zero", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00", "--lead", "0h"], "lead"),
    ("forecast-no-history", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-01-01T00"], "2013-01-01"),
    ("forecast-data-corrupt", ["forecast", "--checkpoint", "{wrun}", "--data", "{root}/corrupt.zarr", "--out", "{root}/f.zarr", "--init", "2013-02-05T00"], "corrupt.zarr"),
    ("forecast-other-grid", ["forecast", "--checkpoint", "{wrun}", "--data", "{root}/grid5.zarr", "--out", "{root}/f.zarr", "--init", "2013-02-05T00"], "grid5.zarr"),
    ("forecast-bad-layout", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00", "--layout", "grib"], "layout"),
    ("forecast-bad-sampler", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00", "--set", "sampler=magic"], "magic"),
    ("forecast-sigmas", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/f.zarr", "--init", "2013-02-05T00", "--set", "sigma_min=5", "--set", "sigma_max=1"], "sigma"),
    ("forecast-out-is-data", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{grid}", "--init", "2013-02-05T00"], "--out"),
    ("forecast-out-user-folder", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{root}/mine", "--init", "2013-02-05T00"], "mine"),
    ("forecast-out-imputation", ["forecast", "--checkpoint", "{wrun}", "--data", "{grid}", "--out", "{stays}", "--init", "2013-02-05T00"], "stays.zarr"),
    # --- reconstruct
    ("reconstruct-bad-task", ["reconstruct", "--checkpoint", "{irun}", "--data", "{images}", "--out", "{root}/r.zarr", "--task", "colourise"], "colourise"),
    ("reconstruct-bad-method", ["reconstruct", "--checkpoint", "{irun}", "--data", "{images}", "--out", "{root}/r.zarr", "--task", "inpaint", "--method", "magic"], "magic"),
    ("reconstruct-data-stays", ["reconstruct", "--checkpoint", "{irun}", "--data", "{stays}", "--out", "{root}/r.zarr", "--task", "inpaint"], "stays.zarr"),
    ("reconstruct-csdi-model", ["reconstruct", "--checkpoint", "{csdi}", "--data", "{images}", "--out", "{root}/r.zarr", "--task", "inpaint"], "images"),
    ("reconstruct-steps-0", ["reconstruct", "--checkpoint", "{irun}", "--data", "{images}", "--out", "{root}/r.zarr", "--task", "inpaint", "--steps", "0"], "steps"),
    ("reconstruct-members-0", ["reconstruct", "--checkpoint", "{irun}", "--data", "{images}", "--out", "{root}/r.zarr", "--task", "inpaint", "--members", "0"], "members"),
    ("reconstruct-out-user-file", ["reconstruct", "--checkpoint", "{irun}", "--data", "{images}", "--out", "{root}/notes.txt", "--task", "inpaint"], "notes.txt"),
    ("reconstruct-out-is-data", ["reconstruct", "--checkpoint", "{irun}", "--data", "{images}", "--out", "{images}", "--task", "inpaint"], "--out"),
    # --- generate
    ("generate-csdi-model", ["generate", "--checkpoint", "{csdi}", "--out", "{root}/g.zarr"], "csdi"),
    ("generate-n-0", ["generate", "--checkpoint", "{irun}", "--out", "{root}/g.zarr", "--n", "0"], "n"),
    ("generate-guidance-negative", ["generate", "--checkpoint", "{irun}", "--out", "{root}/g.zarr", "--guidance", "-1"], "guidance"),
    ("generate-label-unknown", ["generate", "--checkpoint", "{irun}", "--out", "{root}/g.zarr", "--label", "99"], "99"),
    ("generate-out-user-folder", ["generate", "--checkpoint", "{irun}", "--out", "{root}/mine"], "mine"),
    ("generate-classifier-missing", ["generate", "--checkpoint", "{irun}", "--out", "{root}/g.zarr", "--classifier", "{root}/nothere"], "nothere"),
    # --- score
    ("score-forecast-missing", ["score", "--forecast", "a={root}/nothere.zarr", "--data", "{grid}", "--out", "{root}/s"], "nothere.zarr"),
    ("score-forecast-not-forecast", ["score", "--forecast", "a={stays}", "--data", "{grid}", "--out", "{root}/s"], "stays.zarr"),
    ("score-data-missing", ["score", "--forecast", "a={stays}", "--data", "{root}/nothere.zarr", "--out", "{root}/s"], "nothere.zarr"),
    ("score-pair-no-name", ["score", "--forecast", "{stays}", "--data", "{grid}", "--out", "{root}/s"], "--forecast"),
    ("score-out-is-file", ["score", "--forecast", "a={stays}", "--data", "{grid}", "--out", "{root}/notes.txt"], "notes.txt"),
    ("score-out-user-folder", ["score", "--forecast", "a={stays}", "--data", "{grid}", "--out", "{root}/mine"], "mine"),
    ("score-out-is-data", ["score", "--forecast", "a={stays}", "--data", "{grid}", "--out", "{grid}"], "--out"),
    ("score-duplicate-name", ["score", "--forecast", "a={stays}", "--forecast", "a={grid}", "--data", "{grid}", "--out", "{root}/s"], "given twice"),
    ("score-baseline-name", ["score", "--forecast", "persistence={stays}", "--data", "{grid}", "--out", "{root}/s"], "persistence"),
    ("score-climatology-period", ["score", "--forecast", "a={stays}", "--data", "{grid}", "--out", "{root}/s", "--climatology-period", "2013"], "--climatology-period"),
    # --- calibrate
    ("calibrate-missing", ["calibrate", "--imputation", "{root}/nothere.zarr"], "nothere.zarr"),
    ("calibrate-not-imputation", ["calibrate", "--imputation", "{grid}"], "grid.zarr"),
    ("calibrate-csv", ["calibrate", "--imputation", "{root}/words.csv"], "words.csv"),
    ("calibrate-target", ["calibrate", "--imputation", "{grid}", "--target", "sharpness"], "--target"),
    ("calibrate-out-is-folder", ["calibrate", "--imputation", "{grid}", "--out", "{root}/emptydir"], "emptydir"),
    ("impute-spread-negative", ["impute", "--checkpoint", "{csdi}", "--data", "{stays}", "--out", "{root}/o.zarr", "--set", "spread=-1"], "spread"),
    # --- the rest
    ("distill-config-missing", ["distill", "--config", "{root}/nothere.yaml"], "nothere.yaml"),
    ("serve-config-missing", ["serve", "--config", "{root}/nothere.yaml", "--check"], "nothere.yaml"),
    ("serve-config-bad-yaml", ["serve", "--config", "{root}/bad.yaml", "--check"], "bad.yaml"),
    ("demo-config-missing", ["demo", "--config", "{root}/nothere.yaml", "--out", "{root}/d"], "nothere.yaml"),
    ("demo-bad-key", ["demo", "--out", "{root}/d", "--set", "train.stepz=3"], "stepz"),
    ("quickstart-steps-0", ["quickstart", "--out", "{root}/q", "--steps", "0"], "--steps"),
]
# fmt: on


@pytest.mark.slow
@pytest.mark.parametrize("case,argv,culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(world, capsys, case, argv, culprit) -> None:
    args = [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]
    before = snapshot(world["root"])
    code, lines = run_cli(capsys, *args)
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("stdiff: error: ") and "Traceback" not in lines[0], lines
    assert culprit.format(**{k: str(v) for k, v in world.items()}) in lines[0], lines[0]
    assert snapshot(world["root"]) == before, f"{case} changed the world"


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)


def test_console_script_in_a_subprocess(tmp_path: Path) -> None:
    """The installed entry point: one line, exit 2, for a bad flag and a missing file; an
    internal error is one line naming the traceback file, exit 1."""
    exe = [sys.executable, "-m", "stdiff"]
    env = {**os.environ, "STDIFF_LOG_DIR": str(tmp_path / "logs")}
    res = subprocess.run([*exe, "impute", "--checkpoint", "x"], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "--data" in res.stderr
    res = subprocess.run([*exe, "score", "--forecast", "a=nothere.zarr", "--data", "nothere.zarr",
                          "--out", str(tmp_path / "s")], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert not (tmp_path / "s").exists()


def test_numbers_beyond_float32_are_one_line_in_a_subprocess(tmp_path: Path) -> None:
    """Casting them to float32 made numpy print an overflow warning (two more stderr lines)
    before the refusal; pytest's warning capture hides that in-process, a subprocess does not."""
    _one_step_grid(tmp_path / "huge.nc", 1e39)
    np.savez(tmp_path / "huge.npz", images=np.full((2, 4, 4), 1e39), labels=np.zeros(2, int))
    for name, kind in (("huge.nc", "weather"), ("huge.npz", "images")):
        res = subprocess.run([sys.executable, "-m", "stdiff", "ingest", str(tmp_path / name),
                              "--kind", kind, "--out", str(tmp_path / "o.zarr")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
        assert name in res.stderr and "float32" in res.stderr and not (tmp_path / "o.zarr").exists()


def test_internal_error_writes_its_traceback(tmp_path: Path, capsys, monkeypatch) -> None:
    from stdiff import boundary

    monkeypatch.setenv("STDIFF_LOG_DIR", str(tmp_path))

    def boom():
        raise KeyError("surprise")

    code = boundary.run(boom)
    line = capsys.readouterr().err.strip()
    assert code == 1 and line.count("\n") == 0 and "bug in stdiff" in line
    (log,) = tmp_path.glob("crash-*.log")
    assert "KeyError" in log.read_text() and str(log) in line
    assert boundary.run(boom, debug=True) == 1
    assert "Traceback" in capsys.readouterr().err


def test_os_errors_name_the_file_and_what_to_do() -> None:
    import errno

    from stdiff.boundary import classify

    for err, words in ((errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                       (errno.EACCES, "permission")):  # fmt: skip
        code, line = classify(OSError(err, os.strerror(err), "/data/out.zarr"))
        assert code == 2 and "/data/out.zarr" in line and words in line


def test_json_is_valid_in_written_metrics(world) -> None:
    """The trained weather run wrote one JSON record per line (resume reads them back)."""
    for ln in (world["wrun"] / "metrics.jsonl").read_text().splitlines():
        json.loads(ln)


@pytest.mark.slow
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_errors_are_one_line_and_leave_nothing(world, tmp_path, capsys, monkeypatch, err):
    """A full, read-only or forbidden disk (patched: the suite runs as root) during ingest,
    imputation and training: exit 2, one line naming the file and what to do, no output, no
    temporary folder."""
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err), str(tmp_path / "out"))

    monkeypatch.setattr(xr.Dataset, "to_zarr", refuse)
    monkeypatch.setattr(safetensors.torch, "save_file", refuse)
    monkeypatch.setattr("stdiff.pipelines.engine.checkpoint.save_file", refuse)
    job = yaml.safe_load((world["root"] / "job.yaml").read_text())
    job.update(out=str(tmp_path / "run"), loop={**job["loop"], "steps": 2, "checkpoint_every": 1})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    commands = [
        ["ingest", world["grid"], "--kind", "weather", "--out", tmp_path / "g.zarr"],
        ["impute", "--checkpoint", world["csdi"], "--data", world["stays"], "--out",
         tmp_path / "i.zarr", "--members", "2", "--steps", "2", "--set", "max_stays=2"],
        ["train", "--config", tmp_path / "job.yaml"],
    ]  # fmt: skip
    for argv in commands:
        code, lines = run_cli(capsys, *argv)
        assert code == 2 and len(lines) == 1, (argv[0], lines)
        assert str(tmp_path / "out") in lines[0] and os.strerror(err) in lines[0], lines
        assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"], argv[0]
