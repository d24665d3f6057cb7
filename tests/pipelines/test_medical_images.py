"""Medical volumes through the CLI alone: a NIfTI volume (nibabel) and a CT DICOM series (pydicom)
written here become image samples (windowed, resized, in radiological orientation), train a tiny
U-Net, and reach `stdiff reconstruct` and `stdiff generate`; a `--kind medical` store is refused
by the image tasks in one line naming the ingest to run, and works once ingested as images.

Exact checks: a bright marker placed anterior-right in patient space lands in the top-left
quadrant (anterior up, patient's right on the viewer's left) whatever the file's orientation; the
HU window maps LO -> 0 and HI -> 255 exactly (a uniform slice region is resized without change).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from stdiff.cli import app
from stdiff.datasets.slices import parse_window
from stdiff.datasets.store import open_store

SIZE = 16


def _cli(*args: object):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res


def _ingest(*args: object):
    return _cli("ingest", *args, "--no-progress")


def _phantom(n: int = 32, slices: int = 24) -> np.ndarray:
    """A (R, A, S) volume: a body ellipse of 100 and a marker of 400 at anterior-right."""
    i, j = np.mgrid[:n, :n]
    body = ((i - n / 2) / (0.4 * n)) ** 2 + ((j - n / 2) / (0.4 * n)) ** 2 < 1
    vol = np.zeros((n, n, slices), np.float32)
    vol[body] = 100.0
    vol[int(0.68 * n) : int(0.8 * n), int(0.68 * n) : int(0.8 * n)] = 400.0  # high R, high A
    return vol


def write_nifti(path: Path, orientation: str = "LPS", scale: float = 1.0) -> Path:
    """The phantom times ``scale`` stored in ``orientation`` (RAS or LPS voxel order), 1 mm."""
    vol = _phantom() * scale
    if orientation == "LPS":
        vol, affine = vol[::-1, ::-1].copy(), np.diag([-1.0, -1.0, 1.0, 1.0])
    else:
        affine = np.eye(4)
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path


def write_ct_series(folder: Path, flipped: bool = False, offset: float = -1000.0) -> Path:
    """The phantom as a CT series in HU (air ``offset``, body 100 - 1000 + ... see below).

    DICOM's patient frame is LPS; with the usual ImageOrientationPatient ``[1,0,0, 0,1,0]`` the
    columns run toward the patient's left and the rows toward posterior; ``flipped`` stores the
    rows and columns the other way (``[-1,0,0, 0,-1,0]``)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    ras = _phantom()  # (R, A, S)
    lps = ras[::-1, ::-1]  # (L, P, S): column index ~ L, row index ~ P
    series = generate_uid()
    for k in range(ras.shape[2]):
        hu = lps[:, :, k].T + offset  # (rows ~ P, columns ~ L)
        iop = [1, 0, 0, 0, 1, 0]
        if flipped:
            hu, iop = hu[::-1, ::-1], [-1, 0, 0, 0, -1, 0]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k:03d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
        ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, k + 1
        ds.Rows, ds.Columns = hu.shape
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = (np.ascontiguousarray(hu) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"s{k:03d}", enforce_file_format=True)  # no suffix: found by "DICM"
    return folder


def _marker_quadrant(store: Path) -> tuple[int, int]:
    """(row half, column half) holding the brightest pixels (the marker) of the mean slice."""
    img = open_store(store)["image"].values[:, 0].astype(float).mean(axis=0)  # (y, x)
    rows, cols = np.nonzero(img >= 0.9 * img.max())
    h = img.shape[0] / 2
    assert np.all(rows < h) or np.all(rows >= h)
    assert np.all(cols < h) or np.all(cols >= h)
    return int(rows[0] >= h), int(cols[0] >= h)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: write_nifti(p / "ras.nii.gz", "RAS"),
        lambda p: write_nifti(p / "lps.nii.gz", "LPS"),
        lambda p: write_ct_series(p / "ct"),
        lambda p: write_ct_series(p / "ct_flipped", flipped=True),
    ],
    ids=["nifti-ras", "nifti-lps", "dicom", "dicom-flipped"],
)
def test_slices_in_radiological_orientation(tmp_path, make) -> None:
    source = make(tmp_path)
    res = _ingest(source, "--kind", "images", "--image-size", SIZE, "--out", tmp_path / "s.zarr")
    assert res.exit_code == 0, res.output
    assert _marker_quadrant(tmp_path / "s.zarr") == (0, 0)  # anterior-right marker: top left
    attrs = open_store(tmp_path / "s.zarr").attrs
    assert (attrs["display_up"], attrs["display_left"]) == ("anterior", "right")


