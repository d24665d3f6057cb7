"""Medical volumes as canonical ``xarray.Dataset``s: NIfTI (nibabel) and DICOM series (pydicom).

Canonical form: dims ``slice, y, x``; variable ``image`` float32 (Hounsfield units for CT, in
``image.attrs["units"]``); dataset attrs ``kind="medical"``, ``source``, ``spacing_mm`` (one value
per dim, in dim order ``slice, y, x``) and orientation information.

Array orientation, NIfTI: the volume is first reoriented to the closest canonical RAS+ voxel
order (array axes i, j, k increase toward patient Right, Anterior, Superior). Slices are then
taken along one axis and the in-slice axes keep increasing toward R/A/S:

==========  ========  =============  =============
axis        slice     y              x
==========  ========  =============  =============
axial       k (S)     j (A)          i (R)
coronal     j (A)     k (S)          i (R)
sagittal    i (R)     k (S)          j (A)
==========  ========  =============  =============

so ``y`` index 0 is the posterior/inferior edge: display with ``origin="lower"``. The slices as
image samples (:mod:`datasets.slices`, ``stdiff ingest --kind images``) are turned to the
radiological display instead (anterior or superior up, the patient's right on the left).

DICOM: slices are ordered along the slice normal (row x column direction cosines), ``y`` and
``x`` are the stored rows and columns.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.errors import one_line as _why

__all__ = ["load_dicom", "load_nifti"]

# axis -> (transpose of the RAS+ array (i, j, k) into (slice, y, x))
_NIFTI_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (2, 1, 0),
    "coronal": (1, 2, 0),
    "sagittal": (0, 2, 1),
}


# ------------------------------------------------------------------------------------------ NIfTI


def load_nifti(path: str | Path, *, axis: str = "axial") -> xr.Dataset:
    """A 3-D NIfTI-1/2 volume (``.nii`` or ``.nii.gz``; also FreeSurfer's MGH, ``.mgz`` /
    ``.mgh``) as slices along ``axis``.

    The volume is reoriented with :func:`nibabel.as_closest_canonical` (RAS+) and read with
    ``get_fdata(dtype=float32)`` (scale slope/intercept applied). A 4-D file with a single volume
    is accepted; more volumes raise :class:`DataError`. Attrs: ``spacing_mm`` (slice, y, x, from
    the reoriented affine), ``orientation`` (axis codes after reorientation, "RAS"),
    ``original_orientation`` (as stored, e.g. "LPS"), ``affine`` (the reoriented 4x4 voxel-to-mm
    affine, flattened row-major), ``axis``, ``kind``, ``source``.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    if axis not in _NIFTI_AXES:
        raise DataError(path, f"axis must be one of {sorted(_NIFTI_AXES)}, not {axis!r}")
    if not path.is_file():
        raise DataError(path, "no such file")
    read_errors = (ImageFileError, OSError, EOFError, ValueError, zlib.error)
    try:
        img = nib.load(path)
    except read_errors as err:
        raise DataError(path, f"not a readable NIfTI file ({_why(err)})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image | nib.MGHImage):
        raise DataError(path, f"not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        img = img.slicer[(..., *([0] * (len(shape) - 3)))]
    elif len(shape) == 4:
        raise DataError(
            path,
            f"a 4-D series of {shape[3]} volumes (fMRI, diffusion, multi-echo; shape {shape}); "
            "save one 3-D volume first (nibabel: img.slicer[..., k])",
        )
    elif len(shape) != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {shape}")
    if 0 in img.shape:
        raise DataError(path, f"the volume is empty (shape {tuple(img.shape)}); nothing to ingest")
    original = "".join(nib.aff2axcodes(img.affine))
    try:
        canon = nib.as_closest_canonical(img)
        data = canon.get_fdata(dtype=np.float32)
    except read_errors as err:
        raise DataError(path, f"cannot read the voxel data ({_why(err)})") from err
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise DataError(
            path,
            f"{bad} voxel(s) are NaN or infinite (e.g. outside a brain mask); set them to "
            "the background value (often 0) before ingesting",
        )
    order = _NIFTI_AXES[axis]
    voxel = nib.affines.voxel_sizes(canon.affine)
    return xr.Dataset(
        {"image": (("slice", "y", "x"), np.ascontiguousarray(data.transpose(order)))},
        attrs={
            "kind": "medical",
            "source": str(path),
            "axis": axis,
            "spacing_mm": [float(voxel[i]) for i in order],
            "orientation": "".join(nib.aff2axcodes(canon.affine)),
            "original_orientation": original,
            "affine": [float(v) for v in np.asarray(canon.affine).ravel()],
        },
    )


# ------------------------------------------------------------------------------------------ DICOM


def _read_dicom(file: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(file, force=False)
    except InvalidDicomError as err:
        raise DataError(file, f"not a DICOM file ({_why(err)})") from err
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise DataError(file, f"unreadable DICOM file ({_why(err)})") from err


def _pixels(ds: Any, file: Path) -> np.ndarray:
    if "PixelData" not in ds:
        raise DataError(file, "DICOM file has no PixelData")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataError(file, f"colour DICOM (SamplesPerPixel={ds.SamplesPerPixel}) unsupported")
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for bad/unsupported pixel data
        raise DataError(file, f"cannot decode PixelData ({_why(err)})") from err
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


def _normal(ds: Any) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _slice_order(datasets: list[Any], files: list[Path]) -> tuple[list[int], float | None]:
    """Indices sorting the slices, and the slice spacing from positions (None if unknown)."""
    normal = _normal(datasets[0])
    positions = [d.get("ImagePositionPatient") for d in datasets]
    if normal is not None and all(p is not None and len(p) == 3 for p in positions):
        proj = np.array([float(np.dot(normal, np.asarray(p, float))) for p in positions])
        order = [int(i) for i in np.argsort(proj, kind="stable")]
        if len(order) > 1:
            steps = np.diff(proj[order])
            dup = int(np.argmin(steps))
            if steps[dup] <= 1e-6:
                raise DataError(
                    files[order[dup + 1]],
                    f"same slice position as {files[order[dup]].name} "
                    f"({proj[order[dup]]:.3f} mm along the normal)",
                )
            return order, float(np.median(steps))
        return order, None
    numbers = [d.get("InstanceNumber") for d in datasets]
    if all(n is not None for n in numbers):
        return [int(i) for i in np.argsort([int(n) for n in numbers], kind="stable")], None
    return list(range(len(datasets))), None


def load_dicom(path: str | Path) -> xr.Dataset:
    """A DICOM file or a folder holding one series as a ``slice, y, x`` float32 volume.

    Every regular file in the folder (names starting with "." and ``DICOMDIR`` skipped) must be
    DICOM (``dcmread(force=False)``); all must share one SeriesInstanceUID and one Rows x Columns.
    Slices are sorted by ImagePositionPatient projected on the slice normal (fallback:
    InstanceNumber, then file name); RescaleSlope/RescaleIntercept are applied per slice (units
    "HU" for Modality CT). A single multi-frame file gives one slice per frame.
    Attrs: ``spacing_mm`` (slice spacing from positions, else SpacingBetweenSlices or
    SliceThickness, else NaN; then PixelSpacing rows, columns), ``modality``, ``series_uid``,
    ``image_orientation_patient``, ``image_position_patient`` (first slice), ``kind``, ``source``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
        )
        if not files:
            raise DataError(path, "folder holds no DICOM files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(path, "no such file or folder")

    datasets = [_read_dicom(f) for f in files]
    uids = [str(d.get("SeriesInstanceUID", "")) for d in datasets]
    if len(set(uids)) > 1:
        count = {u: uids.count(u) for u in dict.fromkeys(uids)}
        label = {
            u: str(d.get("SeriesDescription", "")).strip()
            for u, d in zip(uids, datasets, strict=True)
        }
        shown = "; ".join(
            f"{u} ({n} file{'s' * (n > 1)}{', ' + repr(label[u]) if label[u] else ''})"
            for u, n in sorted(count.items(), key=lambda kv: -kv[1])[:4]
        )
        raise DataError(
            path,
            f"{len(count)} series in one folder ({shown}); put each series in its own folder "
            "and ingest that one",
        )

    arrays = [_pixels(d, f) for d, f in zip(datasets, files, strict=True)]
    if len(arrays) == 1 and arrays[0].ndim == 3:  # one multi-frame file
        volume = arrays[0]
        order, slice_step = list(range(volume.shape[0])), None
    else:
        for a, f in zip(arrays, files, strict=True):
            if a.ndim != 2:
                raise DataError(f, f"multi-frame file ({a.shape[0]} frames) inside a series folder")
            if a.shape != arrays[0].shape:
                raise DataError(
                    f,
                    f"slice is {a.shape[0]}x{a.shape[1]} but {files[0].name} is "
                    f"{arrays[0].shape[0]}x{arrays[0].shape[1]}",
                )
        order, slice_step = _slice_order(datasets, files)
        volume = np.stack([arrays[i] for i in order])

    first = datasets[order[0]] if len(datasets) > 1 else datasets[0]
    if slice_step is None:
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            if first.get(key) is not None:
                slice_step = float(first.get(key))
                break
    pixel = first.get("PixelSpacing") or first.get("ImagerPixelSpacing")
    row_mm, col_mm = (float(pixel[0]), float(pixel[1])) if pixel else (float("nan"), float("nan"))
    modality = str(first.get("Modality", ""))
    image_attrs = {"units": "HU"} if modality == "CT" else {}
    iop, ipp = first.get("ImageOrientationPatient"), first.get("ImagePositionPatient")
    return xr.Dataset(
        {"image": (("slice", "y", "x"), volume, image_attrs)},
        attrs={
            "kind": "medical",
            "source": str(path),
            "spacing_mm": [float("nan") if slice_step is None else slice_step, row_mm, col_mm],
            "modality": modality,
            "series_uid": uids.pop(),
            "image_orientation_patient": [float(v) for v in iop] if iop else [],
            "image_position_patient": [float(v) for v in ipp] if ipp else [],
        },
    )
