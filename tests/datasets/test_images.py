"""Image sources: idx (synthetic and real Fashion-MNIST), class-folder PNG/JPEG, NPZ layouts."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from stdiff.datasets.errors import DataError
from stdiff.datasets.images import (
    FASHION_MNIST_CLASSES,
    load_idx_images,
    load_image_folder,
    load_mnist_folder,
    load_npz,
    read_idx,
)


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = struct.pack(">I", (code << 8) | arr.ndim) + b"".join(
        struct.pack(">I", s) for s in arr.shape
    )
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> Path:
    data = idx_bytes(arr, code)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def digits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 5, 4), dtype=np.uint8), rng.integers(0, 10, 7).astype(np.uint8)


# -------------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, digits, suffix):
    images, labels = digits
    p_img = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    p_lab = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    np.testing.assert_array_equal(read_idx(p_img), images)
    np.testing.assert_array_equal(read_idx(p_lab), labels)
    assert read_idx(p_img).dtype == np.uint8


def test_read_idx_other_dtypes(tmp_path):
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    i16 = np.array([-300, 5, 7000], dtype=np.int16)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.idx", f32, 0x0D)), f32)
    out = read_idx(write_idx(tmp_path / "b.idx", i16, 0x0B))
    np.testing.assert_array_equal(out, i16)
    assert out.dtype == np.int16 and out.dtype.isnative


def test_read_idx_wrong_magic(tmp_path, digits):
    data = bytearray(idx_bytes(digits[0]))
    data[0] = 0x12
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad: not an idx file: magic 0x12000803"):
        read_idx(tmp_path / "bad")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "png")


def test_read_idx_truncated_gzip(tmp_path, digits):
    blob = gzip.compress(idx_bytes(digits[0]))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"x-idx3-ubyte\.gz: corrupt or truncated gzip"):
        read_idx(path)
    path.write_bytes(b"")  # an empty .gz is not gzip data either
    with pytest.raises(DataError, match=r"x-idx3-ubyte\.gz"):
        read_idx(path)


def test_read_idx_short_and_long_data(tmp_path, digits):
    data = idx_bytes(digits[0])
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(DataError, match=r"short: data is shorter than the header says"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(data + b"\0")
    with pytest.raises(DataError, match=r"long: data is longer than the header says"):
        read_idx(tmp_path / "long")
    (tmp_path / "hdr").write_bytes(data[:9])
    with pytest.raises(DataError, match="truncated header"):
        read_idx(tmp_path / "hdr")


def test_load_idx_images_canonical(tmp_path, digits):
    images, labels = digits
    ds = load_idx_images(
        write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images),
        write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels),
    )
    assert ds.image.dims == ("sample", "channel", "y", "x")
    assert ds.image.shape == (7, 1, 5, 4) and ds.image.dtype == np.uint8
    np.testing.assert_array_equal(ds.image.values[:, 0], images)
    assert ds.label.dtype == np.int64 and ds.label.dims == ("sample",)
    assert ds.split.dtype == np.int8 and set(ds.split.values) == {1}  # t10k -> test
    assert ds.split.attrs["flag_values"] == [0, 1, 2]
    assert ds.split.attrs["flag_meanings"] == "train test valid"
    assert ds.attrs["kind"] == "images" and ds.attrs["classes"] == [str(d) for d in range(10)]
    ds = load_idx_images(
        tmp_path / "t10k-images-idx3-ubyte.gz",
        tmp_path / "t10k-labels-idx1-ubyte.gz",
        split="train",
    )
    assert set(ds.split.values) == {0}


def test_idx_count_mismatch(tmp_path, digits):
    images, labels = digits
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:-1])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: 6 labels but .* 7 images"):
        load_idx_images(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte")


def make_mnist_folder(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{split}-images-idx3-ubyte{ext}",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", np.arange(n, dtype=np.uint8) % 10)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_folder(tmp_path, gz):
    ds = load_mnist_folder(make_mnist_folder(tmp_path / "mnist", gz=gz))
    assert ds.image.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal(ds.split.values, [0] * 6 + [1] * 4)
    np.testing.assert_array_equal(ds.label.values, [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    assert ds.attrs["classes"] == [str(d) for d in range(10)]
    fashion = load_mnist_folder(make_mnist_folder(tmp_path / "Fashion-MNIST", gz=gz))
    assert fashion.attrs["classes"] == list(FASHION_MNIST_CLASSES)
    mine = load_mnist_folder(tmp_path / "mnist", classes=list("abcdefghij"))
    assert mine.attrs["classes"][0] == "a"


def test_mnist_folder_errors(tmp_path):
    folder = make_mnist_folder(tmp_path / "m")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"m: no t10k-labels-idx1-ubyte\(\.gz\) file"):
        load_mnist_folder(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"3 labels but t10k-images-idx3-ubyte\.gz holds 4 images"):
        load_mnist_folder(folder)
    with pytest.raises(DataError, match="not a folder"):
        load_mnist_folder(tmp_path / "absent")


# ----------------------------------------------------------------------------------- image folder


def make_image_folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> dict[str, list]:
    from PIL import Image

    rng = np.random.default_rng(2)
    written: dict[str, list] = {}
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True)
        written[cls] = []
        for i, (h, w) in enumerate(shapes):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{i:02d}.{ext}", quality=95)
            written[cls].append(arr)
    return written


def test_image_folder_png_jpeg(tmp_path):
    written = make_image_folder(tmp_path / "imgs", {"dog": [(6, 5)] * 3, "cat": [(6, 5)] * 2})
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path / "imgs", mode="RGB")
    assert ds.attrs["classes"] == ["cat", "dog"]
    assert ds.image.shape == (5, 3, 6, 5) and ds.image.dtype == np.uint8
    np.testing.assert_array_equal(ds.label.values, [0, 0, 1, 1, 1])
    # PNG is lossless: the first image of each class comes back exactly
    np.testing.assert_array_equal(ds.image.values[0].transpose(1, 2, 0), written["cat"][0])
    np.testing.assert_array_equal(ds.image.values[2].transpose(1, 2, 0), written["dog"][0])
    grey = load_image_folder(tmp_path / "imgs", mode="L")
    assert grey.image.shape == (5, 1, 6, 5)
    assert set(grey.split.values) == {0}


def test_image_folder_sizes(tmp_path):
    make_image_folder(tmp_path / "imgs", {"a": [(6, 5), (6, 5)], "b": [(6, 5), (8, 8)]})
    with pytest.raises(DataError, match=r"b/01\.jpg: image is 8x8 .* 00\.png is 6x5; resize them"):
        load_image_folder(tmp_path / "imgs")
    ds = load_image_folder(tmp_path / "imgs", size=(4, 3), mode="L")
    assert ds.image.shape == (4, 1, 4, 3)
    assert load_image_folder(tmp_path / "imgs", size=7, mode="L").image.shape == (4, 1, 7, 7)


def test_image_folder_errors(tmp_path):
    make_image_folder(tmp_path / "imgs", {"a": [(4, 4)]})
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        load_image_folder(tmp_path / "imgs")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "flat")
    with pytest.raises(DataError, match="mode must be"):
        load_image_folder(tmp_path / "imgs", mode="CMYK")


# -------------------------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    ("shape", "to_nchw"),
    [
        ((5, 6, 7), lambda a: a[:, None]),
        ((5, 6, 7, 3), lambda a: a.transpose(0, 3, 1, 2)),
        ((5, 3, 6, 7), lambda a: a),
        ((5, 1, 6, 6), lambda a: a),
        ((5, 6, 6, 1), lambda a: a.transpose(0, 3, 1, 2)),
    ],
)
def test_npz_layouts(tmp_path, shape, to_nchw):
    arr = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=arr, y=np.array([0, 1, 2, 1, 0]))
    ds = load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.image.values, to_nchw(arr))
    assert ds.image.dtype == np.uint8 and ds.label.dtype == np.int64
    assert ds.attrs["classes"] == ["0", "1", "2"]


def test_npz_keys(tmp_path):
    imgs = np.zeros((4, 3, 3), np.float64)
    np.savez(tmp_path / "a.npz", Images=imgs, targets=np.arange(4), extra=np.ones(2))
    ds = load_npz(tmp_path / "a.npz")
    assert ds.image.dtype == np.float32 and ds.sizes["sample"] == 4
    np.savez(tmp_path / "b.npz", pics=imgs, cls=np.arange(4))
    with pytest.raises(DataError, match=r"b\.npz: no images .*keys present: \['cls', 'pics'\]"):
        load_npz(tmp_path / "b.npz")
    assert load_npz(tmp_path / "b.npz", images_key="pics", labels_key="cls").sizes["sample"] == 4
    with pytest.raises(DataError, match="no key 'nope'; keys present"):
        load_npz(tmp_path / "b.npz", images_key="nope", labels_key="cls")


def test_npz_keras_layout(tmp_path):
    np.savez(
        tmp_path / "mnist.npz",
        x_train=np.zeros((3, 4, 4), np.uint8),
        y_train=np.arange(3),
        x_test=np.ones((2, 4, 4), np.uint8),
        y_test=np.arange(2),
    )
    ds = load_npz(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(ds.split.values, [0, 0, 0, 1, 1])
    assert ds.image.shape == (5, 1, 4, 4)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "n.npz", x=np.zeros((4, 3, 3)), y=np.arange(3))
    with pytest.raises(DataError, match=r"n\.npz: 3 labels for 4 images"):
        load_npz(tmp_path / "n.npz")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3)), y=np.arange(4))
    with pytest.raises(DataError, match=r"'x' must be \(N, H, W\)"):
        load_npz(tmp_path / "d.npz")
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(DataError, match=r"t\.npz: not a readable \.npz"):
        load_npz(tmp_path / "t.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"single\.npy: 'images' must be \(N, H, W\)"):
        load_npz(tmp_path / "single.npy")


def test_npy_array_of_images_is_unlabelled(tmp_path):
    arr = np.random.default_rng(4).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    ds = load_npz(tmp_path / "x.npy")
    np.testing.assert_array_equal(ds.image.values, arr.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.label.values, 0)


# -------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def loaded() -> dict:
    """Module-wide cache: the real data is read once (``shared_data`` itself is per-test)."""
    return {}


@pytest.fixture
def fashion(shared_data, loaded):
    if "fashion" not in loaded:
        loaded["fashion"] = load_mnist_folder(shared_data / "fashion_mnist")
    return loaded["fashion"]


@pytest.mark.realdata
def test_fashion_mnist_real(fashion):
    ds = fashion
    print("Fashion-MNIST:", dict(ds.sizes), ds.image.dtype)
    assert ds.image.shape == (70000, 1, 28, 28) and ds.image.dtype == np.uint8
    assert int((ds.split == 0).sum()) == 60000 and int((ds.split == 1).sum()) == 10000
    train = ds.label.values[ds.split.values == 0]
    np.testing.assert_array_equal(np.bincount(train, minlength=10), [6000] * 10)
    test = ds.label.values[ds.split.values == 1]
    np.testing.assert_array_equal(np.bincount(test, minlength=10), [1000] * 10)
    assert ds.attrs["classes"] == list(FASHION_MNIST_CLASSES)
    assert 0 < ds.image.values[:100].mean() < 255


# ------------------------------------------------------------------ through `stdiff ingest`


def _cli(*args: object):
    from typer.testing import CliRunner

    from stdiff.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _ingest(*args: object):
    return _cli("ingest", *args, "--no-progress")


def test_medmnist_npz(tmp_path):
    """MedMNIST's layout: ``{train,val,test}_{images,labels}``, labels (N, 1)."""
    from stdiff.datasets.store import open_store

    rng = np.random.default_rng(0)
    parts = {"train": 6, "val": 2, "test": 3}
    arrays = {
        f"{p}_images": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) for p, n in parts.items()
    }
    arrays.update({f"{p}_labels": rng.integers(0, 4, (n, 1)) for p, n in parts.items()})
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    res = _ingest(tmp_path / "pathmnist.npz", "--kind", "images", "--out", tmp_path / "m.zarr")
    assert res.exit_code == 0, res.output
    ds = open_store(tmp_path / "m.zarr")
    np.testing.assert_array_equal(ds["split"].values, [0] * 6 + [1] * 3 + [2] * 2)
    order = ("train", "test", "val")
    want = np.concatenate([arrays[f"{p}_images"] for p in order])[:, None]
    np.testing.assert_array_equal(ds["image"].values, want)
    np.testing.assert_array_equal(
        ds["label"].values, np.concatenate([arrays[f"{p}_labels"][:, 0] for p in order])
    )
    # flags name one pair; its split is the one its name says
    res = _ingest(tmp_path / "pathmnist.npz", "--kind", "images", "--images-key", "test_images",
                  "--labels-key", "test_labels", "--out", tmp_path / "t.zarr")  # fmt: skip
    assert res.exit_code == 0, res.output
    t = open_store(tmp_path / "t.zarr")
    assert t.sizes["sample"] == 3 and set(t["split"].values) == {1}
    res = _ingest(tmp_path / "pathmnist.npz", "--kind", "images", "--images-key", "pics",
                  "--out", tmp_path / "x.zarr")  # fmt: skip
    assert res.exit_code == 2 and "no key 'pics'; keys present: ['test_images'" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()


