"""Where a job may publish, and who holds a folder: outputs never destroy what a job did not make.

* :func:`claim_store` checks an output path before any work: it must be absent, or hold an
  earlier output of the same job (recognised by the ``stdiff_job`` attribute that :func:`stamp`
  writes into every published store, or the ``kind`` attribute of older stdiff outputs); it must
  not be, lie inside, or contain an input; its folder must be creatable and writable.
* :func:`claim_folder` does the same for folder outputs (a training run, a scores folder).
* :class:`FolderLock` is an exclusive lock on a run folder or output held by a live process: a
  second process refuses in one line naming the holder's PID, or waits for it.

Every refusal is a ``ValueError`` naming the flag or key and the path, raised before anything
is created.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

JOB_ATTR, FINGERPRINT_ATTR = "stdiff_job", "stdiff_fingerprint"


def _legacy_job(attrs: dict) -> str | None:
    """The job of a store that stdiff published before the ``stdiff_job`` attribute existed."""
    if "content_hash" in attrs:  # a store of `stdiff ingest`
        return "ingest"
    if attrs.get("title") == "stdiff ensemble forecast":
        return "forecast"
    if "stdiff_version" not in attrs:
        return None
    if attrs.get("kind") in ("imputation", "forecast"):
        return "impute"
    config = attrs.get("config")
    if isinstance(config, dict) and "metrics" in attrs:
        return "reconstruct" if "task" in config else "generate" if "guidance" in config else None
    return None


def store_attrs(path: str | Path) -> dict | None:
    """The root attributes of a zarr store (v3 ``zarr.json`` or v2 ``.zattrs``), None if
    ``path`` is not a zarr store."""
    path = Path(path)
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = path / name
        if f.is_file():
            try:
                meta = json.loads(f.read_text())
            except (OSError, ValueError):
                return None
            attrs = meta.get(key, {}) if key else meta
            return attrs if isinstance(attrs, dict) else {}
    return None


def made_by(path: str | Path, job: str) -> bool:
    """Whether ``path`` is a store that an earlier ``job`` of stdiff published."""
    attrs = store_attrs(path)
    if attrs is None:
        return False
    return attrs.get(JOB_ATTR, _legacy_job(attrs)) == job


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _check_inputs(out: Path, inputs: Iterable[str | Path | None], flag: str) -> None:
    real = out.resolve()
    for given in inputs:
        if given is None or str(given) == "" or "://" in str(given):
            continue
        path = Path(given).resolve()
        if real == path:
            raise ValueError(f"{flag} {out}: is the input {given}; choose another output path")
        if _inside(real, path):
            raise ValueError(
                f"{flag} {out}: lies inside the input {given}; choose a path outside it"
            )
        if _inside(path, real):
            raise ValueError(
                f"{flag} {out}: contains the input {given}; choose another output path"
            )


def check_writable(out: str | Path, flag: str) -> None:
    """The folder that will hold ``out`` exists or can be created, and is writable."""
    out = Path(out)
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(f"{flag} {out}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {out}: the folder {parent} is not writable")
            return


def claim_store(
    out: str | Path,
    job: str,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    flag: str = "--out",
    siblings: Iterable[str] = (),
) -> None:
    """Refuse (ValueError) an output store that would replace something the job did not make.

    An earlier output of the same job is accepted: the job then recognises an identical earlier
    run (it has nothing to do) and needs ``overwrite`` to replace a different one.
    ``siblings``: suffixes of files the job writes beside the store (``.png``)."""
    out = Path(out)
    _check_inputs(out, inputs, flag)
    check_writable(out, flag)
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir() or not made_by(out, job):
            raise ValueError(
                f"{flag} {out}: exists and is not a stdiff {job} output; refusing to replace "
                "it (choose a new path)"
            )
    elif not overwrite:
        for suffix in siblings:
            side = out.with_name(out.name + suffix)
            if side.exists() and not side.is_file():
                raise ValueError(f"{flag} {out}: {side} exists and is not a file")


def refuse_earlier(out: str | Path, job: str, overwrite: bool, flag: str = "--out") -> None:
    """Refuse replacing an earlier, different output of ``job`` unless ``overwrite``."""
    if Path(out).exists() and not overwrite:
        raise ValueError(
            f"{flag} {out}: holds an earlier stdiff {job} output made with other settings; "
            "pass --overwrite to replace it, or choose a new path"
        )


def claim_folder(
    out: str | Path, markers: Iterable[str], what: str, flag: str, allow_existing: bool
) -> bool:
    """Check a folder output: absent, empty, or holding ``markers`` of an earlier ``what``.

    Returns True when it holds an earlier one (the caller then resumes, replaces its own files,
    or refuses: ``allow_existing=False`` refuses with advice)."""
    out = Path(out)
    check_writable(out, flag)
    if not (out.exists() or out.is_symlink()):
        return False
    if not out.is_dir():
        raise ValueError(f"{flag} {out}: is a file, not a folder; choose a folder path")
    entries = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if not entries:
        return False
    if not any((out / m).exists() for m in markers):
        raise ValueError(
            f"{flag} {out}: is a folder with other files (not a stdiff {what}); choose a new "
            "or empty folder"
        )
    if not allow_existing:
        raise ValueError(
            f"{flag} {out}: holds an earlier stdiff {what}; pass --resume {out} to continue "
            "it, --overwrite to start afresh, or choose a new folder"
        )
    return True


def stamp(path: str | Path, job: str, fingerprint: str | None = None) -> None:
    """Mark a store (before it is published) as ``job``'s output, with its run fingerprint."""
    import zarr

    attrs = {JOB_ATTR: job}
    if fingerprint is not None:
        attrs[FINGERPRINT_ATTR] = fingerprint
    zarr.open_group(str(path), mode="r+").attrs.update(attrs)


