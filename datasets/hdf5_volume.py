"""Volumes in HDF5 files as canonical ``slice, y, x`` medical datasets (:mod:`datasets.medical`).

fastMRI's files are the common case: ``reconstruction_rss`` (multi-coil) or
``reconstruction_esc`` (single-coil) hold the reference magnitude images, ``kspace`` the raw
data (``slice, [coil,] ky, kx``, complex), ``ismrmrd_header`` the acquisition's XML header. In
that order of preference:

1. a reconstruction, as stored;
2. else (fastMRI's test files carry none) the magnitude image of ``kspace``: a centred inverse
   2-D FFT per coil, combined by root-sum-of-squares, then cropped about the centre to the
   header's ``reconSpace`` matrix (fastMRI's 320 x 320 for the knee) when that is smaller;
3. else the one real 2-D or 3-D array in the file, whatever its name (several are refused,
   naming them).

Rows are ``y`` and columns ``x`` as stored (display with ``origin="upper"``, as for DICOM).
``spacing_mm`` comes from the header's ``reconSpace`` field of view over its matrix (the slice
spacing from its ``z`` extent), else NaN.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError

__all__ = ["load_hdf5_volume"]

_RECONSTRUCTIONS = ("reconstruction_rss", "reconstruction_esc", "reconstruction")


def load_hdf5_volume(path: str | Path) -> xr.Dataset:
    """The volume in the HDF5 file ``path`` (see the module docstring for which array)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            name, volume, recon = _volume(path, f)
            header = _header(f)
            acquisition = _plain(f.attrs.get("acquisition"))  # fastMRI: CORPD_FBK, AXT2, ...
    except DataError:
        raise
    except OSError as exc:
        raise DataError(path, f"cannot read as HDF5 ({str(exc).splitlines()[0]})") from None
    if name == "kspace":
        volume = _crop(volume, _recon_matrix(header))
    if volume.ndim == 2:
        volume = volume[None]
    if not np.isfinite(volume).all():
        raise DataError(path, f"{name!r} holds NaN or infinite values")
    return xr.Dataset(
        {"image": (("slice", "y", "x"), volume.astype(np.float32))},
        attrs={
            "kind": "medical",
            "source": str(path),
            "spacing_mm": _spacing(header, volume.shape),
            "modality": "MR" if recon or name == "kspace" else "",
            "hdf5_array": name,
            **({"acquisition": acquisition} if acquisition is not None else {}),
        },
    )


def _volume(path: Path, f) -> tuple[str, np.ndarray, bool]:
    for key in _RECONSTRUCTIONS:
        if key in f and getattr(f[key], "ndim", 0) in (2, 3):
            return key, np.asarray(f[key][()], dtype=np.float32), True
    if "kspace" in f:
        return "kspace", _root_sum_of_squares(path, f["kspace"]), False
    arrays: list[str] = []
    f.visititems(
        lambda name, obj: (
            arrays.append(name)
            if getattr(obj, "ndim", 0) in (2, 3) and obj.dtype.kind in "biuf"
            else None
        )
    )
    if len(arrays) != 1:
        found = f"several ({', '.join(arrays[:5])})" if arrays else "none"
        raise DataError(
            path,
            f"expected one real 2-D or 3-D array (or fastMRI's kspace / reconstruction_rss / "
            f"reconstruction_esc); found {found}",
        )
    return arrays[0], np.asarray(f[arrays[0]][()], dtype=np.float32), False


def _root_sum_of_squares(path: Path, kspace) -> np.ndarray:
    """``|IFFT2(kspace)|`` per slice, root-sum-of-squares over coils (centred, orthonormal)."""
    if kspace.dtype.kind != "c" or kspace.ndim not in (3, 4):
        raise DataError(path, f"'kspace' is {kspace.dtype} {kspace.shape}; expected complex "
                              "(slice, [coil,] ky, kx)")  # fmt: skip
    out = np.empty((kspace.shape[0], *kspace.shape[-2:]), np.float32)
    for s in range(kspace.shape[0]):  # one slice at a time: multi-coil files are large
        k = np.asarray(kspace[s], np.complex64)
        k = k[None] if k.ndim == 2 else k
        image = np.fft.fftshift(
            np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
        )
        out[s] = np.sqrt((np.abs(image) ** 2).sum(axis=0))
    return out


def _crop(volume: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return volume
    h, w = min(size[0], volume.shape[-2]), min(size[1], volume.shape[-1])
    top, left = (volume.shape[-2] - h) // 2, (volume.shape[-1] - w) // 2
    return volume[..., top : top + h, left : left + w]


def _header(f) -> ET.Element | None:
    if "ismrmrd_header" not in f:
        return None
    raw = f["ismrmrd_header"][()]
    try:
        return ET.fromstring(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (ET.ParseError, UnicodeDecodeError):
        return None


def _find(header: ET.Element | None, *names: str) -> float | None:
    node = header
    for name in names:
        if node is None:
            return None
        node = next((c for c in node.iter() if c.tag.rsplit("}", 1)[-1] == name), None)
    try:
        return float(node.text) if node is not None and node.text else None
    except ValueError:
        return None


def _recon_matrix(header: ET.Element | None) -> tuple[int, int] | None:
    """(rows, columns) of ``reconSpace``'s matrix: its ``y`` by its ``x``."""
    x, y = (_find(header, "reconSpace", "matrixSize", a) for a in ("x", "y"))
    return (int(y), int(x)) if x and y else None


def _spacing(header: ET.Element | None, shape: tuple[int, ...]) -> list[float]:
    fov = [_find(header, "reconSpace", "fieldOfView_mm", a) for a in ("z", "y", "x")]
    matrix = _recon_matrix(header)
    if matrix is None or None in fov:
        return [float("nan")] * 3
    return [float(fov[0]), float(fov[1]) / matrix[0], float(fov[2]) / matrix[1]]


def _plain(value) -> str | None:
    """A text attribute as ``str`` (patient ids and other attributes are not copied)."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None