def test_npz_multilabel_and_unlabelled(tmp_path):
    """ChestMNIST holds 14 labels per image: refused with the way out, then read unlabelled."""
    imgs = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "chest.npz", train_images=imgs, train_labels=np.zeros((4, 14), np.uint8))
    with pytest.raises(DataError, match=r"14 labels per image .*--labels-key none"):
        load_npz(tmp_path / "chest.npz")
    ds = load_npz(tmp_path / "chest.npz", images_key="train_images", labels_key="none")
    assert ds.sizes["sample"] == 4 and set(ds["label"].values) == {0}
    assert load_npz(tmp_path / "chest.npz", labels_key="none").sizes["sample"] == 4
    np.savez(tmp_path / "only.npz", images=imgs)  # no array holds labels: unlabelled
    only = load_npz(tmp_path / "only.npz")
    assert only.sizes["sample"] == 4 and set(only["label"].values) == {0}
    np.savez(tmp_path / "one.npz", imgs)  # a single array, saved as ``arr_0``
    np.testing.assert_array_equal(load_npz(tmp_path / "one.npz")["image"].values[:, 0], imgs)
    np.savez(tmp_path / "two.npz", a=imgs, b=imgs)
    with pytest.raises(DataError, match=r"no images .*keys present: \['a', 'b'\]"):
        load_npz(tmp_path / "two.npz")


