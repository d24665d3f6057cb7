"""CIFAR-10 and CIFAR-100 as published (``cifar-10-python.tar.gz`` or ``cifar-10-binary.tar.gz``,
and their CIFAR-100 twins), read into the canonical images form (:mod:`datasets.images`).

* **python** folders (``data_batch_1`` ... ``data_batch_5`` + ``test_batch`` + ``batches.meta``;
  CIFAR-100: ``train`` + ``test`` + ``meta``) are pickles of plain dicts holding a uint8 array.
  They are read by an unpickler that only rebuilds NumPy arrays (and the dicts, lists, strings
  and numbers around them): any other class or function in the file is refused, so reading
  one never runs code.
* **binary** folders (``data_batch_1.bin`` ... + ``test_batch.bin`` + ``batches.meta.txt``;
  CIFAR-100: ``train.bin`` + ``test.bin`` + ``fine_label_names.txt``): records of one label byte
  (CIFAR-100: coarse then fine) and 3,072 pixel bytes, red plane, green, blue, row by row.

CIFAR-100 uses its 100 fine labels. Training batches land in the train split, the test batch
in test (``split`` puts everything in one split instead).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError

__all__ = ["is_cifar_folder", "load_cifar_folder"]

_PIXELS = 3 * 32 * 32
_PY_TRAIN, _PY_TEST = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                       "data_batch_5", "train"], ["test_batch", "test"]  # fmt: skip
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 2 pickles of bytes rebuild them
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a NumPy array part")
        if module.startswith("numpy.core."):  # NumPy 2 moved it (the old path warns)
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            out = _ArraysOnly(io.BytesIO(fh.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(path, f"not a CIFAR batch pickle ({exc})") from None
    if not isinstance(out, dict):
        raise DataError(path, "not a CIFAR batch pickle (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in out.items()}


def is_cifar_folder(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return bool(names & {"batches.meta", "batches.meta.txt", "meta", "fine_label_names.txt"}) and (
        bool(names & {*_PY_TRAIN, *_PY_TEST}) or any(n.endswith(".bin") for n in names)
    )


def load_cifar_folder(folder: str | Path, *, split: int | str | None = None) -> xr.Dataset:
    """A CIFAR-10/100 folder, python or binary, as the canonical images dataset: uint8
    (N, 3, 32, 32), the class names from its meta file."""
    from stdiff.datasets.images import _images_dataset, _split_code

    image, label, codes, classes = _read_folder(Path(folder))
    if split is not None:
        codes = np.full(len(label), _split_code(split, folder), np.int8)
    return _images_dataset(image, label, codes, source=folder, classes=classes)


def _read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    binary = any(p.suffix == ".bin" for p in folder.iterdir())
    parts = []
    for code, names in ((0, _PY_TRAIN), (1, _PY_TEST)):
        for name in names:
            path = folder / (name + ".bin" if binary else name)
            if path.is_file():
                image, label = _binary(path, folder) if binary else _python(path)
                parts.append((image, label, np.full(len(label), code, np.int8)))
    if not parts:
        raise DataError(folder, "no CIFAR batches (data_batch_1..5 / test_batch, or train / test)")
    image, label, split = (np.concatenate(p) for p in zip(*parts, strict=True))
    return image, label.astype(np.int64), split, _classes(folder, binary, int(label.max()) + 1)


def _python(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = batch.get("data")
    labels = batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(path, "its 'data' is not an (N, 3072) array of 32x32 RGB images")
    if labels is None or len(labels) != len(data):
        raise DataError(path, "its labels are missing or do not match its images in number")
    return data.reshape(-1, 3, 32, 32).astype(np.uint8), np.asarray(labels)


def _binary(path: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    fine = (folder / "fine_label_names.txt").exists()  # CIFAR-100: coarse byte, fine byte
    width = _PIXELS + (2 if fine else 1)
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % width:
        raise DataError(path, f"{raw.size} bytes is not a whole number of {width}-byte records")
    records = raw.reshape(-1, width)
    return records[:, width - _PIXELS :].reshape(-1, 3, 32, 32), records[:, width - _PIXELS - 1]


def _classes(folder: Path, binary: bool, count: int) -> list[str]:
    names: list[str] = []
    if binary:
        for name in ("fine_label_names.txt", "batches.meta.txt"):
            if (folder / name).is_file():
                lines = (folder / name).read_text(errors="replace").splitlines()
                names = [line.strip() for line in lines if line.strip()]
                break
    else:
        for name, key in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
            if (folder / name).is_file():
                meta = _unpickle(folder / name).get(key, [])
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta]
                break
    return names if len(names) >= count else [str(k) for k in range(count)]
