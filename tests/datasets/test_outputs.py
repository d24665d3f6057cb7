"""Outputs never destroy what their job did not make: claims, stamps, identical reruns, the
kill between publishing and clean-up, stale temporaries of dead processes, folder locks and a
full disk at the first chunk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from stdiff.datasets.atomic import atomic_path, clean_stale
from stdiff.datasets.outputs import (
    FolderLock,
    check_budget,
    claim_folder,
    claim_store,
    made_by,
    stamp,
)
from stdiff.datasets.regions import RegionStore


def _template(n: int = 4) -> xr.Dataset:
    import dask.array as da

    return xr.Dataset({"x": (("row", "col"), da.zeros((n, 3), chunks=(1, 3)))})


def _run(out: Path, fingerprint: str = "fp", job: str = "impute", n: int = 4, **kw) -> RegionStore:
    """A whole job: open, write every pending chunk, publish."""
    store = RegionStore(out, fingerprint, n, job, **kw).open(_template(n))
    for c in store.pending():
        part = xr.Dataset({"x": (("row", "col"), np.full((1, 3), c, np.float64))})
        if not store.write(c, part, {"row": slice(c, c + 1)}):
            break
    assert store.finish()
    return store


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_store_refuses_what_the_job_did_not_make(tmp_path: Path) -> None:
    data = tmp_path / "in.zarr"
    xr.Dataset({"a": ("t", np.zeros(3))}).to_zarr(data, zarr_format=3, consolidated=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "f.txt").write_text("keep")
    (tmp_path / "file.txt").write_text("keep")
    for out, words in (
        (data, "is the input"), (data / "x.zarr", "inside the input"),
        (tmp_path, "contains the input"), (tmp_path / "mine", "not a stdiff impute output"),
        (tmp_path / "file.txt", "not a stdiff impute output"), (tmp_path / "file.txt" / "o.zarr", "is a file"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            claim_store(out, "impute", [data])
    claim_store(tmp_path / "new.zarr", "impute", [data])  # absent: fine
    _run(tmp_path / "o.zarr")
    assert made_by(tmp_path / "o.zarr", "impute") and not made_by(tmp_path / "o.zarr", "forecast")
    claim_store(tmp_path / "o.zarr", "impute", [data])  # an earlier output of the same job
    with pytest.raises(ValueError, match="not a stdiff forecast output"):
        claim_store(tmp_path / "o.zarr", "forecast", [data])
    assert (tmp_path / "mine" / "f.txt").read_text() == "keep"


def test_identical_rerun_is_a_no_op_and_other_settings_need_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    _run(out)
    before = (out / "zarr.json").stat().st_mtime_ns
    again = _run(out)  # same fingerprint: nothing computed, nothing replaced
    assert again.is_published and (out / "zarr.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="--overwrite"):
        RegionStore(out, "other", 4, "impute").open(_template())
    _run(out, "other", overwrite=True)
    assert (
        json.loads((out / "zarr.json").read_text())["attributes"]["stdiff_fingerprint"] == "other"
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_run_overtaken_by_an_identical_one_stops_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    slow = RegionStore(out, "fp", 4, "impute").open(_template())
    part = xr.Dataset({"x": (("row", "col"), np.zeros((1, 3)))})
    assert slow.write(0, part, {"row": slice(0, 1)})
    _run(out)  # a second identical run finishes the rest and publishes
    assert not slow.write(1, part, {"row": slice(1, 2)})  # its .partial is gone: it stops
    assert slow.finish() and out.is_dir() and not Path(f"{out}.partial").exists()


def test_kill_between_publish_and_cleanup_is_recovered(tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    _run(out)
    work = Path(f"{out}.partial")  # what a kill right after the rename leaves
    (work / "done").mkdir(parents=True)
    (work / "done" / "00000000").write_text("done\n")
    (work / "job.json").write_text(json.dumps({"fingerprint": "fp", "chunks": 4}))
    _run(out)
    assert not work.exists() and out.is_dir()


def test_failure_at_the_first_chunk_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "o.zarr"
    store = RegionStore(out, "fp", 4, "impute").open(_template())
    real = xr.Dataset.to_zarr

    def full_disk(self, *a, **k):
        if k.get("region") is not None:
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
        return real(self, *a, **k)

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_disk)
    part = xr.Dataset({"x": (("row", "col"), np.zeros((1, 3)))})
    with pytest.raises(OSError):
        store.write(0, part, {"row": slice(0, 1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".step_000000100.tmp-{dead}-0123abcd"
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"x" * 100)
    live = tmp_path / f".o.zarr.tmp-{alive}-0123abcd"
    live.mkdir()
    legacy_old = tmp_path / ".o.zarr.old-89abcdef"
    legacy_old.mkdir()
    os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
    legacy_new = tmp_path / ".o.zarr.tmp-fedcba98"
    legacy_new.mkdir()
    user = tmp_path / ".hidden.tmp-notours"
    user.mkdir()
    with atomic_path(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{}")
    assert not stale.exists() and not legacy_old.exists()
    assert live.exists() and legacy_new.exists() and user.exists()
    assert clean_stale(tmp_path) == []


def test_folder_lock_names_the_holder_and_waits(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = (
        "import sys, time\n"
        "from stdiff.datasets.outputs import FolderLock\n"
        f"held = FolderLock({str(run)!r}, 'training run').acquire()\n"
        "print('held', flush=True); time.sleep(float(sys.argv[1]))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, "4"], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=f"in use by process {p.pid}"):
        FolderLock(run, "training run").acquire()
    t0 = time.perf_counter()
    lock = FolderLock(run, "training run").acquire(wait=True)
    assert time.perf_counter() - t0 > 0.5 and p.wait() == 0
    lock.release()
    FolderLock(run, "training run").acquire().release()  # a dead holder leaves it free


def test_claim_folder(tmp_path: Path) -> None:
    assert not claim_folder(tmp_path / "new", ("metrics.jsonl",), "training run", "out", False)
    (tmp_path / "empty").mkdir()
    assert not claim_folder(tmp_path / "empty", ("metrics.jsonl",), "training run", "out", False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="--resume"):
        claim_folder(tmp_path / "run", ("metrics.jsonl",), "training run", "out", False)
    assert claim_folder(tmp_path / "run", ("metrics.jsonl",), "training run", "out", True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="other files"):
        claim_folder(tmp_path / "mine", ("metrics.jsonl",), "training run", "out", True)


def test_budget_refuses_outputs_larger_than_the_disk_or_memory(tmp_path: Path) -> None:
    check_budget(tmp_path / "o.zarr", 1e6, 1e6, "--members")
    with pytest.raises(ValueError, match="--members: the output would need"):
        check_budget(tmp_path / "o.zarr", 1e18, 1e6, "--members")
    with pytest.raises(ValueError, match="in memory"):
        check_budget(tmp_path / "o.zarr", 1e6, 1e18, "--members")
    if Path("/proc").is_dir():  # a virtual file system reports no free space
        with pytest.raises(ValueError, match=r"--out /proc/o\.zarr: /proc has no free space"):
            check_budget("/proc/o.zarr", 1e3, 1e3, "--members")


def test_stamp_marks_a_store(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    xr.Dataset({"a": ("t", np.zeros(2))}).to_zarr(path, zarr_format=3, consolidated=False)
    assert not made_by(path, "generate")
    stamp(path, "generate")
    assert made_by(path, "generate")


def test_a_foreign_partial_folder_is_never_replaced(tmp_path: Path) -> None:
    work = tmp_path / "o.zarr.partial"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a stdiff partial output"):
        RegionStore(tmp_path / "o.zarr", "fp", 4, "impute").open(_template())
    assert (work / "notes.txt").read_text() == "keep"
