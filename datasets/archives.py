"""Zip and tar archives as ingest sources: data often arrive packed (Kaggle, UCI, the Copernicus
data store's netCDF zips, CIFAR's ``.tar.gz``). :func:`unpacked` extracts each archive into a hidden folder beside
the output, hands the ingest what it holds (its one file or folder, else the folder of all its
entries) and removes the folder afterwards, whatever happens. macOS metadata (``__MACOSX``,
``._*``, ``.DS_Store``) is left out; an archive larger than the free disk space beside the
output, or holding nothing, is refused before anything is extracted. Errors about extracted
files name them inside the archive: ``data.zip!/air.2014.nc: ...``."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from stdiff.datasets.errors import DataError

__all__ = ["is_archive", "unpacked"]


_TAR = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(source: str) -> bool:
    """A local ``.zip`` (``x.csv.zip`` too: pandas could read it, and so does this) or tar file."""
    name = Path(source).name.lower()
    packed = name.endswith(".zip") or name.endswith(_TAR)
    return "://" not in source and packed and Path(source).is_file()


def _is_zip(archive: Path) -> bool:
    return archive.name.lower().endswith(".zip")


def _members(archive: Path) -> list[tuple[str, int]]:
    """(name, size) of the regular files worth extracting."""
    what = "zip" if _is_zip(archive) else "tar"
    try:
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as z:
                infos = [(i.filename, i.file_size) for i in z.infolist() if not i.is_dir()]
        else:
            with tarfile.open(archive) as t:
                infos = [(m.name, m.size) for m in t.getmembers() if m.isfile()]
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(archive, f"cannot read as a {what} archive ({exc})") from None
    keep = []
    for name, size in infos:
        parts = PurePosixPath(name).parts
        junk = any(p == "__MACOSX" or p.startswith(".") for p in parts)
        if not junk and parts and ".." not in parts and not name.startswith("/"):
            keep.append((name, size))
    if not keep:
        raise DataError(archive, f"the {what} archive holds no files")
    return keep


@contextmanager
def unpacked(sources: Sequence[str], beside: Path, keep: Sequence[str] = ()) -> Iterator[list[str]]:
    """``sources`` with every archive but those in ``keep`` (read as they are: PhysioNet's
    tarball) replaced by its extracted content (see the module docstring); the extraction
    folders live beside ``beside`` until the block ends."""
    archives = [s for s in sources if is_archive(s) and s not in keep]
    if not archives:
        yield list(sources)
        return
    beside = Path(beside).absolute()
    parent = next(p for p in beside.parents if p.is_dir())  # --out's folder may not exist yet
    members = {a: _members(Path(a)) for a in archives}
    need = sum(size for infos in members.values() for _, size in infos)
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
            warnings.warn(_renamed(w.message, folders), stacklevel=3)


def _extract(archive: Path, infos: list[tuple[str, int]], folder: Path) -> str:
    names = [name for name, _ in infos]
    try:
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as z:
                for name in names:
                    z.extract(name, folder)
        else:  # the "data" filter refuses links out of the folder, devices and odd modes
            with tarfile.open(archive) as t:
                wanted = set(names)
                members = [m for m in t.getmembers() if m.name in wanted]
                t.extractall(folder, members=members, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(archive, f"cannot extract the archive ({exc})") from None
    entries = list(folder.iterdir())
    while len(entries) == 1 and entries[0].is_dir():  # a/b/data/...: the folder with content
        folder, entries = entries[0], list(entries[0].iterdir())
    return str(entries[0] if len(entries) == 1 else folder)


def _inside(text: str, folders: dict[str, Path]) -> str:
    """``text`` with each extraction folder replaced by its archive (``data.zip!/a.nc``)."""
    for archive, folder in folders.items():
        text = text.replace(str(folder) + os.sep, f"{archive}!/").replace(str(folder), archive)
    return text


def _renamed(message: Warning | str, folders: dict[str, Path]) -> Warning | str:
    """The warning, naming files inside their archive when it names an extraction folder."""
    text = _inside(str(message), folders)
    if text == str(message) or not isinstance(message, Warning):
        return message if text == str(message) else text
    try:
        return type(message)(text)
    except TypeError:  # a warning class that needs other arguments: kept as it was
        return message


def _named_in_archive(exc: DataError, folders: dict[str, Path]) -> DataError:
    return DataError(_inside(exc.where, folders), _inside(exc.what, folders))
