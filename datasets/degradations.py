"""Masks for image inverse problems: inpainting masks, MRI sampling masks and user masks.

All masks use 1 (True) = known pixel / sampled k-space column and are numpy bool arrays; random
ones are drawn from an explicit ``np.random.Generator`` (or an int seed), never numpy's global
state. Use them with :class:`diffusion.operators.Mask` and :class:`diffusion.operators.FourierMask`
(``torch.from_numpy(mask)``).

Inpainting kinds (:func:`inpaint_mask`), sizes quoted at 64 px and scaled with the image:

=========  ====================================================  ==============
kind       hidden                                                hidden fraction
=========  ====================================================  ==============
``thin``   free-form brush strokes about 3 px wide               15-30 %
``thick``  free-form brush strokes about 9 px wide               35-50 %
``half``   the right half                                        50 %
``frame``  a border of width size/4 (outpainting)                75 %
``lines``  every second row (rows 1, 3, 5, ...)                  50 %
=========  ====================================================  ==============

Strokes are random walks of line segments painted with a disc brush, in the spirit of the
free-form masks of DeepFill v2 (Yu et al. 2019); segments are added until the hidden fraction
reaches a target drawn uniformly inside the range, and a segment that would overshoot the range
is discarded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np

from stdiff.datasets.errors import DataError

INPAINT_KINDS: tuple[str, ...] = ("thin", "thick", "half", "frame", "lines")

# kind -> (brush width at 64 px, segment length range at 64 px, hidden fraction range)
_STROKES: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "thin": (3.0, (6.0, 16.0), (0.15, 0.30)),
    "thick": (9.0, (8.0, 20.0), (0.35, 0.50)),
}

Rng = np.random.Generator | int


def _rng(rng: Rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size: must be positive, got {size}")
    return h, w


def _segment(shape: tuple[int, int], p: np.ndarray, q: np.ndarray, radius: float) -> np.ndarray:
    """Bool ``(H, W)``: pixels whose centres lie within ``radius`` of the segment ``p``-``q``.

    Points are ``(row, col)``; the segment swept by a disc brush of that radius.
    """
    h, w = shape
    lo = np.floor(np.minimum(p, q) - radius).astype(int).clip(0, [h - 1, w - 1])
    hi = np.ceil(np.maximum(p, q) + radius).astype(int).clip(0, [h - 1, w - 1])
    rr, cc = np.mgrid[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1]  # bounding box only
    d = q - p
    len2 = float(d @ d)
    # projection of each pixel onto the segment, clamped to its end points
    u = 0.0 if len2 == 0 else np.clip(((rr - p[0]) * d[0] + (cc - p[1]) * d[1]) / len2, 0, 1)
    dist2 = (rr - p[0] - u * d[0]) ** 2 + (cc - p[1] - u * d[1]) ** 2
    out = np.zeros(shape, dtype=bool)
    out[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1] = dist2 <= radius**2
    return out


def _stroke_mask(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Hidden pixels (True) of free-form strokes; see the module docstring."""
    h, w = shape
    scale = min(h, w) / 64
    width, (len_lo, len_hi), (frac_lo, frac_hi) = _STROKES[kind]
    radius = max(width * scale / 2, 0.5)
    # aim inside the range, away from the edges, so that one segment cannot leave it
    target = rng.uniform(frac_lo + 0.3 * (frac_hi - frac_lo), frac_hi - 0.3 * (frac_hi - frac_lo))
    hidden = np.zeros(shape, dtype=bool)
    limit = np.array([h - 1, w - 1], dtype=float)
    for _ in range(10_000):  # strokes; each ends after a few segments or on a rejected one
        point = rng.uniform(0, 1, 2) * limit  # (row, col)
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(3, 9))):
            angle += rng.uniform(-math.pi / 2, math.pi / 2)  # turn at each vertex
            length = rng.uniform(len_lo, len_hi) * scale
            nxt = np.clip(point + length * np.array([math.sin(angle), math.cos(angle)]), 0, limit)
            candidate = hidden | _segment(shape, point, nxt, radius)
            if candidate.mean() > frac_hi:
                break  # would overshoot: drop the segment, start a new stroke
            hidden, point = candidate, nxt
            if hidden.mean() >= target:
                return hidden
    return hidden


