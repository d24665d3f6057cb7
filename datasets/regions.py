"""Resumable, concurrent region writes into one zarr store, with completion markers.

An inference job splits its output along the leading dimension into chunks (batches of stays,
initial times, images). :class:`RegionStore` keeps the store being filled in ``OUT.partial/``
(``store.zarr``, ``job.json`` and the ``done/`` markers):

* ``open(template)`` creates it from a lazy template the first time (under a file lock, so
  concurrent runs create it once) and reuses it while the job's ``fingerprint`` (a hash of
  everything that changes the numbers) is the same; a different fingerprint starts over;
* ``write(chunk, ds, region)`` writes one region, then a marker ``done/<chunk>``
  (written after the data, atomically): a chunk is done exactly when its marker exists;
* ``finish()`` (when every chunk is done) stamps the store with the job and its fingerprint
  (``datasets.outputs.stamp``), removes the bookkeeping and renames the store to ``OUT``,
  replacing an older output of the same job only when the run was given ``overwrite``.

A run killed midway and run again computes only the chunks without markers; runs writing
different chunks at once never touch the same zarr chunk (the template's zarr chunks are the job's
chunks), so they do not corrupt each other. An ``OUT`` already published with the same
fingerprint means there is nothing to do: a second identical run (even one started at the same
time) stops without error, and a ``.partial`` left by a kill between publishing and clean-up is
removed by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import xarray as xr

from stdiff.datasets.atomic import clean_stale, replace_into, temp_sibling
from stdiff.datasets.outputs import fingerprint_of, refuse_earlier, stamp
from stdiff.datasets.store import consolidate

JOB, DONE, DATA = "job.json", "done", "store.zarr"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path``, between processes of one machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class RegionStore:
    """The partial store of ``out`` for a job with ``fingerprint`` split into ``chunks`` chunks."""

    def __init__(
        self, out: str | Path, fingerprint: str, chunks: int, job: str, overwrite: bool = False
    ) -> None:
        self.out = Path(out)
        self.work = self.out.with_name(self.out.name + ".partial")
        self.lock = self.out.with_name(self.out.name + ".partial.lock")
        self.fingerprint, self.chunks, self.job = fingerprint, chunks, job
        self.overwrite, self.is_published, self.own = overwrite, False, False

    def published(self) -> bool:
        """Whether ``out`` holds this very job's published output."""
        if not self.is_published:
            self.is_published = fingerprint_of(self.out) == self.fingerprint
        return self.is_published

    def _drop_work(self) -> None:
        job = self._job()
        if job is not None and job.get("fingerprint") == self.fingerprint:
            shutil.rmtree(self.work, ignore_errors=True)

    def _job(self) -> dict | None:
        try:
            return json.loads((self.work / JOB).read_text())
        except (OSError, ValueError):
            return None

    def _matches(self) -> bool:
        job = self._job()
        return (
            bool(job)
            and job.get("fingerprint") == self.fingerprint
            and job.get("chunks") == self.chunks
        )

    def open(self, template: xr.Dataset) -> RegionStore:
        """Check ``out`` and remember ``template`` (lazy); the partial store is created at the
        first write, so a run that fails before it leaves nothing behind. Nothing to do when
        ``out`` already holds this job's output."""
        if (self.work.exists() or self.work.is_symlink()) and self._job() is None:
            raise ValueError(
                f"--out {self.out}: {self.work} exists and is not a stdiff partial output; "
                "refusing to replace it (move it away or choose another --out)"
            )
        clean_stale(self.out.parent)
        self.template = template
        self.own = self._matches()  # markers of a partial store of other settings do not count
        if self.published():
            if self.work.exists():
                with file_lock(self.lock):
                    self._drop_work()  # left by a run killed between publishing and clean-up
            return self
        refuse_earlier(self.out, self.job, self.overwrite)
        return self

    def _ensure(self) -> None:
        """Create the partial store from the template, or reuse a matching one (under the lock:
        concurrent runs of one job create it once)."""
        if self._matches():
            self.own = True
            return
        with file_lock(self.lock):
            self.own = True
            if self._matches():
                return
            shutil.rmtree(self.work, ignore_errors=True)
            tmp = temp_sibling(self.work)
            try:
                self.template.to_zarr(
                    tmp / DATA, mode="w", zarr_format=3, consolidated=False, compute=False
                )
                (tmp / DONE).mkdir()
                job = {"fingerprint": self.fingerprint, "chunks": self.chunks}
                (tmp / JOB).write_text(json.dumps(job))
                os.replace(tmp, self.work)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _discard_if_empty(self) -> None:
        """Remove a partial store that holds no finished chunk (nothing to resume)."""
        if self.work.exists() and (self._job() is None or any((self.work / DONE).glob("[0-9]*"))):
            return  # something else, or finished chunks to resume: left as it is
        shutil.rmtree(self.work, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.lock.unlink()

    def done(self, chunk: int) -> bool:
        if self.is_published:
            return True
        if not self.own and self._matches():  # another run of this job created it meanwhile
            self.own = True
        return self.own and (self.work / DONE / f"{chunk:08d}").exists()

    def pending(self) -> list[int]:
        return [c for c in range(self.chunks) if not self.done(c)]

    def write(self, chunk: int, ds: xr.Dataset, region: dict[str, slice]) -> bool:
        """Write ``ds`` into ``region``, then mark ``chunk`` done. False (nothing written) when
        another run published this job's output meanwhile: the caller stops."""
        if self.published():  # by this run, or an identical one that finished first
            return False
        try:
            self._ensure()
            ds.to_zarr(self.work / DATA, region=region, zarr_format=3, consolidated=False)
            marker = self.work / DONE / f"{chunk:08d}"
            tmp = temp_sibling(marker)
            tmp.write_text("done\n")
            os.replace(tmp, marker)
        except Exception:
            if self.published():  # an identical run finished first and removed .partial
                return False
            self._discard_if_empty()  # e.g. a full disk at the first chunk: nothing to resume
            raise
        return True

    def finish(self, prepare: Callable[[Path], None] | None = None) -> bool:
        """Publish the store as ``out`` once every chunk is done, after ``prepare(store path)``
        (metrics, attributes) under the lock. True when ``out`` holds this job's output (also
        when another identical run published it first); False while chunks are pending."""
        with file_lock(self.lock):
            if self.published():
                self._drop_work()
                return True
            if not self.work.exists() or self.pending():
                return False
            if prepare is not None:
                prepare(self.work / DATA)
            stamp(self.work / DATA, self.job, self.fingerprint)
            consolidate(self.work / DATA)
            replace_into(self.work / DATA, self.out)
            self.is_published = True
            shutil.rmtree(self.work)
        with contextlib.suppress(OSError):  # a run still waiting on it finds no work and stops
            self.lock.unlink()
        return True
