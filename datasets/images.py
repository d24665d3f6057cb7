"""Image sources as canonical ``xarray.Dataset``s: idx (MNIST / Fashion-MNIST), image folders, NPZ.

Every loader returns dims ``sample, channel, y, x`` with variables

* ``image`` uint8 (float32 where the source holds non-8-bit data),
* ``label`` int64 (sample),
* ``split`` int8 (sample), 0 = train, 1 = test, with CF ``flag_values``/``flag_meanings`` attrs,

and dataset attrs ``kind="images"``, ``source`` (the path read) and ``classes`` (one name per label).
Malformed input raises :class:`datasets.errors.DataError` naming the file.
"""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from stdiff.datasets.errors import DataError


def _why(err: BaseException) -> str:
    """The exception as one line: ``Type: message`` with whitespace runs collapsed."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


__all__ = [
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "load_idx_images",
    "load_image_folder",
    "load_mnist_folder",
    "load_npz",
    "read_idx",
]

DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# idx dtype codes (third magic byte) -> big-endian numpy dtype
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_SPLITS = {"train": 0, "test": 1}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


# --------------------------------------------------------------------------------------------- idx


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by suffix or by the 1f 8b signature)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read: {err.strerror or err}") from err
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise DataError(path, f"corrupt or truncated gzip data ({_why(err)})") from err
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (raw or ``.gz``) into an array of its native dtype and shape.

    The header is a big-endian magic ``00 00 <dtype code> <ndim>`` (``0x00000803`` for uint8
    images, ``0x00000801`` for uint8 labels), then ``ndim`` big-endian uint32 sizes, then the data.
    Raises :class:`DataError` on a wrong magic, an unknown dtype code, corrupt or truncated gzip,
    or data shorter or longer than the sizes say.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(path, f"not an idx file: {len(buf)} bytes, shorter than the 4-byte magic")
    zero, code, ndim = int.from_bytes(buf[:2], "big"), buf[2], buf[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            path,
            f"not an idx file: magic 0x{int.from_bytes(buf[:4], 'big'):08x} "
            "(expected 0x0000TTDD with dtype code TT in 08,09,0b,0c,0d,0e and DD >= 1 dims)",
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(path, f"truncated header: {len(buf)} bytes, {ndim} dims need {header}")
    shape = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header
    if got != expected:
        kind = "shorter" if got < expected else "longer"
        raise DataError(
            path,
            f"data is {kind} than the header says: {got} bytes for shape {shape} "
            f"of {dtype.name} ({expected} bytes)",
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


# ---------------------------------------------------------------------------------------- helpers


def _split_code(split: int | str, where: str | Path) -> int:
    if isinstance(split, str):
        if split not in _SPLITS:
            raise DataError(where, f"split must be 'train', 'test', 0 or 1, not {split!r}")
        return _SPLITS[split]
    if split not in (0, 1):
        raise DataError(where, f"split must be 'train', 'test', 0 or 1, not {split!r}")
    return int(split)


def _as_image_dtype(arr: np.ndarray) -> np.ndarray:
    """uint8 stays uint8 (bool becomes 0/1 uint8); anything else becomes float32."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    return arr.astype(np.float32)


def _as_labels(labels: np.ndarray, n: int, where: str | Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(where, f"labels must be one per sample (1-D), got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise DataError(where, "labels must be integers, got non-integral floats")
    elif labels.dtype.kind not in "iub":
        raise DataError(where, f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise DataError(where, f"{labels.shape[0]} labels for {n} images")
    return labels.astype(np.int64)


def _default_classes(labels: np.ndarray) -> list[str]:
    top = int(labels.max()) + 1 if labels.size else 0
    return [str(i) for i in range(max(top, 0))]


def _images_dataset(
    image: np.ndarray,
    label: np.ndarray,
    split: np.ndarray,
    *,
    source: str | Path,
    classes: Sequence[str],
    **attrs: object,
) -> xr.Dataset:
    """Assemble the canonical images dataset from (sample, channel, y, x) arrays."""
    return xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), image),
            "label": (("sample",), label, {"long_name": "class index into attrs['classes']"}),
            "split": (
                ("sample",),
                split.astype(np.int8),
                {"flag_values": [0, 1], "flag_meanings": "train test"},
            ),
        },
        attrs={"kind": "images", "source": str(source), "classes": list(classes), **attrs},
    )


def _idx_split_from_name(path: Path) -> int | None:
    name = path.name.lower()
    if "t10k" in name or "test" in name:
        return 1
    if "train" in name:
        return 0
    return None