def test_image_folder_flat_colour_and_deep(tmp_path):
    """A flat folder is unlabelled; colour is kept when any image has it (grey ones repeated,
    alpha dropped); 16-bit PNG and float TIFF keep their values as float32, not clipped to 8 bits."""
    from PIL import Image

    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    flat.mkdir()
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(rgba).save(flat / "a.png")
    Image.fromarray(grey).save(flat / "b.png")
    (flat / "notes.txt").write_text("not an image")
    ds = load_image_folder(flat)
    assert ds.attrs["classes"] == ["unlabelled"] and ds["image"].shape == (2, 3, 6, 5)
    np.testing.assert_array_equal(ds["image"].values[0].transpose(1, 2, 0), rgba[..., :3])
    np.testing.assert_array_equal(ds["image"].values[1], np.stack([grey] * 3))
    assert load_image_folder(flat, mode="L")["image"].shape == (2, 1, 6, 5)
    deep = tmp_path / "deep"
    deep.mkdir()
    u16 = rng.integers(0, 65536, (6, 5)).astype(np.uint16)
    f32 = rng.standard_normal((6, 5)).astype(np.float32)
    Image.fromarray(u16).save(deep / "a.png")
    Image.fromarray(f32).save(deep / "b.tif")
    ds = load_image_folder(deep)
    assert ds["image"].dtype == np.float32 and ds["image"].shape == (2, 1, 6, 5)
    np.testing.assert_array_equal(ds["image"].values[0, 0], u16.astype(np.float32))
    np.testing.assert_array_equal(ds["image"].values[1, 0], f32)
    Image.fromarray(rgba).save(deep / "c.png")
    with pytest.raises(DataError, match="colour images mixed with images of more than 8 bits"):
        load_image_folder(deep)


