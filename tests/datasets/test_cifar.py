"""CIFAR-10/100 folders (python pickles and binary records) and their .tar.gz, as published."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stdiff.datasets.cifar import is_cifar_folder, load_cifar_folder
from stdiff.datasets.errors import DataError

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _py2(obj) -> bytes:
    """A pickle as CIFAR's were written (Python 2, NumPy 1: ``numpy.core.multiarray``)."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def _cifar10(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Both published layouts of the same 3 batches (2 train, 1 test) of 4 images each."""
    rng = np.random.default_rng(0)
    py, bin_ = root / "cifar-10-batches-py", root / "cifar-10-batches-bin"
    py.mkdir(), bin_.mkdir()
    images, labels = [], []
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        label = [int(v) for v in rng.integers(0, 10, 4)]
        batch = {b"batch_label": b"x", b"labels": label, b"data": data, b"filenames": [b"a"] * 4}
        (py / name).write_bytes(_py2(batch))
        np.concatenate([np.array(label, np.uint8)[:, None], data], axis=1).tofile(
            bin_ / f"{name}.bin"
        )
        images.append(data.reshape(4, 3, 32, 32)), labels.extend(label)
    (py / "batches.meta").write_bytes(_py2({b"label_names": [n.encode() for n in NAMES]}))
    (bin_ / "batches.meta.txt").write_text("\n".join(NAMES) + "\n\n")
    return np.concatenate(images), np.array(labels)


def test_cifar10_python_and_binary_read_the_same(tmp_path):
    images, labels = _cifar10(tmp_path)
    for folder in ("cifar-10-batches-py", "cifar-10-batches-bin"):
        assert is_cifar_folder(tmp_path / folder)
        ds = load_cifar_folder(tmp_path / folder)
        np.testing.assert_array_equal(ds.image.values, images)  # planes R, G, B; rows of 32
        np.testing.assert_array_equal(ds.label.values, labels)
        np.testing.assert_array_equal(ds.split.values, [0] * 8 + [1] * 4)
        assert ds.attrs["classes"] == NAMES and ds.image.dtype == np.uint8


def test_cifar100_binary_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    data = np.random.default_rng(1).integers(0, 256, (3, 3072), dtype=np.uint8)
    coarse, fine = np.array([1, 2, 3], np.uint8), np.array([50, 99, 0], np.uint8)
    np.concatenate([coarse[:, None], fine[:, None], data], 1).tofile(folder / "train.bin")
    (folder / "fine_label_names.txt").write_text("\n".join(f"c{k}" for k in range(100)))
    ds = load_cifar_folder(folder)
    np.testing.assert_array_equal(ds.label.values, fine)
    np.testing.assert_array_equal(ds.image.values, data.reshape(3, 3, 32, 32))
    assert ds.attrs["classes"][99] == "c99"


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never run",))


def test_a_pickle_with_code_is_refused_unrun(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}))
    (folder / "batches.meta").write_bytes(_py2({b"label_names": [b"a"]}))
    with pytest.raises(DataError, match=r"data_batch_1: not a CIFAR batch pickle \(posix\.system"):
        load_cifar_folder(folder)
    (tmp_path / "short.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "batches.meta.txt").write_text("a\n")
    with pytest.raises(DataError, match="100 bytes is not a whole number of 3073-byte records"):
        load_cifar_folder(tmp_path)


def test_the_published_tarball_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from stdiff.cli import app
    from stdiff.datasets.store import open_store

    images, _ = _cifar10(tmp_path)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", "cifar-10-batches-py")
    out = tmp_path / "cifar.zarr"
    args = [
        "ingest",
        str(tmp_path / "cifar-10-python.tar.gz"),
        "--kind",
        "images",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, [*args, "--no-progress"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(open_store(out).image.values, images)
    assert not list(tmp_path.glob(".*unzip*"))