def test_ct_windows(tmp_path) -> None:
    assert parse_window("-1000,400") == (-1000.0, 400.0)
    assert parse_window("lung") == (-1350.0, 150.0) and parse_window("auto") is None
    ct = write_ct_series(tmp_path / "ct")
    # air is -1000 HU, the body 100 - 1000 = -900 HU, the marker 400 - 1000 = -600 HU
    res = _ingest(ct, "--kind", "images", "--image-size", 32, "--window", "-1000,-600",
                  "--out", tmp_path / "w.zarr")  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_store(tmp_path / "w.zarr")
    assert ds.attrs["window"] == [-1000.0, -600.0] and ds.attrs["window_units"] == "HU"
    values = set(np.unique(ds["image"].values).tolist())
    assert {0, 64, 255} <= values  # air, body ((-900 + 1000) / 400 * 255 = 63.75), marker
    res = _ingest(ct, "--kind", "images", "--window", "wide", "--out", tmp_path / "x.zarr")
    assert res.exit_code == 2 and "window 'wide': expected LO,HI" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()


def _train(tmp_path: Path, store: Path) -> Path:
    cfg = {
        "out": str(tmp_path / "run"),
        "device": "cpu",
        "data": {"store": str(store), "task": "images"},
        "model": {
            "net": "unet",
            "params": {
                "in_channels": 1,
                "base_channels": 8,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "head_channels": 8,
                "dropout": 0.0,
            },
        },
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "loop": {
            "steps": 6,
            "batch_size": 8,
            "log_every": 3,
            "checkpoint_every": 6,
            "progress": False,
        },
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli("train", "--config", tmp_path / "train.yaml")
    assert res.exit_code == 0, res.output
    return tmp_path / "run"


def test_volumes_reach_train_reconstruct_and_generate(tmp_path) -> None:
    nii = write_nifti(tmp_path / "brain.nii.gz")
    # 1. a --kind medical store is refused by train and reconstruct in one line naming the ingest
    assert _ingest(nii, "--kind", "medical", "--out", tmp_path / "vol.zarr").exit_code == 0
    (tmp_path / "t.yaml").write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "r0"),
                "data": {"store": str(tmp_path / "vol.zarr"), "task": "images"},
                "model": {"net": "unet"},
            }
        )
    )
    res = _cli("train", "--config", tmp_path / "t.yaml")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "--kind medical volume store" in res.output and "--kind images" in res.output
    # 2. ... and ingesting that store (or the file) as images works
    images = tmp_path / "vol_images.zarr"
    res = _ingest(tmp_path / "vol.zarr", "--kind", "images", "--image-size", SIZE, "--out", images)
    assert res.exit_code == 0, res.output
    direct = tmp_path / "direct.zarr"
    assert _ingest(nii, "--kind", "images", "--image-size", SIZE, "--out", direct).exit_code == 0
    np.testing.assert_array_equal(open_store(images)["image"], open_store(direct)["image"])
    run = _train(tmp_path, images)
    # 3. reconstruct on another hospital's scan (other scanner scale and voxel order), all test
    other = write_nifti(tmp_path / "other.nii.gz", "RAS", scale=3.0)
    new = tmp_path / "other_images.zarr"
    res = _ingest(other, "--kind", "images", "--image-size", SIZE, "--split", "test", "--out", new)
    assert res.exit_code == 0, res.output
    assert set(open_store(new)["split"].values) == {1}
    out = tmp_path / "mri.zarr"
    res = _cli("reconstruct", "--checkpoint", run, "--data", new, "--out", out, "--task", "mri",
               "--steps", 3, "--members", 2, "--set", "max_images=2")  # fmt: skip
    assert res.exit_code == 0, res.output
    rec = xr.open_zarr(out, consolidated=False)
    assert rec["samples"].shape == (2, 2, 1, SIZE, SIZE) and Path(f"{out}.png").is_file()
    assert np.isfinite(json.loads(Path(f"{out}.metrics.json").read_text())["psnr"])
    res = _cli("reconstruct", "--checkpoint", run, "--data", tmp_path / "vol.zarr", "--out",
               tmp_path / "no.zarr", "--task", "mri")  # fmt: skip
    assert res.exit_code == 2 and "stdiff ingest" in res.output and "--kind images" in res.output
    # 4. an unconditional model generates from its prior
    gen = tmp_path / "gen.zarr"
    res = _cli("generate", "--checkpoint", run, "--out", gen, "--n", 3, "--set", "steps=3")
    assert res.exit_code == 0, res.output
    assert xr.open_zarr(gen, consolidated=False)["image"].shape == (3, 1, SIZE, SIZE)
    res = _cli("generate", "--checkpoint", run, "--out", tmp_path / "g.zarr", "--label", 1)
    assert res.exit_code == 2 and "unconditional model" in res.output


