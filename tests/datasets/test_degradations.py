"""Inpainting masks, MRI sampling masks and user masks: shapes, fractions, reproducibility, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stdiff.datasets.degradations import INPAINT_KINDS, cartesian_mask, inpaint_mask, load_user_mask

HIDDEN = {
    "thin": (0.15, 0.30),
    "thick": (0.35, 0.50),
    "half": (0.5, 0.5),
    "frame": (0.75, 0.75),
    "lines": (0.5, 0.5),
}


@pytest.mark.parametrize("kind", INPAINT_KINDS)
@pytest.mark.parametrize("size", [64, 96])
def test_inpaint_mask_shape_dtype_and_hidden_fraction(kind: str, size: int) -> None:
    lo, hi = HIDDEN[kind]
    for seed in range(4):
        m = inpaint_mask(kind, size, np.random.default_rng(seed))
        assert m.shape == (size, size) and m.dtype == np.bool_
        assert lo <= 1 - m.mean() <= hi


def test_inpaint_mask_rectangular_and_layouts() -> None:
    assert inpaint_mask("thick", (48, 80), 0).shape == (48, 80)
    half = inpaint_mask("half", (8, 10))
    assert half[:, :5].all() and not half[:, 5:].any()
    frame = inpaint_mask("frame", 16)
    assert frame[4:12, 4:12].all() and frame.sum() == 64
    lines = inpaint_mask("lines", 6)
    assert lines[::2].all() and not lines[1::2].any()


@pytest.mark.parametrize("kind", ["thin", "thick"])
def test_strokes_are_reproducible_per_seed(kind: str) -> None:
    a, b = inpaint_mask(kind, 64, 7), inpaint_mask(kind, 64, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, inpaint_mask(kind, 64, 8))


def test_stroke_width_scales_with_size() -> None:
    def typical_run(m: np.ndarray) -> float:  # median length of hidden runs along rows
        runs = []
        for row in ~m:
            edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(int), [0]])))
            runs += list(edges[1::2] - edges[::2])
        return float(np.median(runs))

    thin64 = np.median([typical_run(inpaint_mask("thin", 64, s)) for s in range(3)])
    thin128 = np.median([typical_run(inpaint_mask("thin", 128, s)) for s in range(3)])
    thick64 = np.median([typical_run(inpaint_mask("thick", 64, s)) for s in range(3)])
    assert 2 <= thin64 <= 6 and thick64 > 1.8 * thin64 and thin128 > 1.5 * thin64


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind: unknown inpainting mask 'box'"):
        inpaint_mask("box", 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize(("width", "acc"), [(64, 4), (320, 8), (101, 3.0)])
def test_cartesian_mask_budget_and_centre(kind: str, width: int, acc: float) -> None:
    m = cartesian_mask(width, acc, kind=kind, rng=0)
    assert m.shape == (width,) and m.dtype == np.bool_
    assert m.sum() == round(width / acc)
    n_center = round(0.08 * width)
    start = width // 2 - n_center // 2
    assert m[start : start + n_center].all()
    assert np.array_equal(m, cartesian_mask(width, acc, kind=kind, rng=np.random.default_rng(0)))
    assert not np.array_equal(m, cartesian_mask(width, acc, kind=kind, rng=1))


def test_gaussian_density_prefers_the_centre() -> None:
    w = 256
    dist = {k: [] for k in ("uniform", "gaussian")}
    for k, d in dist.items():
        for seed in range(5):
            m = cartesian_mask(w, 4, kind=k, center_fraction=0.04, rng=seed)
            d.append(np.abs(np.flatnonzero(m) - w // 2).mean())
    assert np.mean(dist["gaussian"]) < 0.8 * np.mean(dist["uniform"])


def test_cartesian_mask_errors() -> None:
    with pytest.raises(ValueError, match="acceleration: must be a finite number >= 1"):
        cartesian_mask(64, 0.5)
    with pytest.raises(
        ValueError, match=r"center_fraction: 0\.5 gives 32 central columns, more than the 8"
    ):
        cartesian_mask(64, 8, center_fraction=0.5)
    with pytest.raises(ValueError, match="kind: unknown sampling density 'poisson'"):
        cartesian_mask(64, 4, kind="poisson")  # type: ignore[arg-type]


def test_user_mask_png_round_trip(tmp_path: Path) -> None:
    mask = inpaint_mask("thick", (24, 32), 3)
    path = tmp_path / "mask.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    loaded = load_user_mask(path, (24, 32))
    assert loaded.dtype == np.bool_ and np.array_equal(loaded, mask)
    rgb = tmp_path / "rgb.png"  # colour images are read as grayscale, nonzero = known
    Image.fromarray(np.stack([mask.astype(np.uint8) * 200] * 3, -1)).save(rgb)
    assert np.array_equal(load_user_mask(rgb, (24, 32)), mask)


def test_user_mask_npy_and_zarr(tmp_path: Path) -> None:
    import zarr

    mask = inpaint_mask("thin", 16, 0)
    np.save(tmp_path / "m.npy", mask.astype(np.float32))
    assert np.array_equal(load_user_mask(tmp_path / "m.npy", 16), mask)
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="w")
    group.create_array("mask", data=mask.astype(np.uint8))
    group.create_array("other", data=np.zeros(3))
    assert np.array_equal(load_user_mask(tmp_path / "m.zarr", (16, 16)), mask)


def test_user_mask_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(np.ones((20, 30), dtype=np.uint8)).save(path)
    with pytest.raises(
        ValueError, match=r"small\.png: mask shape 20x30 does not match the expected 64x64"
    ) as err:
        load_user_mask(path, 64)
    assert "\n" not in str(err.value)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png: cannot read a mask"):
        load_user_mask(bad, 64)
    with pytest.raises(ValueError, match=r"missing\.npy: mask file not found"):
        load_user_mask(tmp_path / "missing.npy", 64)
    np.save(tmp_path / "cube.npy", np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"cube\.npy: mask must be a 2-D array"):
        load_user_mask(tmp_path / "cube.npy", 4)
