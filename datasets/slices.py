"""The slices of a medical volume as image samples: intensity window, display orientation, size.

A volume in the canonical medical form (``image (slice, y, x)``, see :mod:`datasets.medical`)
becomes an ``images`` Dataset (``image (sample, channel, y, x)`` uint8) that the image tasks
(training, reconstruction, generation) read like any other image set.

* **Window.** Intensities ``[lo, hi]`` map linearly to 0..255 and are clipped outside. CT is in
  Hounsfield units, so a window is a fixed physical range, the same for every scan: give it as
  ``"LO,HI"`` (e.g. ``"-1000,400"``) or by a preset name (:data:`WINDOWS`, centre/width as
  radiology departments use them). MRI has no absolute unit: ``"auto"`` (the default) takes
  ``hi`` = the 99.5th percentile of the volume's kept slices and ``lo`` = 0 (or the 0.5th
  percentile when the volume holds negative values), so each scan is scaled on its own.
* **Orientation.** Slices are stored as a radiologist looks at them: axial and coronal slices
  with the patient's right on the image's left (column 0), axial slices with anterior up (row 0),
  coronal and sagittal slices with superior up, sagittal slices with anterior on the left. Any
  plot of the store (``imshow`` with its default ``origin="upper"``) is then in radiological
  orientation without knowing where the images came from.
* **Size.** Slices with almost no signal (mean of the windowed slice below ``min_signal`` times
  the brightest slice's) are dropped; every kept slice is cropped to one square around the
  volume's visible (above ``lo``) region, centred, and resized to ``size`` x ``size``
  (bilinear, antialiased).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError

__all__ = ["WINDOWS", "display_transform", "parse_window", "slices_as_images"]

# name -> (centre, width) in Hounsfield units (common radiology presets)
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
}

# (down, right) unit vectors in DICOM's patient frame (LPS: +x left, +y posterior, +z superior)
_DISPLAY_LPS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "axial": ((0, 1, 0), (1, 0, 0)),  # anterior up, patient's right on the left
    "coronal": ((0, 0, -1), (1, 0, 0)),  # superior up, patient's right on the left
    "sagittal": ((0, 0, -1), (0, 1, 0)),  # superior up, anterior on the left
}
_UP_LEFT = {
    "axial": ("anterior", "right"),
    "coronal": ("superior", "right"),
    "sagittal": ("superior", "anterior"),
}


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` or a preset name -> ``(lo, hi)``; ``None`` or ``"auto"`` -> None (per scan).

    Raises ``ValueError`` naming the presets when ``text`` is neither."""
    if text is None or text.strip().lower() == "auto":
        return None
    name = text.strip().lower().replace("-", "_")
    if name in WINDOWS:
        centre, width = WINDOWS[name]
        return centre - width / 2, centre + width / 2
    lo_text, sep, hi_text = text.partition(",")
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        lo, hi = float("nan"), float("nan")
    if not sep or not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(
            f"window {text!r}: expected LO,HI (e.g. -1000,400), auto, or one of {sorted(WINDOWS)}"
        )
    if hi <= lo:
        raise ValueError(f"window {text!r}: HI must be above LO")
    return lo, hi


def _nifti_plane(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("axis", "axial"))