def test_test_split_alone(tmp_path, image_model):
    """MNIST's t10k files alone: ingested for inference with a model trained elsewhere; a
    training job on them is refused in one line."""
    import yaml

    from stdiff.datasets.store import open_store

    folder = tmp_path / "t10k"
    folder.mkdir()
    rng = np.random.default_rng(2)
    write_idx(
        folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 16, 16), dtype=np.uint8)
    )
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8) % 3)
    store = tmp_path / "test_only.zarr"
    res = _ingest(folder, "--kind", "images", "--out", store)
    assert res.exit_code == 0, res.output
    assert set(open_store(store)["split"].values) == {1}
    job = {"out": str(tmp_path / "run"), "data": {"store": str(store), "task": "images"},
           "model": {"net": "unet"}}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = _cli("train", "--config", tmp_path / "job.yaml")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "no training images" in res.output and "--split train" in res.output
    run, _ = image_model
    res = _cli("reconstruct", "--checkpoint", run, "--data", store, "--out", tmp_path / "r.zarr",
               "--task", "superres", "--steps", 2, "--members", 1)  # fmt: skip
    assert res.exit_code == 0, res.output
    # a train or test file without its partner is still an error
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\(\.gz\) file"):
        load_mnist_folder(folder)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no train-\* or t10k-\* idx files"):
        load_mnist_folder(folder)