def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    img = read_idx(images)
    if img.ndim != 3:
        raise DataError(images, f"idx images must be 3-D (sample, y, x), got shape {img.shape}")
    lab = read_idx(labels)
    if lab.ndim != 1:
        raise DataError(labels, f"idx labels must be 1-D (sample,), got shape {lab.shape}")
    if lab.shape[0] != img.shape[0]:
        raise DataError(
            labels, f"{lab.shape[0]} labels but {images.name} holds {img.shape[0]} images"
        )
    return _as_image_dtype(img[:, None]), lab.astype(np.int64)


def load_idx_images(
    images: str | Path,
    labels: str | Path,
    *,
    split: int | str | None = None,
    classes: Sequence[str] | None = None,
) -> xr.Dataset:
    """One idx images file and its labels file as a canonical images dataset.

    ``split`` is 0/"train" or 1/"test"; when None it is taken from the images file name
    (``t10k``/``test`` -> test, ``train`` -> train) and defaults to train otherwise.
    ``classes`` defaults to the digit names "0".."9" (or "0".."K-1" for labels above 9).
    """
    images, labels = Path(images), Path(labels)
    if split is None:
        code = _idx_split_from_name(images)
        code = 0 if code is None else code
    else:
        code = _split_code(split, images)
    img, lab = _read_idx_pair(images, labels)
    if classes is None:
        classes = DIGIT_CLASSES if lab.size == 0 or lab.max() < 10 else _default_classes(lab)
    return _images_dataset(
        img, lab, np.full(lab.shape, code, np.int8), source=images, classes=classes
    )


def _find_idx(folder: Path, split: str, what: str) -> Path:
    """``<split>-<what>-idxN-ubyte`` (or with ``.idxN``), raw or gzipped."""
    ndim = 3 if what == "images" else 1
    pattern = re.compile(rf"^{split}-{what}[-.]idx{ndim}-ubyte(\.gz)?$", re.IGNORECASE)
    found = sorted(p for p in folder.iterdir() if p.is_file() and pattern.match(p.name))
    if not found:
        raise DataError(
            folder, f"no {split}-{what}-idx{ndim}-ubyte(.gz) file (MNIST layout expected)"
        )
    return found[0]  # the raw file sorts before its .gz


def _looks_like_fashion(folder: Path) -> bool:
    return any("fashion" in part.lower() for part in folder.resolve().parts)


def load_mnist_folder(folder: str | Path, *, classes: Sequence[str] | None = None) -> xr.Dataset:
    """A folder holding the four MNIST-layout idx files as one dataset, train then test.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``; ``.idx3`` spellings accepted). ``classes``
    defaults to the Fashion-MNIST names when the folder path mentions "fashion", else "0".."9".
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    parts = []
    for split in ("train", "t10k"):
        parts.append(
            _read_idx_pair(_find_idx(folder, split, "images"), _find_idx(folder, split, "labels"))
        )
    (train_img, train_lab), (test_img, test_lab) = parts
    if train_img.shape[1:] != test_img.shape[1:]:
        raise DataError(
            folder,
            f"train images are {train_img.shape[2:]} but test images {test_img.shape[2:]}",
        )
    image = np.concatenate([train_img, test_img])
    label = np.concatenate([train_lab, test_lab])
    split = np.concatenate([np.zeros(len(train_lab), np.int8), np.ones(len(test_lab), np.int8)])
    if classes is None:
        classes = FASHION_MNIST_CLASSES if _looks_like_fashion(folder) else DIGIT_CLASSES
    return _images_dataset(image, label, split, source=folder, classes=classes)


# ----------------------------------------------------------------------------------- image folder


def _pil_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` is an int (square) or ``(height, width)``; Pillow wants ``(width, height)``."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(width), int(height))


def load_image_folder(
    folder: str | Path,
    *,
    size: int | tuple[int, int] | None = None,
    mode: str = "L",
    split: int | str = "train",
) -> xr.Dataset:
    """PNG/JPEG images in class sub-folders (``folder/<class>/<image>``) as one dataset.

    Class names are the sub-folder names, sorted; label ``k`` is the ``k``-th name (kept in attrs
    ``classes``). Files inside a class folder are read in sorted order; names starting with "."
    and files of other suffixes are ignored. ``mode`` is ``"L"`` (grey, 1 channel) or ``"RGB"``
    (3 channels). ``size`` (an int or ``(height, width)``) resizes every image (Lanczos);
    without it all images must share the first image's size. Every image lands in ``split``.
    """
    folder = Path(folder)
    if mode not in ("L", "RGB"):
        raise DataError(folder, f"mode must be 'L' or 'RGB', not {mode!r}")
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    from PIL import Image, UnidentifiedImageError

    code = _split_code(split, folder)
    target = _pil_size(size)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(folder, "no class sub-folders (expected folder/<class>/<image>.png)")
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for k, class_dir in enumerate(class_dirs):
        files = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        for file in files:
            try:
                with Image.open(file) as im:
                    im.load()
                    im = im.convert(mode)
                    if target is not None and im.size != target:
                        im = im.resize(target, Image.Resampling.LANCZOS)
                    arr = np.asarray(im, dtype=np.uint8)
            except (
                UnidentifiedImageError,
                Image.DecompressionBombError,
                OSError,
                ValueError,
            ) as err:
                raise DataError(file, f"not a readable image ({_why(err)})") from err
            hw = arr.shape[:2]
            if first is None:
                first = (file, hw)
            elif hw != first[1]:
                raise DataError(
                    file,
                    f"image is {hw[0]}x{hw[1]} (height x width) but {first[0].name} is "
                    f"{first[1][0]}x{first[1][1]}; pass size= to resize",
                )
            arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(k)
    if not arrays:
        raise DataError(folder, "no .png/.jpg/.jpeg images in the class sub-folders")
    image = np.stack(arrays)
    label = np.asarray(labels, np.int64)
    return _images_dataset(
        image,
        label,
        np.full(label.shape, code, np.int8),
        source=folder,
        classes=[d.name for d in class_dirs],
    )


# -------------------------------------------------------------------------------------------- npz

_IMAGE_KEYS = ("images", "x", "data")
_LABEL_KEYS = ("labels", "y", "targets")


def _pick_key(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    lower = {k.lower(): k for k in keys}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def _to_sample_channel_y_x(arr: np.ndarray, where: str | Path, key: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W); (N, C, H, W) unchanged.

    A 4-D array is channels-last when its last dim is 1, 3 or 4 and its second dim is not;
    otherwise it is taken as channels-first (so ``(N, 3, 4, 4)`` reads as 3 channels of 4x4).
    """
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
            return arr.transpose(0, 3, 1, 2)
        return arr
    raise DataError(
        where, f"{key!r} must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {arr.shape}"
    )


