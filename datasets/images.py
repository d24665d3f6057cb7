"""Image sources as canonical ``xarray.Dataset``s: idx (MNIST / Fashion-MNIST), image folders, NPZ.

Every loader returns dims ``sample, channel, y, x`` with variables

* ``image`` uint8 (float32 where the source holds non-8-bit data, with ``image_mean`` and
  ``image_std`` (channel) mapping its pixel range onto [-1, 1], as 0..255 is for uint8),
* ``label`` int64 (sample),
* ``split`` int8 (sample), 0 = train, 1 = test, 2 = validation, with CF
  ``flag_values``/``flag_meanings`` attrs,

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
from stdiff.datasets.errors import one_line as _why
from stdiff.datasets.image_files import IMAGE_SUFFIXES, image_files, read_image, stack_images
from stdiff.datasets.store import float32_array

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
_SPLITS = {"train": 0, "test": 1, "valid": 2}


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
    code = _SPLITS.get(split) if isinstance(split, str) else split
    if code not in (0, 1, 2):
        raise DataError(where, f"split must be 'train', 'test', 'valid', 0, 1 or 2, not {split!r}")
    return int(code)


def _as_image_dtype(arr: np.ndarray) -> np.ndarray:
    """uint8 stays uint8 (bool becomes 0/255 uint8, as a 1-bit PNG reads); anything else
    becomes float32."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    return float32_array(arr)  # beyond float32's range: infinite, refused with the NaN


