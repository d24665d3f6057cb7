"""The FMNIST scoring classifier on a tiny synthetic images store: it learns separable patterns,
round-trips through safetensors + JSON, and refuses damaged files with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr

from stdiff.pipelines.jobs.classifier import (
    _augment,
    classify,
    load_classifier,
    to_unit_range,
    train_classifier,
)

CLASSES = ["hbar", "vbar", "box", "blob"]


def _pattern(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 image of class ``label`` with a random position and noise."""
    img = rng.integers(0, 40, (28, 28)).astype(np.int32)
    r, c = rng.integers(4, 20, 2)
    if label == 0:
        img[r : r + 4, 3:25] += 200
    elif label == 1:
        img[3:25, c : c + 4] += 200
    elif label == 2:
        img[r : r + 8, c : c + 8] += 200
        img[r + 2 : r + 6, c + 2 : c + 6] -= 200
    else:
        yy, xx = np.mgrid[:28, :28]
        img += (200 * np.exp(-((yy - r - 4) ** 2 + (xx - c - 4) ** 2) / 8.0)).astype(np.int32)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    n = 320
    label = np.arange(n) % len(CLASSES)
    image = np.stack([_pattern(int(k), rng) for k in label])[:, None]
    split = (np.arange(n) >= 240).astype(np.int8)  # 240 train, 80 test
    ds = xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), image),
            "label": (("sample",), label.astype(np.int64)),
            "split": (("sample",), split),
        },
        attrs={"kind": "images", "classes": CLASSES},
    )
    path = tmp_path_factory.mktemp("store") / "toy.zarr"
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clf") / "classifier"
    info = train_classifier(store, out, steps=60, batch_size=32, lr=3e-3, seed=0)
    return out, info


def test_learns_separable_patterns(trained: tuple[Path, dict], store: Path) -> None:
    out, info = trained
    assert info["test_accuracy"] >= 0.9  # chance is 0.25
    assert info["classes"] == CLASSES and info["steps"] == 60 and info["seed"] == 0
    assert info["test_samples"] == 80 and info["train_samples"] == 240
    assert "127.5" in info["normalization"]
    assert sorted(p.name for p in out.iterdir()) == ["classifier.json", "weights.safetensors"]
    assert not list(out.parent.glob(".*tmp*"))  # the atomic temporary is gone
    assert json.loads((out / "classifier.json").read_text()) == info


def test_round_trip_gives_identical_logits(trained: tuple[Path, dict], store: Path) -> None:
    out, info = trained
    model, loaded = load_classifier(out)
    assert loaded == info and not model.training
    ds = xr.open_zarr(store, consolidated=False)
    images = ds["image"].values[240:]
    x = to_unit_range(images)
    assert x.min() >= -1 and x.max() <= 1
    model2, _ = load_classifier(out)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model2(x), rtol=0, atol=0)
        feats = model.features(x)
    assert feats.shape == (80, 128)
    labels, f = classify(model, images, batch_size=17)  # uint8 input, odd batch size
    assert labels.dtype == np.int64 and f.shape == (80, 128) and f.dtype == np.float32
    assert (labels == ds["label"].values[240:]).mean() == pytest.approx(info["test_accuracy"])
    np.testing.assert_allclose(f, feats.numpy(), rtol=1e-5, atol=1e-6)
    labels_f, _ = classify(model, x[:, 0])  # float (N, H, W) input in [-1, 1]
    np.testing.assert_array_equal(labels_f, labels)


def test_training_is_reproducible_and_leaves_global_rng(store: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = train_classifier(store, tmp_path / "a", steps=3, batch_size=16, seed=7, augment=True)
    assert torch.equal(torch.get_rng_state(), before)
    b = train_classifier(store, tmp_path / "b", steps=3, batch_size=16, seed=7, augment=True)
    assert a["test_accuracy"] == b["test_accuracy"]
    ma, _ = load_classifier(tmp_path / "a")
    mb, _ = load_classifier(tmp_path / "b")
    for (ka, va), (_, vb) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


def test_damaged_files_give_clear_errors(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "classifier.json").write_text((out / "classifier.json").read_text())
    with pytest.raises(ValueError, match=r"weights\.safetensors: classifier weights not found"):
        load_classifier(bad)
    (bad / "weights.safetensors").write_bytes(b"\x80\x04 not a safetensors file at all")
    with pytest.raises(ValueError, match=r"weights\.safetensors: not a readable safetensors"):
        load_classifier(bad)
    (bad / "classifier.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"classifier\.json: not a readable"):
        load_classifier(bad)
    with pytest.raises(ValueError, match=r"classifier\.json: classifier info not found"):
        load_classifier(tmp_path / "nowhere")


def test_mismatched_weights_are_refused(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, info = trained
    bad = tmp_path / "other"
    bad.mkdir()
    (bad / "weights.safetensors").write_bytes((out / "weights.safetensors").read_bytes())
    info = {**info, "params": {**info["params"], "widths": [8, 16, 32]}}
    (bad / "classifier.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"weights\.safetensors: weights do not fit"):
        load_classifier(bad)


def test_augment_is_a_flip_and_shift() -> None:
    """Every augmented image is the input (or its mirror) shifted by at most 2 pixels."""
    x = torch.rand(32, 1, 6, 6) * 2 - 1
    y = _augment(x, torch.Generator().manual_seed(1))
    for i in range(32):
        cands = [
            F.pad(v, (2, 2, 2, 2), value=-1.0)[:, a : a + 6, b : b + 6]
            for v in (x[i], x[i].flip(-1))
            for a in range(5)
            for b in range(5)
        ]
        assert any(torch.equal(c, y[i]) for c in cands)
    assert not torch.equal(x, y)