def _dicom_plane(iop: np.ndarray) -> str:
    normal = np.abs(np.cross(iop[:3], iop[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(normal))]


def display_transform(ds: xr.Dataset) -> tuple[bool, bool, bool, str]:
    """``(transpose, flip_y, flip_x, plane)`` turning a volume's ``(y, x)`` slices into the
    radiological display (see the module docstring); transpose is applied first.

    NIfTI volumes (reoriented to RAS+, ``y``/``x`` increasing toward A/S and R/A) flip both axes.
    DICOM slices follow ImageOrientationPatient (row and column direction cosines in LPS); slices
    without it are kept as stored, which is the display of the usual DICOM orientations."""
    if ds.attrs.get("orientation") == "RAS":
        return False, True, True, _nifti_plane(ds)
    iop = np.asarray(ds.attrs.get("image_orientation_patient") or [], dtype=float)
    if iop.shape != (6,):
        return False, False, False, "unknown"
    plane = _dicom_plane(iop)
    down, right = (np.asarray(v, float) for v in _DISPLAY_LPS[plane])
    x_dir, y_dir = iop[:3], iop[3:]  # column index runs along x_dir, row index along y_dir
    transpose = abs(float(x_dir @ down)) > abs(float(y_dir @ down))
    if transpose:
        x_dir, y_dir = y_dir, x_dir
    return transpose, float(y_dir @ down) < 0, float(x_dir @ right) < 0, plane


def _window(vol: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        return window
    hi = float(np.percentile(vol, 99.5))
    lo = 0.0 if float(vol.min()) >= 0 else float(np.percentile(vol, 0.5))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _square_crop(vis: np.ndarray) -> np.ndarray:
    """``(S, Y, X)`` -> ``(S, side, side)``: one centred square around the visible pixels."""
    nz = np.argwhere(vis.max(axis=0) > 0)
    if len(nz) == 0:
        nz = np.array([[0, 0], [vis.shape[1] - 1, vis.shape[2] - 1]])
    (y0, x0), (y1, x1) = nz.min(0), nz.max(0) + 1
    side = int(max(y1 - y0, x1 - x0))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    padded = np.pad(vis, ((0, 0), (side, side), (side, side)))  # the square never leaves it
    top, left = cy - side // 2 + side, cx - side // 2 + side
    return padded[:, top : top + side, left : left + side]


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """``(S, h, w)`` float in [0, 1] -> ``(S, size, size)`` uint8 (bilinear, antialiased)."""
    from PIL import Image

    out = [
        np.asarray(Image.fromarray(f, mode="F").resize((size, size), Image.Resampling.BILINEAR))
        for f in frames.astype(np.float32)
    ]
    return np.clip(np.rint(np.stack(out) * 255.0), 0, 255).astype(np.uint8)


def slices_as_images(
    ds: xr.Dataset,
    size: int = 64,
    *,
    window: tuple[float, float] | None = None,
    min_signal: float = 0.1,
    block: int = 8,
    test_every: int = 5,
    split: str = "auto",
) -> xr.Dataset:
    """The slices of a volume (``image (slice, y, x)``) as an ``images`` Dataset.

    ``window``: ``(lo, hi)`` in the volume's units (HU for CT), None for the per-scan ``auto``
    window (module docstring). ``split="auto"`` holds back contiguous blocks of ``block`` slices,
    every ``test_every``-th block (``split`` 1), so a test slice's nearest training slices are
    some slices away; ``"train"`` or ``"test"`` puts every slice there (a new patient's scan for
    inference: ``"test"``). Output: ``image (sample, channel, y, x)`` uint8 in radiological
    display orientation, ``split``, ``label`` 0, ``slice`` (the source slice index); the source's
    attrs plus ``kind="images"``, ``window`` ``[lo, hi]``, ``window_mode`` (``auto`` or
    ``fixed``), ``window_units`` (``HU`` for CT), ``display_up``/``display_left``.
    """
    where = ds.attrs.get("source", "volume")
    vol = np.asarray(ds["image"].values, dtype=np.float32)  # (S, Y, X)
    if vol.ndim != 3:
        raise DataError(where, f"expected (slice, y, x), got {vol.shape}")
    if size < 8:
        raise ValueError(f"image_size must be at least 8, got {size}")
    if split not in ("auto", "train", "test"):
        raise ValueError(f"split must be auto, train or test, not {split!r}")
    if not np.isfinite(vol).all():
        vol = np.nan_to_num(vol, nan=float(np.nanmin(vol)))
    lo, hi = _window(vol, window)
    vis = np.clip((vol - lo) / (hi - lo), 0.0, 1.0)  # (S, Y, X) in [0, 1]
    means = vis.mean(axis=(1, 2))
    keep = np.flatnonzero(means >= min_signal * means.max()) if means.max() > 0 else np.arange(0)
    if len(keep) == 0:
        raise DataError(where, f"no slice has signal inside the window [{lo:g}, {hi:g}]")
    transpose, flip_y, flip_x, plane = display_transform(ds)
    frames = vis[keep].transpose(0, 2, 1) if transpose else vis[keep]
    frames = frames[:, ::-1] if flip_y else frames
    frames = frames[:, :, ::-1] if flip_x else frames
    images = _resize(_square_crop(np.ascontiguousarray(frames)), size)  # (S', size, size)
    if split == "auto":
        codes = ((np.arange(len(keep)) // block) % test_every == test_every // 2).astype(np.int8)
    else:
        codes = np.full(len(keep), 0 if split == "train" else 1, np.int8)
    up, left = _UP_LEFT.get(plane, ("as stored", "as stored"))
    attrs = {k: v for k, v in ds.attrs.items() if k != "kind"}
    return xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), images[:, None]),
            "split": ("sample", codes, {"flag_values": [0, 1], "flag_meanings": "train test"}),
            "label": ("sample", np.zeros(len(keep), dtype=np.int64)),
            "slice": ("sample", keep.astype(np.int64)),
        },
        attrs={
            **attrs,
            "kind": "images",
            "classes": ["slice"],
            "window": [float(lo), float(hi)],
            "window_mode": "auto" if window is None else "fixed",
            "window_units": str(ds["image"].attrs.get("units", "")),
            "display_up": up,
            "display_left": left,
        },
    )