def inpaint_mask(
    kind: Literal["thin", "thick", "half", "frame", "lines"],
    size: int | tuple[int, int],
    rng: Rng = 0,
) -> np.ndarray:
    """An inpainting mask, bool ``(H, W)``, True = known pixel; ``size`` is ``n`` or ``(H, W)``.

    ``kind`` is one of :data:`INPAINT_KINDS` (see the module docstring); ``rng`` a generator or a
    seed (only ``thin`` and ``thick`` are random).
    """
    h, w = _size(size)
    if kind in _STROKES:
        return ~_stroke_mask(kind, (h, w), _rng(rng))
    known = np.ones((h, w), dtype=bool)
    if kind == "half":
        known[:, w // 2 :] = False
    elif kind == "frame":
        bh, bw = h // 4, w // 4
        known[:bh], known[h - bh :], known[:, :bw], known[:, w - bw :] = False, False, False, False
    elif kind == "lines":
        known[1::2] = False
    else:
        raise ValueError(f"kind: unknown inpainting mask {kind!r}; choose one of {INPAINT_KINDS}")
    return known


def cartesian_mask(
    width: int,
    acceleration: float,
    kind: Literal["uniform", "gaussian"] = "uniform",
    center_fraction: float = 0.08,
    rng: Rng = 0,
) -> np.ndarray:
    """A 1-D Cartesian k-space sampling mask, bool ``(W,)``, True = sampled column.

    The ``round(center_fraction * W)`` columns around the k-space centre (index ``W // 2``, as in
    :func:`diffusion.operators.fft2c`) are always sampled; the others are drawn without
    replacement, uniformly or with a Gaussian density ``exp(-(j - W//2)^2 / (2 (W/4)^2))``, so
    that ``round(W / acceleration)`` columns are sampled in all (Python's ``round``).
    """
    if width < 1:
        raise ValueError(f"width: must be positive, got {width}")
    if not (math.isfinite(acceleration) and acceleration >= 1):
        raise ValueError(f"acceleration: must be a finite number >= 1, got {acceleration}")
    if not 0 <= center_fraction <= 1:
        raise ValueError(f"center_fraction: must be in [0, 1], got {center_fraction}")
    if kind not in ("uniform", "gaussian"):
        raise ValueError(f"kind: unknown sampling density {kind!r}; choose 'uniform' or 'gaussian'")
    total = round(width / acceleration)
    n_center = round(center_fraction * width)
    if n_center > total:
        raise ValueError(
            f"center_fraction: {center_fraction} gives {n_center} central columns, more than the "
            f"{total} columns of width {width} at acceleration {acceleration}"
        )
    mask = np.zeros(width, dtype=bool)
    start = width // 2 - n_center // 2
    mask[start : start + n_center] = True
    others = np.flatnonzero(~mask)
    if kind == "uniform":
        p = np.ones(len(others))
    else:
        p = np.exp(-((others - width // 2) ** 2) / (2 * (width / 4) ** 2))
    picked = _rng(rng).choice(others, size=total - n_center, replace=False, p=p / p.sum())
    mask[picked] = True
    return mask


def _read_array(p: Path) -> np.ndarray:
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.is_dir() or suffix == ".zarr":
        import zarr  # only needed for zarr masks

        node = zarr.open(str(p), mode="r")
        if isinstance(node, zarr.Group):
            arrays = dict(node.arrays())
            if "mask" in arrays:
                node = arrays["mask"]
            elif len(arrays) == 1:
                node = next(iter(arrays.values()))
            else:
                raise DataError(
                    p, f"zarr group needs one array or one named 'mask', has {list(arrays)}"
                )
        return np.asarray(node[...])
    from PIL import Image  # PNG and other images PIL reads

    with Image.open(p) as im:
        return np.asarray(im.convert("L"))


def load_user_mask(path: str | Path, shape: int | tuple[int, int]) -> np.ndarray:
    """A user's mask, bool ``(H, W)``, nonzero = known; ``shape`` the expected ``n`` or ``(H, W)``.

    Reads a PNG (or another image PIL reads; converted to grayscale), a ``.npy`` file or a zarr
    store with a 2-D array (the group's only array, or the one named ``mask``). Errors are one
    line naming the file (:class:`datasets.errors.DataError`, a ``ValueError``).
    """
    p = Path(path)
    expected = _size(shape)
    if not p.exists():
        raise DataError(p, "mask file not found")
    try:
        arr = _read_array(p)
    except DataError:
        raise
    except Exception as err:
        msg = str(err).splitlines()[0] if str(err) else ""
        raise DataError(p, f"cannot read a mask ({type(err).__name__}: {msg})") from err
    if arr.ndim != 2:
        raise DataError(p, f"mask must be a 2-D array, got shape {arr.shape}")
    if arr.shape != expected:
        raise DataError(
            p,
            f"mask shape {arr.shape[0]}x{arr.shape[1]} does not match the expected "
            f"{expected[0]}x{expected[1]}",
        )
    return arr != 0