def _pixel_scale(image: np.ndarray) -> dict[str, tuple]:
    """``image_mean`` / ``image_std`` (channel) of float images: the midpoint and half range of
    each channel over all the images, so that ``(x - mean) / std`` spans [-1, 1] as uint8
    pixels do with ``x / 127.5 - 1`` (a fixed pixel scale, like 0..255, not a statistic: every
    split is inside it). A constant channel gets a half range of 1."""
    lo = image.min(axis=(0, 2, 3)).astype(np.float64)
    hi = image.max(axis=(0, 2, 3)).astype(np.float64)
    half = np.where(hi > lo, (hi - lo) / 2, 1.0)
    attrs = {"long_name": "pixel scale: (image - image_mean) / image_std spans [-1, 1]"}
    return {
        "image_mean": ("channel", ((hi + lo) / 2).astype(np.float32), attrs),
        "image_std": ("channel", half.astype(np.float32), attrs),
    }


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
    """Assemble the canonical images dataset from (sample, channel, y, x) arrays; refuses an
    empty set and pixels that are NaN or infinite (naming the first such sample)."""
    if image.shape[0] == 0:
        raise DataError(source, "no images (0 samples)")
    if image.dtype.kind == "f":
        bad = ~np.isfinite(image).reshape(image.shape[0], -1).all(1)
        if bad.any():
            raise DataError(
                source,
                f"{int(bad.sum())} image(s) hold NaN or infinite pixels (the first is "
                f"sample {int(np.flatnonzero(bad)[0])}); images must be finite (pixels beyond "
                "float32's range, about 3.4e38, are infinite here)",
            )
    scale = _pixel_scale(image) if image.dtype.kind == "f" else {}
    return xr.Dataset(
        {
            "image": (("sample", "channel", "y", "x"), image),
            "label": (("sample",), label, {"long_name": "class index into attrs['classes']"}),
            "split": (
                ("sample",),
                split.astype(np.int8),
                {"flag_values": [0, 1, 2], "flag_meanings": "train test valid"},
            ),
            **scale,
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


def _find_idx(folder: Path, split: str, what: str) -> Path | None:
    """``<split>-<what>-idxN-ubyte`` (or with ``.idxN``), raw or gzipped; None when absent."""
    ndim = 3 if what == "images" else 1
    pattern = re.compile(rf"^{split}-{what}[-.]idx{ndim}-ubyte(\.gz)?$", re.IGNORECASE)
    found = sorted(p for p in folder.iterdir() if p.is_file() and pattern.match(p.name))
    return found[0] if found else None  # the raw file sorts before its .gz


def _idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The images and labels of one split of an MNIST folder, None when it has neither file."""
    images, labels = _find_idx(folder, split, "images"), _find_idx(folder, split, "labels")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        what, ndim = ("images", 3) if images is None else ("labels", 1)
        raise DataError(
            folder, f"no {split}-{what}-idx{ndim}-ubyte(.gz) file (MNIST layout expected)"
        )
    return _read_idx_pair(images, labels)


def _looks_like_fashion(folder: Path) -> bool:
    return any("fashion" in part.lower() for part in folder.resolve().parts)


def load_mnist_folder(
    folder: str | Path,
    *,
    classes: Sequence[str] | None = None,
    split: int | str | None = None,
) -> xr.Dataset:
    """A folder holding MNIST-layout idx files as one dataset, train then test.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``; ``.idx3`` spellings accepted). Either pair
    may be absent (a test set alone, for inference with a model trained elsewhere), not both,
    nor one file of a pair. ``split`` puts every image in that split instead of the files'.
    ``classes`` defaults to the Fashion-MNIST names when the folder path mentions "fashion",
    else "0".."9".
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    parts = {s: _idx_split(folder, s) for s in ("train", "t10k")}
    found = [(code, *p) for code, p in enumerate(parts.values()) if p is not None]
    if not found:
        raise DataError(folder, "no train-* or t10k-* idx files (MNIST layout expected)")
    if len(found) == 2 and found[0][1].shape[1:] != found[1][1].shape[1:]:
        raise DataError(
            folder,
            f"train images are {found[0][1].shape[2:]} but test images {found[1][1].shape[2:]}",
        )
    image = np.concatenate([img for _, img, _ in found])
    label = np.concatenate([lab for _, _, lab in found])
    if split is None:
        codes = np.concatenate([np.full(len(lab), code, np.int8) for code, _, lab in found])
    else:
        codes = np.full(len(label), _split_code(split, folder), np.int8)
    if classes is None:
        classes = FASHION_MNIST_CLASSES if _looks_like_fashion(folder) else DIGIT_CLASSES
    return _images_dataset(image, label, codes, source=folder, classes=classes)


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
    mode: str = "auto",
    split: int | str = "train",
) -> xr.Dataset:
    """PNG/JPEG/TIFF/BMP images in class sub-folders (``folder/<class>/<image>``) as one
    dataset, or the images directly in a folder without sub-folders as unlabelled (label 0,
    class ``unlabelled``).

    Class names are the sub-folder names, sorted; label ``k`` is the ``k``-th name (kept in attrs
    ``classes``). Files inside a class folder are read in sorted order; names starting with "."
    and files of other suffixes are ignored. ``mode`` is ``"L"`` (grey, 1 channel), ``"RGB"``
    (3 channels) or ``"auto"`` (RGB when any image has colour, else grey; an alpha channel is
    dropped). Images of more than 8 bits (16-bit PNG or TIFF, float TIFF) keep their values as
    float32, one channel. ``size`` (an int or ``(height, width)``) resizes every image
    (Lanczos); without it all images must share the first image's size. Every image lands in
    ``split``.
    """
    folder = Path(folder)
    if mode not in ("L", "RGB", "auto"):
        raise DataError(folder, f"mode must be 'L', 'RGB' or 'auto', not {mode!r}")
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    code = _split_code(split, folder)
    target = _pil_size(size)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs and image_files(folder):  # a flat folder: unlabelled images
        class_dirs = [folder]
    if not class_dirs:
        raise DataError(
            folder, "no images (expected folder/<image>.png, or folder/<class>/<image>.png)"
        )
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for k, class_dir in enumerate(class_dirs):
        for file in image_files(class_dir):
            arr = read_image(file, mode, target)
            hw = arr.shape[:2]
            if first is None:
                first = (file, hw)
            elif hw != first[1]:
                raise DataError(
                    file,
                    f"image is {hw[0]}x{hw[1]} (height x width) but {first[0].name} is "
                    f"{first[1][0]}x{first[1][1]}; resize them to one size (stdiff ingest "
                    "--image-size N, or size= in datasets.images.load_image_folder)",
                )
            arrays.append(arr)
            labels.append(k)
    if not arrays:
        raise DataError(folder, f"no {'/'.join(IMAGE_SUFFIXES)} images in the class sub-folders")
    label = np.asarray(labels, np.int64)
    return _images_dataset(
        stack_images(arrays, folder),
        label,
        np.full(label.shape, code, np.int8),
        source=folder,
        classes=["unlabelled"] if class_dirs == [folder] else [d.name for d in class_dirs],
    )


