"""MetaImage (.mha / .mhd + .raw) and NRRD (.nrrd / .nhdr) volumes, written here byte by byte as
ITK and 3D Slicer write them, read into (slice, y, x) with spacing and HU."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest

from stdiff.datasets.errors import DataError
from stdiff.datasets.raw_volumes import load_raw_volume

VOLUME = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000  # (z, y, x): HU-like


def _mha(path: Path, *, compressed=False, msb=False, local=True, ct=True) -> Path:
    data = VOLUME.astype(">i2" if msb else "<i2").tobytes()
    data = zlib.compress(data) if compressed else data
    header = ["ObjectType = Image", "NDims = 3", "BinaryData = True",
              f"BinaryDataByteOrderMSB = {msb}", f"CompressedData = {compressed}",
              "ElementSpacing = 0.7 0.8 2.5", "DimSize = 4 3 2", "ElementType = MET_SHORT"]  # fmt: skip
    if ct:
        header.insert(1, "Modality = MET_MOD_CT")
    if local:
        path.write_bytes(("\n".join([*header, "ElementDataFile = LOCAL"]) + "\n").encode() + data)
    else:
        (path.with_suffix(".raw")).write_bytes(data)
        path.write_text("\n".join([*header, f"ElementDataFile = {path.stem}.raw"]) + "\n")
    return path


@pytest.mark.parametrize(
    "kwargs", [{}, {"compressed": True}, {"msb": True}, {"local": False}, {"ct": False}]
)
def test_metaimage(tmp_path, kwargs):
    suffix = ".mha" if kwargs.get("local", True) else ".mhd"
    ds = load_raw_volume(_mha(tmp_path / f"scan{suffix}", **kwargs))
    np.testing.assert_array_equal(ds.image.values, VOLUME)
    assert ds.image.dims == ("slice", "y", "x")
    np.testing.assert_allclose(ds.attrs["spacing_mm"], [2.5, 0.8, 0.7])
    assert (ds.image.attrs.get("units") == "HU") == kwargs.get("ct", True)


@pytest.mark.parametrize("encoding", ["raw", "gzip", "ascii", "detached"])
def test_nrrd(tmp_path, encoding):
    data = VOLUME.astype("<i2").tobytes()
    body = {"raw": data, "gzip": gzip.compress(data),
            "ascii": " ".join(map(str, VOLUME.ravel())).encode()}.get(encoding, b"")  # fmt: skip
    header = ["NRRD0004", "# Complete NRRD file format specification at:", "type: short",
              "dimension: 3", "space: left-posterior-superior", "sizes: 4 3 2",
              "space directions: (0.7,0,0) (0,0.8,0) (0,0,2.5)", "kinds: domain domain domain",
              "endian: little", f"encoding: {'raw' if encoding == 'detached' else encoding}"]  # fmt: skip
    if encoding == "detached":
        (tmp_path / "scan.raw").write_bytes(data)
        header.append("data file: scan.raw")
    path = tmp_path / ("scan.nhdr" if encoding == "detached" else "scan.nrrd")
    path.write_bytes(("\n".join(header) + "\n\n").encode() + body)
    ds = load_raw_volume(path)
    np.testing.assert_array_equal(ds.image.values, VOLUME)
    np.testing.assert_allclose(ds.attrs["spacing_mm"], [2.5, 0.8, 0.7])


def test_raw_volume_refusals(tmp_path):
    _mha(tmp_path / "a.mhd", local=False).with_suffix(".raw").unlink()
    with pytest.raises(DataError, match=r"its data file 'a\.raw' is not beside it"):
        load_raw_volume(tmp_path / "a.mhd")
    path = _mha(tmp_path / "b.mha")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"38 bytes of voxels, 48 expected"):
        load_raw_volume(path)
    (tmp_path / "c.nrrd").write_text("hello\n\n")
    with pytest.raises(DataError, match="not an NRRD file"):
        load_raw_volume(tmp_path / "c.nrrd")


def test_a_metaimage_scan_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from stdiff.cli import app
    from stdiff.datasets.store import open_store

    _mha(tmp_path / "luna.mhd", local=False)
    out = tmp_path / "ct.zarr"
    args = ["ingest", str(tmp_path / "luna.mhd"), "--kind", "medical", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--no-progress"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(open_store(out).image.values, VOLUME)
