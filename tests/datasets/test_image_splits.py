"""Image folders split into train/ test/ val/ sub-folders of class folders (ImageFolder style)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stdiff.datasets.errors import DataError
from stdiff.datasets.image_splits import load_split_folders, split_folders


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_splits_share_one_class_list_and_become_colour_together(tmp_path):
    """train has cat and dog, Test only dog, val a grey bird: labels index the union of class
    names in every split, and the grey image becomes colour with the others."""
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    _save(tmp_path / "train/cat/a.png", cat)
    _save(tmp_path / "train/dog/b.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    _save(tmp_path / "Test/dog/c.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    bird = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    _save(tmp_path / "val/bird/d.png", bird)
    ds = load_split_folders(tmp_path)
    assert ds.attrs["classes"] == ["bird", "cat", "dog"]
    by_split = {int(s): ds.label.values[ds.split.values == s].tolist() for s in (0, 1, 2)}
    assert by_split == {0: [1, 2], 1: [2], 2: [0]}
    np.testing.assert_array_equal(ds.image.values[ds.label.values == 1][0], cat.transpose(2, 0, 1))
    np.testing.assert_array_equal(ds.image.values[ds.label.values == 0][0], np.stack([bird] * 3))
    everything = load_split_folders(tmp_path, split="train")
    assert (everything.split.values == 0).all()


def test_only_split_names_make_a_split_layout(tmp_path):
    _save(tmp_path / "a/train/x.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "a/cats/x.png", np.zeros((4, 4), np.uint8))
    assert split_folders(tmp_path / "a") is None  # a class folder beside: classes, not splits
    _save(tmp_path / "b/train/c/x.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "b/test/c/y.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DataError, match=r"differ in size \(test 6x6, train 4x4\).*--image-size"):
        load_split_folders(tmp_path / "b")
    ds = load_split_folders(tmp_path / "b", size=5)
    assert ds.image.shape == (2, 1, 5, 5)


def test_a_folder_too_large_for_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import stdiff.datasets.outputs as outputs
    from stdiff.datasets.image_files import check_folder_fits

    for k in range(3):
        _save(tmp_path / f"c/{k}.png", np.zeros((100, 100, 3), np.uint8))
    monkeypatch.setattr(outputs, "available_memory", lambda: 200_000)  # 3 x 2 x 30 kB > 160 kB
    with pytest.raises(DataError, match=r"3 images of 100x100 would take .* --image-size N"):
        check_folder_fits(tmp_path, None)
    check_folder_fits(tmp_path, 32)  # resized on reading: 3 x 2 x 3 kB fits