# -------------------------------------------------------------------------------------------- npz

_IMAGE_KEYS = ("images", "x", "data")
_LABEL_KEYS = ("labels", "y", "targets")
# split-named pairs: MedMNIST (``train_images``/``train_labels``), Keras (``x_train``/``y_train``)
_SPLIT_WORDS = {"train": 0, "val": 2, "valid": 2, "validation": 2, "test": 1}
_PAIR_PATTERNS = (("{}_images", "{}_labels"), ("x_{}", "y_{}"))
NO_LABELS = "none"


def _pick_key(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    lower = {k.lower(): k for k in keys}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def _split_pairs(keys: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(images key, labels key, split code)`` for every split-named pair present, train first."""
    lower = {k.lower(): k for k in keys}
    for img_pattern, lab_pattern in _PAIR_PATTERNS:
        pairs = [
            (lower[img_pattern.format(w)], lower[lab_pattern.format(w)], code)
            for w, code in _SPLIT_WORDS.items()
            if img_pattern.format(w) in lower and lab_pattern.format(w) in lower
        ]
        if pairs:
            return sorted(pairs, key=lambda p: (p[2] != 0, p[2]))  # train, test, valid
    return []


def _split_of_key(key: str) -> int:
    """The split a key's name says (``test_images`` -> test), train when it says none."""
    words = re.split(r"[^a-z]+", key.lower())
    return next((_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS), 0)


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
        if arr.shape[1] > 4:  # (N, D, H, W): volumes (e.g. MedMNIST 3D), not images
            raise DataError(
                where,
                f"{key!r} has shape {arr.shape}: volumes, not images (channels must be 1-4); "
                "ingest each volume's slices as images from NIfTI/DICOM instead",
            )
        return arr
    raise DataError(
        where, f"{key!r} must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {arr.shape}"
    )


def _npz_pairs(
    keys: list[str], images_key: str | None, labels_key: str | None, path: Path
) -> list[tuple[str, str | None, int]]:
    """Which arrays to read: ``(images key, labels key or None, split code)``."""
    for want in (images_key, labels_key):
        if want is not None and want != NO_LABELS and want not in keys:
            raise DataError(path, f"no key {want!r}; keys present: {sorted(keys)}")
    if images_key is None and labels_key in (None, NO_LABELS):
        if _pick_key(keys, _IMAGE_KEYS) is None and (pairs := _split_pairs(keys)):
            return [(i, None if labels_key else lab, code) for i, lab, code in pairs]
    ik = images_key if images_key is not None else _pick_key(keys, _IMAGE_KEYS)
    if ik is None and len(keys) == 1:  # np.savez(path, array): one array, ``arr_0``
        ik = keys[0]
    lk = labels_key if labels_key is not None else _pick_key(keys, _LABEL_KEYS)
    if ik is None:
        raise DataError(
            path,
            f"no images (images|x|data or <split>_images|x_<split>) key; keys present: "
            f"{sorted(keys)}; name them with --images-key (and --labels-key, or --labels-key "
            f"{NO_LABELS}: unlabelled images)",
        )
    if lk is None:  # no array holds labels: the images are unlabelled (label 0)
        lk = NO_LABELS
    return [(ik, None if lk == NO_LABELS else lk, _split_of_key(ik))]


def load_npz(
    path: str | Path,
    *,
    images_key: str | None = None,
    labels_key: str | None = None,
    split: int | str | None = None,
    classes: Sequence[str] | None = None,
) -> xr.Dataset:
    """Images and labels from a NumPy ``.npz`` archive (or a ``.npy`` array of images).

    Keys default to the first present (case-insensitive) of ``images``/``x``/``data`` and
    ``labels``/``y``/``targets``. Failing those, split-named pairs load together, train, test then
    validation (``split`` 2): MedMNIST's ``train_images``/``train_labels``, ``val_*``,
    ``test_*``, or Keras's ``x_train``/``y_train``, ``x_test``/``y_test``. ``images_key`` and
    ``labels_key`` name one pair (``labels_key="none"``: unlabelled, label 0; also when no key
    holds labels, and an archive of one array, e.g. ``arr_0``, is images); its split is the
    one its name says (``test_images`` -> test), else train. ``split`` ("train"/"test"/0/1) puts
    every sample in one split instead. Image layouts: see :func:`_to_sample_channel_y_x`. uint8
    images stay uint8, others become float32 (float32 throughout when the pairs' types differ).
    """
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(path, f"not a readable {path.suffix or '.npz'} file ({_why(err)})") from err
    if isinstance(npz, np.ndarray):  # one .npy array: the images, unlabelled
        npz = _OneArray(npz)
    forced = None if split is None else _split_code(split, path)
    images, labels, splits = [], [], []
    with npz:
        for ikey, lkey, code in _npz_pairs(list(npz.files), images_key, labels_key, path):
            try:
                img = _to_sample_channel_y_x(npz[ikey], path, ikey)
                lab = np.zeros(img.shape[0], np.int64) if lkey is None else npz[lkey]
            except DataError:
                raise
            except (ValueError, OSError, zipfile.BadZipFile, zlib.error) as err:
                raise DataError(path, f"cannot read {ikey!r}/{lkey!r} ({_why(err)})") from err
            if images and img.shape[1:] != images[0].shape[1:]:
                raise DataError(path, f"{ikey} is {img.shape[1:]} but the first images "
                                      f"{images[0].shape[1:]}")  # fmt: skip
            images.append(_as_image_dtype(img))
            labels.append(_as_labels(_multilabel_check(lab, path, lkey), img.shape[0], path))
            splits.append(np.full(img.shape[0], code if forced is None else forced, np.int8))
    if len({a.dtype for a in images}) > 1:
        images = [a.astype(np.float32) for a in images]
    label = np.concatenate(labels)
    if classes is None:
        classes = _default_classes(label)
    return _images_dataset(
        np.concatenate(images), label, np.concatenate(splits), source=path, classes=classes
    )


class _OneArray:
    """A ``.npy`` array where :func:`load_npz` expects an archive: one key, ``images``."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.files = array, ["images"]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.array

    def __enter__(self) -> _OneArray:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _multilabel_check(labels: np.ndarray, path: Path, key: str | None) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataError(
            path,
            f"{key!r} holds {labels.shape[1]} labels per image (multi-label); one class per "
            f"image is supported: pass --labels-key {NO_LABELS} to ingest the images unlabelled",
        )
    return labels


# ------------------------------------------------------------------------------ images stores


def require_images_store(ds: xr.Dataset, where: str | Path) -> None:
    """Refuse, in one line that says which ingest to run, a store the image tasks cannot read.

    A ``--kind medical`` volume becomes images by ingesting the store (or its source) again with
    ``--kind images``; other kinds are not images at all."""
    kind = ds.attrs.get("kind")
    if kind == "images" or (kind is None and "image" in ds and "sample" in ds.dims):
        return
    if kind == "medical":
        window = " --window soft_tissue" if ds["image"].attrs.get("units") == "HU" else ""
        name = Path(str(where).rstrip("/")).name.removesuffix(".zarr")
        raise DataError(
            where,
            "a --kind medical volume store (slice, y, x); the image tasks read a volume's slices "
            f"as images: stdiff ingest {where} --kind images --image-size 64{window} "
            f"--out {name}_images.zarr",
        )
    raise DataError(
        where,
        f"a {kind or 'non-image'!r} store, not images: ingest an image source with "
        "`stdiff ingest SOURCE --kind images --out IMAGES.zarr`",
    )
