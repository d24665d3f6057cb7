"""Image folders split into ``train/`` / ``test/`` / ``val/`` sub-folders, each holding class
sub-folders (or images directly), as torchvision's ``ImageFolder`` users and Kaggle lay them out:
``root/train/cat/1.png``, ``root/test/cat/7.png``. Each split folder is read by
:func:`datasets.images.load_image_folder`; the class names are the union over splits (sorted),
so one class's label is the same in every split. All images become colour when any split has
colour. Split folder names (any case): train / training, test / testing, val / valid /
validation / dev.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError

__all__ = ["load_split_folders", "split_folders"]

_SPLIT_NAMES = {"train": 0, "training": 0, "test": 1, "testing": 1,
                "val": 2, "valid": 2, "validation": 2, "dev": 2}  # fmt: skip


def split_folders(folder: Path) -> dict[Path, int] | None:
    """The split sub-folders and their codes when every sub-folder names a split (and at least
    one holds something); None otherwise, e.g. for class sub-folders."""
    if not folder.is_dir():
        return None
    subs = [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    if not subs or any(p.name.lower() not in _SPLIT_NAMES for p in subs):
        return None
    return {p: _SPLIT_NAMES[p.name.lower()] for p in subs}


def load_split_folders(
    folder: Path, *, size: int | tuple[int, int] | None = None, split: int | str | None = None
) -> xr.Dataset:
    """One images dataset from the split sub-folders of ``folder`` (see the module docstring);
    ``split`` puts every image in that split instead."""
    from stdiff.datasets.images import _images_dataset, _split_code, load_image_folder

    parts = split_folders(Path(folder))
    if parts is None:
        raise DataError(folder, "expected train/ and test/ (or val/) sub-folders")
    read = {p: load_image_folder(p, size=size, split=code) for p, code in parts.items()}
    if (
        len({int(ds.sizes["channel"]) for ds in read.values()}) > 1
    ):  # grey in one, colour in another
        read = {p: load_image_folder(p, size=size, split=c, mode="RGB") for p, c in parts.items()}
    shapes = {p.name: tuple(ds["image"].shape[2:]) for p, ds in read.items()}
    if len(set(shapes.values())) > 1:
        shown = ", ".join(f"{n} {h}x{w}" for n, (h, w) in shapes.items())
        raise DataError(folder, f"the splits' images differ in size ({shown}); resize them to "
                                "one with --image-size N")  # fmt: skip
    classes = sorted({c for ds in read.values() for c in ds.attrs["classes"]})
    labels = [
        np.searchsorted(classes, np.asarray(ds.attrs["classes"])[ds["label"].values])
        for ds in read.values()
    ]
    codes = np.concatenate([ds["split"].values for ds in read.values()])
    if split is not None:
        codes = np.full(codes.shape, _split_code(split, folder), np.int8)
    images = [ds["image"].values for ds in read.values()]
    if len({a.dtype for a in images}) > 1:
        images = [a.astype(np.float32) for a in images]
    return _images_dataset(
        np.concatenate(images), np.concatenate(labels).astype(np.int64), codes,
        source=folder, classes=classes,
    )  # fmt: skip