def test_cli_resizes_a_folder_of_mixed_sizes(tmp_path):
    """Without --image-size a folder of mixed sizes is refused naming the flag; with it every
    image is resized (and a volume's default slice size is unchanged)."""
    from stdiff.datasets.store import open_store

    make_image_folder(tmp_path / "imgs", {"a": [(6, 5), (6, 5)], "b": [(6, 5), (8, 8)]})
    res = _ingest(tmp_path / "imgs", "--kind", "images", "--out", tmp_path / "o.zarr")
    assert res.exit_code == 2 and "--image-size N" in res.output
    assert not (tmp_path / "o.zarr").exists()
    res = _ingest(tmp_path / "imgs", "--kind", "images", "--image-size", 7, "--out",
                  tmp_path / "o.zarr")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert open_store(tmp_path / "o.zarr")["image"].shape == (4, 3, 7, 7)


def test_bool_and_float_npz_images_reach_the_model_in_minus_one_to_one(tmp_path):
    """Sizes and types of other people's arrays: a bool mask is 0/255 (as a 1-bit PNG reads;
    it was 0/1, which uint8 scaling put at -1 and -0.99), and integer or float pixels (int32
    CT numbers, float16, float64) carry their pixel range as ``image_mean``/``image_std``, so
    the training windows see [-1, 1], not raw values (they trained at a loss of 2e6)."""
    from stdiff.datasets.windows import SampleWindows

    rng = np.random.default_rng(0)
    cases = {
        "bool": rng.random((6, 7, 9)) > 0.5,
        "int32": rng.integers(-1000, 3000, (6, 7, 9)).astype(np.int32),
        "float16": rng.random((6, 7, 9)).astype(np.float16),
        "float64": 1e3 * rng.standard_normal((6, 7, 9)),
    }
    for name, arr in cases.items():
        np.savez(tmp_path / f"{name}.npz", images=arr, labels=np.arange(6) % 2)
        res = _ingest(
            tmp_path / f"{name}.npz", "--kind", "images", "--out", tmp_path / f"{name}.zarr"
        )
        assert res.exit_code == 0, res.output
        x = np.stack([w["image"].numpy() for w in SampleWindows(tmp_path / f"{name}.zarr", "sample", ["image"])])  # fmt: skip
        assert x.shape == (6, 1, 7, 9) and x.min() == pytest.approx(-1, abs=1e-6), name
        assert x.max() == pytest.approx(1, abs=1e-6), name
        order = np.argsort(arr.astype(np.float64), axis=None, kind="stable")  # monotone mapping
        assert (np.diff(x.reshape(-1)[order]) >= -1e-6).all(), name


def test_a_constant_float_channel_keeps_a_unit_scale():
    from stdiff.datasets.images import _pixel_scale

    img = np.full((3, 2, 4, 4), 5.0, np.float32)
    img[:, 1] = np.linspace(0, 10, 16).reshape(4, 4)
    scale = _pixel_scale(img)
    np.testing.assert_allclose(scale["image_mean"][1], [5.0, 5.0])
    np.testing.assert_allclose(scale["image_std"][1], [1.0, 5.0])
