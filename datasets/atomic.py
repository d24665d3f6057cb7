"""Atomic outputs: everything is written to a temporary sibling, then renamed into place, so a
killed job never leaves a half-written store, checkpoint, plot or report.

Temporary and replaced paths are named ``.<name>.tmp-<pid>-<hex>`` / ``.<name>.old-<pid>-<hex>``
after the process that made them: :func:`clean_stale` removes those of processes that no longer
exist (a run killed mid-write), and never touches anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

_OURS = re.compile(r"^\..+\.(tmp|old)-(\d+)-[0-9a-f]{8}$")
# stdiff before 0.1.1 named them without the PID: removed once a day old
_LEGACY = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{8}$")
LEGACY_AGE_S = 24 * 3600


def temp_sibling(final: str | Path, kind: str = "tmp") -> Path:
    """A fresh hidden sibling of ``final`` named after this process."""
    final = Path(final)
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove the temporary/replaced paths in ``folder`` left by processes that are gone."""
    from stdiff.datasets.outputs import pid_alive

    folder, removed = Path(folder), []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        m = _OURS.match(p.name)
        if m:
            stale = int(m.group(2)) != os.getpid() and not pid_alive(int(m.group(2)))
        else:
            try:
                stale = bool(_LEGACY.match(p.name)) and now - p.lstat().st_mtime > LEGACY_AGE_S
            except OSError:
                stale = False
        if stale:
            _remove(p)
            removed.append(p)
    return removed


def replace_into(src: Path, final: Path) -> None:
    """Rename ``src`` onto ``final``; a folder already at ``final`` is moved aside first and
    removed after (a kill in between leaves it as a stale ``.old-<pid>`` that
    :func:`clean_stale` removes)."""
    if final.is_dir() and not final.is_symlink() and src.is_dir():
        old = temp_sibling(final, "old")
        os.replace(final, old)
        os.replace(src, final)
        _remove(old)
    else:
        os.replace(src, final)


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success replace ``final`` with it.

    Works for files and directories (zarr stores). On error the temporary path is removed and
    ``final`` is left as it was. Stale temporaries of dead processes beside it are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent)
    tmp = temp_sibling(final)
    try:
        yield tmp
        replace_into(tmp, final)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


@contextmanager
def staged_files(folder: str | Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``folder``; on success move each file written there
    into ``folder`` (made if absent), replacing files of the same name and leaving the others. On
    error ``folder`` is left as it was (a report of several files: all of them or none)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder.parent)
    stage = temp_sibling(folder)
    stage.mkdir()
    try:
        yield stage
        folder.mkdir(exist_ok=True)
        for f in sorted(stage.iterdir()):
            os.replace(f, folder / f.name)
    finally:
        _remove(stage)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)