def fingerprint_of(path: str | Path) -> str | None:
    attrs = store_attrs(path)
    return None if attrs is None else attrs.get(FINGERPRINT_ATTR)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.stdiff.lock`` holding the owner's PID.

    ``acquire(wait=False)`` refuses with a ValueError naming the holder when another process
    holds it; ``wait=True`` blocks until it is free. The lock dies with its process (the kernel
    releases flocks), so a killed run never leaves a folder locked."""

    NAME = ".stdiff.lock"

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / self.NAME
        self._f = None

    def acquire(self, wait: bool = False) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise ValueError(
                    f"{self.folder}: this {self.what} is in use by process {holder}; wait for "
                    "it to finish (or pass --wait)"
                ) from None
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None

    def __enter__(self) -> FolderLock:
        return self if self._f is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation: MemAvailable, or less when a
    container's memory limit (cgroup v2 ``memory.max``, v1 ``limit_in_bytes``) leaves less;
    None if unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return avail if limit is None else min(avail, limit)


def _cgroup_room() -> int | None:
    """The container's memory limit less what it uses, or None without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # fmt: skip
        try:
            cap, used = Path(limit).read_text().strip(), Path(usage).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and used.isdigit() and int(cap) < 2**60:
            return max(0, int(cap) - int(used))
    return None


def check_fits(where: str | Path, need: float, what: str, remedy: str) -> None:
    """Refuse (DataError) an array of ``need`` bytes that would not fit the available memory:
    ``what`` says what it is, ``remedy`` what to change."""
    from stdiff.datasets.errors import DataError

    avail = available_memory()
    if avail is not None and need > 0.8 * avail:
        raise DataError(where, f"{what} would take about {_gb(need)} in memory, more than the "
                               f"{_gb(avail)} available; {remedy}")  # fmt: skip


def _gb(n: float) -> str:
    return f"{n / 2**30:.3g} GB"


def check_budget(out: str | Path, disk_bytes: float, memory_bytes: float, what: str) -> None:
    """Refuse (ValueError, before any work) a job whose output would not fit the free disk space
    beside ``out`` or whose working arrays would not fit the available memory; ``what`` names
    the flags that set the size (``--members, batch_size``)."""
    folder = next((p for p in Path(out).absolute().parents if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    if free == 0:
        raise ValueError(f"--out {out}: {folder} has no free space (or is a read-only or "
                         "virtual file system); choose another --out")  # fmt: skip
    if disk_bytes > free:
        raise ValueError(
            f"{what}: the output would need {_gb(disk_bytes)} but {folder} has {_gb(free)} free; "
            "lower them or choose another --out"
        )
    avail = available_memory()
    if avail is not None and memory_bytes > 0.8 * avail:
        raise ValueError(
            f"{what}: the job would hold about {_gb(memory_bytes)} in memory at once, more than "
            f"the {_gb(avail)} available; lower them"
        )