def load_npz(
    path: str | Path,
    *,
    images_key: str | None = None,
    labels_key: str | None = None,
    split: int | str = "train",
    classes: Sequence[str] | None = None,
) -> xr.Dataset:
    """Images and labels from a NumPy ``.npz`` archive.

    Keys default to the first present (case-insensitive) of ``images``/``x``/``data`` and
    ``labels``/``y``/``targets``. Failing those, a Keras-style archive with ``x_train``/``y_train``
    (and optionally ``x_test``/``y_test``) loads as train then test. Image layouts: see
    :func:`_to_sample_channel_y_x` (channels-last if the last dim is in {1, 3, 4} and the second
    is not). uint8 images stay uint8, others become float32. All samples land in ``split``
    except in the Keras layout.
    """
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(path, f"not a readable .npz archive ({_why(err)})") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(path, "a single .npy array, not an .npz archive with images and labels")
    with npz:
        keys = list(npz.files)
        ik = images_key if images_key is not None else _pick_key(keys, _IMAGE_KEYS)
        lk = labels_key if labels_key is not None else _pick_key(keys, _LABEL_KEYS)
        pairs: list[tuple[str, str, int]]
        if images_key is None and labels_key is None and ik is None and lk is None:
            if "x_train" in keys and "y_train" in keys:
                pairs = [("x_train", "y_train", 0)]
                if "x_test" in keys and "y_test" in keys:
                    pairs.append(("x_test", "y_test", 1))
            else:
                pairs = []
        else:
            pairs = [(ik, lk, _split_code(split, path))] if ik and lk else []
        for want in (images_key, labels_key):
            if want is not None and want not in keys:
                raise DataError(path, f"no key {want!r}; keys present: {sorted(keys)}")
        if not pairs:
            missing = []
            if ik is None:
                missing.append("images (images|x|data)")
            if lk is None:
                missing.append("labels (labels|y|targets)")
            raise DataError(path, f"no {' or '.join(missing)} key; keys present: {sorted(keys)}")
        images, labels, splits = [], [], []
        for ikey, lkey, code in pairs:
            try:
                img, lab = npz[ikey], npz[lkey]
            except (ValueError, OSError, zipfile.BadZipFile, zlib.error) as err:
                raise DataError(path, f"cannot read {ikey!r}/{lkey!r} ({_why(err)})") from err
            img = _to_sample_channel_y_x(img, path, ikey)
            images.append(_as_image_dtype(img))
            labels.append(_as_labels(lab, img.shape[0], path))
            splits.append(np.full(img.shape[0], code, np.int8))
    if len(images) == 2 and images[0].shape[1:] != images[1].shape[1:]:
        raise DataError(path, f"x_train is {images[0].shape[1:]} but x_test {images[1].shape[1:]}")
    if len(images) == 2 and images[0].dtype != images[1].dtype:
        images = [a.astype(np.float32) for a in images]
    label = np.concatenate(labels)
    if classes is None:
        classes = _default_classes(label)
    return _images_dataset(
        np.concatenate(images), label, np.concatenate(splits), source=path, classes=classes
    )