def test_hu_window_travels_with_the_checkpoint(tmp_path) -> None:
    ct = write_ct_series(tmp_path / "ct")
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    base = ("--kind", "images", "--image-size", SIZE)
    assert _ingest(ct, *base, "--window", "-1000,-500", "--out", a).exit_code == 0
    assert _ingest(ct, *base, "--window", "lung", "--out", b).exit_code == 0
    run = _train(tmp_path, a)
    # another CT series (rows and columns stored the other way), same window: reconstructed
    other = write_ct_series(tmp_path / "ct_b", flipped=True)
    c = tmp_path / "c.zarr"
    assert (
        _ingest(other, *base, "--window", "-1000,-500", "--split", "test", "--out", c).exit_code
        == 0
    )
    res = _cli("reconstruct", "--checkpoint", run, "--data", c, "--out", tmp_path / "c_out.zarr",
               "--task", "ct", "--set", "views=6", "--steps", 2, "--members", 1,
               "--set", "max_images=2")  # fmt: skip
    assert res.exit_code == 0, res.output
    gen = tmp_path / "ct_gen.zarr"
    assert (
        _cli("generate", "--checkpoint", run, "--out", gen, "--n", 2, "--set", "steps=2").exit_code
        == 0
    )
    truth = xr.open_zarr(tmp_path / "c_out.zarr", consolidated=False)["truth"].values
    expected = open_store(a)["image"].values[:2] / 127.5 - 1  # the same scan, the same pixels
    np.testing.assert_allclose(truth, expected, atol=1e-6)
    # the same series windowed otherwise is refused, naming both windows
    res = _cli("reconstruct", "--checkpoint", run, "--data", b, "--out", tmp_path / "o.zarr",
               "--task", "inpaint", "--steps", 2)  # fmt: skip
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "windowed to [-1350, 150] HU" in res.output and "[-1000, -500] HU" in res.output
    assert "--window -1000,-500" in res.output and not (tmp_path / "o.zarr").exists()
    # and a model trained on CT refuses MRI slices (other units)
    mri = tmp_path / "mri.zarr"
    assert _ingest(write_nifti(tmp_path / "m.nii.gz"), *base, "--out", mri).exit_code == 0
    res = _cli("reconstruct", "--checkpoint", run, "--data", mri, "--out", tmp_path / "o.zarr",
               "--task", "inpaint", "--set", "split=all")  # fmt: skip
    assert res.exit_code == 2 and "arbitrary units" in res.output and "HU" in res.output


def test_other_kinds_are_refused_by_the_image_tasks(tmp_path, stay_store, image_model) -> None:
    """A time-series store given to an image job: one line naming the ingest to run."""
    job = {"out": str(tmp_path / "r"), "data": {"store": str(stay_store), "task": "images"},
           "model": {"net": "unet"}}  # fmt: skip
    (tmp_path / "j.yaml").write_text(yaml.safe_dump(job))
    res = _cli("train", "--config", tmp_path / "j.yaml")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "a 'timeseries' store, not images" in res.output and "--kind images" in res.output
    run, _ = image_model
    res = _cli("reconstruct", "--checkpoint", run, "--data", stay_store, "--out",
               tmp_path / "o.zarr", "--task", "inpaint")  # fmt: skip
    assert res.exit_code == 2 and "a 'timeseries' store, not images" in res.output


def test_study_folder_and_misplaced_window(tmp_path) -> None:
    """A study folder of several series, and --window on a source that is not a volume, are
    refused in one line that says what to do."""
    study = tmp_path / "study"
    write_ct_series(study / "series_a")
    write_ct_series(study / "series_b", flipped=True)
    res = _ingest(study, "--kind", "images", "--out", tmp_path / "s.zarr")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "holds 2 DICOM series folders (series_a, series_b); ingest one series" in res.output
    (study / "series_a" / ".DS_Store").write_bytes(b"\0\0junk")  # hidden files are skipped
    res = _ingest(study / "series_a", "--kind", "images", "--image-size", SIZE,
                  "--out", tmp_path / "a.zarr")  # fmt: skip
    assert res.exit_code == 0, res.output
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.zeros(2))
    res = _ingest(tmp_path / "x.npz", "--kind", "images", "--window", "lung",
                  "--out", tmp_path / "x.zarr")  # fmt: skip
    assert res.exit_code == 2 and "--window applies to volumes" in res.output
    res = _ingest(study / "series_a", "--kind", "images", "--images-key", "x",
                  "--out", tmp_path / "y.zarr")  # fmt: skip
    assert res.exit_code == 2 and "--images-key / --labels-key name the arrays" in res.output


def test_colin27_through_a_medical_store(shared_data, tmp_path) -> None:
    """The real brain volume: `--kind medical`, then that store as images, equals the direct
    ingest of the file (168 axial slices with signal, 32 held back in blocks of 8)."""
    nii = shared_data / "brain_mri/ch2.nii.gz"
    assert _ingest(nii, "--kind", "medical", "--out", tmp_path / "vol.zarr").exit_code == 0
    via = tmp_path / "via.zarr"
    res = _ingest(tmp_path / "vol.zarr", "--kind", "images", "--image-size", 32, "--out", via)
    assert res.exit_code == 0, res.output
    direct = tmp_path / "direct.zarr"
    assert _ingest(nii, "--kind", "images", "--image-size", 32, "--out", direct).exit_code == 0
    a, b = open_store(via), open_store(direct)
    np.testing.assert_array_equal(a["image"].values, b["image"].values)
    assert a["image"].shape == (168, 1, 32, 32) and int(a["split"].sum()) == 32
    assert a.attrs["window_mode"] == "auto" and a.attrs["display_up"] == "anterior"
