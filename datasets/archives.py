"""Zip archives as ingest sources: data often arrive zipped (Kaggle, UCI, the Copernicus data
store's netCDF downloads). :func:`unpacked` extracts each archive into a hidden folder beside
the output, hands the ingest what it holds (its one file or folder, else the folder of all its
entries) and removes the folder afterwards, whatever happens. macOS metadata (``__MACOSX``,
``._*``, ``.DS_Store``) is left out; an archive larger than the free disk space beside the
output, or holding nothing, is refused before anything is extracted. Errors about extracted
files name them inside the archive: ``data.zip!/air.2014.nc: ...``."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from stdiff.datasets.errors import DataError

__all__ = ["is_archive", "unpacked"]


def is_archive(source: str) -> bool:
    """A local ``.zip`` file (``x.csv.zip`` too: pandas could read it, and so does this)."""
    path = Path(source)
    return "://" not in source and path.suffix.lower() == ".zip" and path.is_file()


def _members(archive: Path) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(archive) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(archive, f"cannot read as a zip archive ({exc})") from None
    keep = []
    for info in infos:
        parts = PurePosixPath(info.filename).parts
        junk = any(p == "__MACOSX" or p.startswith(".") for p in parts)
        if info.is_dir() or junk or not parts or ".." in parts or info.filename.startswith("/"):
            continue
        keep.append(info)
    if not keep:
        raise DataError(archive, "the zip archive holds no files")
    return keep


@contextmanager
def unpacked(sources: Sequence[str], beside: Path) -> Iterator[list[str]]:
    """``sources`` with every zip archive replaced by its extracted content (see the module
    docstring); the extraction folders live beside ``beside`` until the block ends."""
    archives = [s for s in sources if is_archive(s)]
    if not archives:
        yield list(sources)
        return
    beside = Path(beside).absolute()
    parent = next(p for p in beside.parents if p.is_dir())  # --out's folder may not exist yet
    members = {a: _members(Path(a)) for a in archives}
    need = sum(i.file_size for infos in members.values() for i in infos)
    free = shutil.disk_usage(parent).free
    if need > free:
        raise DataError(archives[0], f"needs {need / 1e9:.1f} GB to extract beside {beside}, "
                                     f"{free / 1e9:.1f} GB free; unzip it elsewhere first")  # fmt: skip
    folders: dict[str, Path] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            out: list[str] = []
            for source in sources:
                if source not in members:
                    out.append(source)
                    continue
                folder = Path(tempfile.mkdtemp(prefix=f".{beside.name}.unzip-", dir=parent))
                folders[source] = folder
                out.append(_extract(Path(source), members[source], folder))
            yield out
    except DataError as exc:
        raise _named_in_archive(exc, folders) from None
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        for w in caught:  # warnings too name the file inside the archive
            text = _inside(str(w.message), folders)
            warnings.warn(w.category(text) if issubclass(w.category, UserWarning) else w.message,
                          stacklevel=3)  # fmt: skip


def _extract(archive: Path, infos: list[zipfile.ZipInfo], folder: Path) -> str:
    try:
        with zipfile.ZipFile(archive) as z:
            for info in infos:
                z.extract(info, folder)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(archive, f"cannot extract the zip archive ({exc})") from None
    entries = list(folder.iterdir())
    return str(entries[0] if len(entries) == 1 else folder)


def _inside(text: str, folders: dict[str, Path]) -> str:
    """``text`` with each extraction folder replaced by its archive (``data.zip!/a.nc``)."""
    for archive, folder in folders.items():
        text = text.replace(str(folder) + os.sep, f"{archive}!/").replace(str(folder), archive)
    return text


def _named_in_archive(exc: DataError, folders: dict[str, Path]) -> DataError:
    return DataError(_inside(exc.where, folders), _inside(exc.what, folders))
