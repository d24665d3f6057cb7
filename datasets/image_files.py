"""Image files in folders (``datasets.images.load_image_folder``): which files are images, one
image read as 8-bit grey or colour (or float32 when it has more bits: 16-bit PNG, float TIFF),
and a list of them stacked as ``(sample, channel, y, x)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stdiff.datasets.errors import DataError
from stdiff.datasets.errors import one_line as _why

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa")


def read_image(file: Path, mode: str, target: tuple[int, int] | None) -> np.ndarray:
    """One image: uint8 ``(H, W)`` or ``(H, W, 3)`` in ``mode`` (``auto``: as the file has it),
    or float32 ``(H, W)`` for more than 8 bits per pixel (``I;16``, ``I``, ``F``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            im.load()
            deep = im.mode in ("I", "F") or im.mode.startswith("I;16")
            if deep and mode == "RGB":
                raise DataError(file, f"a {im.mode} image (more than 8 bits) has no colour")
            if deep:
                im = im.convert("F")
            else:
                im = im.convert(mode if mode != "auto" else "RGB" if im.mode in _COLOUR_MODES
                                else "L")  # fmt: skip
            if target is not None and im.size != target:
                im = im.resize(target, Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.float32 if deep else np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(file, f"not a readable image ({_why(err)})") from err


def stack_images(arrays: list[np.ndarray], folder: Path) -> np.ndarray:
    """``(sample, channel, y, x)``: grey images repeated to 3 channels when others have colour;
    float32 throughout when any image has more than 8 bits (which refuse colour)."""
    colour = any(a.ndim == 3 for a in arrays)
    deep = any(a.dtype == np.float32 for a in arrays)
    if colour and deep:
        raise DataError(folder, "colour images mixed with images of more than 8 bits")
    if colour:
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
    out = np.stack([a.transpose(2, 0, 1) if a.ndim == 3 else a[None] for a in arrays])
    return out.astype(np.float32) if deep else out


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted; hidden files and other suffixes left out."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def check_folder_fits(folder: Path, size: int | tuple[int, int] | None) -> None:
    """Refuse, before reading any pixel, an image folder (flat, class folders, or split folders
    of class folders) whose images would not fit the available memory at once: about twice
    their pixels (the images read, then stacked), 3 bytes a pixel for 8-bit colour (or its
    float32 size for deeper images), at ``size`` or the first image's size."""
    from PIL import Image, UnidentifiedImageError

    from stdiff.datasets.outputs import available_memory

    files = [p for d in (folder, *folder.rglob("*")) if d.is_dir() for p in image_files(d)]
    avail = available_memory()
    if not files or avail is None:
        return
    try:
        with Image.open(files[0]) as im:
            width, height = im.size
            deep = im.mode in ("I", "F") or im.mode.startswith("I;16")
    except (OSError, UnidentifiedImageError):
        return  # the reader names the bad file
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
    need = 2 * len(files) * height * width * (4 if deep else 3)
    if need > 0.8 * avail:
        raise DataError(
            folder,
            f"{len(files)} images of {height}x{width} would take about {need / 2**30:.3g} GB in "
            f"memory, more than the {avail / 2**30:.3g} GB available; resize them on reading "
            "with --image-size N, or ingest part of the folder",
        )
