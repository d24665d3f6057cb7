"""Medical sources: NIfTI reorientation and spacing, DICOM CT series ordering/rescale, real Colin27."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from stdiff.datasets.errors import DataError
from stdiff.datasets.medical import load_dicom, load_nifti

# ------------------------------------------------------------------------------------------ NIfTI

LPS_AFFINE = np.array(
    [[-0.8, 0, 0, 50.0], [0, -1.2, 0, 60.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]]
)  # voxel axes point Left, Posterior, Superior with spacings 0.8, 1.2, 2.5 mm


@pytest.fixture
def lps_volume(tmp_path) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(0).integers(0, 1000, (4, 5, 6)).astype(np.int16)
    img = nib.Nifti1Image(data, LPS_AFFINE)
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "vol.nii.gz"
    nib.save(img, path)
    return path, data


def test_nifti_axial_reoriented(lps_volume):
    path, data = lps_volume
    ds = load_nifti(path)
    ras = (data[::-1, ::-1, :] * 0.5 + 10.0).astype(np.float32)  # flip L->R and P->A
    assert ds.image.dims == ("slice", "y", "x") and ds.image.dtype == np.float32
    assert ds.image.shape == (6, 5, 4)
    np.testing.assert_allclose(ds.image.values, ras.transpose(2, 1, 0))
    assert ds.attrs["orientation"] == "RAS" and ds.attrs["original_orientation"] == "LPS"
    np.testing.assert_allclose(ds.attrs["spacing_mm"], [2.5, 1.2, 0.8], rtol=1e-6)
    affine = np.array(ds.attrs["affine"]).reshape(4, 4)
    np.testing.assert_allclose(affine[:3, :3], np.diag([0.8, 1.2, 2.5]), atol=1e-6)
    # voxel (0, 0, 0) of the RAS array is the old voxel (3, 4, 0)
    np.testing.assert_allclose(affine[:3, 3], (LPS_AFFINE @ [3, 4, 0, 1])[:3], atol=1e-5)
    assert ds.attrs["kind"] == "medical" and ds.attrs["source"] == str(path)


def test_nifti_other_axes(lps_volume):
    path, data = lps_volume
    ras = (data[::-1, ::-1, :] * 0.5 + 10.0).astype(np.float32)
    cor = load_nifti(path, axis="coronal")
    np.testing.assert_allclose(cor.image.values, ras.transpose(1, 2, 0))
    np.testing.assert_allclose(cor.attrs["spacing_mm"], [1.2, 2.5, 0.8], rtol=1e-6)
    sag = load_nifti(path, axis="sagittal")
    np.testing.assert_allclose(sag.image.values, ras.transpose(0, 2, 1))
    np.testing.assert_allclose(sag.attrs["spacing_mm"], [0.8, 2.5, 1.2], rtol=1e-6)
    with pytest.raises(DataError, match="axis must be one of"):
        load_nifti(path, axis="oblique")


def test_nifti_errors(tmp_path, lps_volume):
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not a NIfTI volume\n")
    with pytest.raises(DataError, match=r"notes\.nii\.gz: not a readable NIfTI file") as info:
        load_nifti(text)
    assert "\n" not in str(info.value)
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.nii\.gz: not a readable NIfTI"):
        load_nifti(tmp_path / "empty.nii.gz")
    blob = lps_volume[0].read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[:-12])  # gzip stream cut before its end
    with pytest.raises(DataError, match=r"cut\.nii\.gz: ") as info:
        load_nifti(tmp_path / "cut.nii.gz")
    assert "\n" not in str(info.value)
    raw = gzip.decompress(blob)
    (tmp_path / "short.nii").write_bytes(raw[:-20])  # header intact, voxels missing
    with pytest.raises(DataError, match=r"short\.nii: cannot read the voxel data") as info:
        load_nifti(tmp_path / "short.nii")
    assert "\n" not in str(info.value)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(DataError, match=r"4d\.nii: a 4-D series of 3 volumes"):
        load_nifti(tmp_path / "4d.nii")


# ------------------------------------------------------------------------------------------ DICOM

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_slice(
    path: Path,
    raw: np.ndarray,
    z: float,
    *,
    series_uid: str,
    instance: int,
    slope: float = 1.0,
    intercept: float = -1024.0,
) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.3.4"
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = raw.shape
    ds.PixelSpacing = [0.7, 0.6]
    ds.SliceThickness = 2.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-10.0, -20.0, z]
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = raw.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def ct_series(tmp_path) -> tuple[Path, np.ndarray]:
    """Five 4x3 slices at z = 0, 2.5, ..., written in shuffled order with shuffled instances."""
    folder = tmp_path / "ct"
    folder.mkdir()
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 2000, (5, 4, 3)).astype(np.int16)
    shuffled = [3, 0, 4, 1, 2]  # file k holds slice shuffled[k]
    for k, s in enumerate(shuffled):
        # InstanceNumber deliberately disagrees with position: the position must win
        write_ct_slice(
            folder / f"img{k:03d}.dcm", raw[s], 2.5 * s, series_uid="1.2.3.4.5", instance=k + 1
        )
    return folder, raw


def test_dicom_ct_series(ct_series):
    folder, raw = ct_series
    ds = load_dicom(folder)
    assert ds.image.dims == ("slice", "y", "x") and ds.image.dtype == np.float32
    np.testing.assert_array_equal(ds.image.values, raw * 1.0 - 1024.0)
    assert ds.image.attrs["units"] == "HU"
    assert ds.attrs["modality"] == "CT" and ds.attrs["series_uid"] == "1.2.3.4.5"
    np.testing.assert_allclose(ds.attrs["spacing_mm"], [2.5, 0.7, 0.6])
    assert ds.attrs["image_position_patient"] == [-10.0, -20.0, 0.0]
    assert ds.attrs["kind"] == "medical"


def test_dicom_single_file_and_rescale(tmp_path):
    raw = np.arange(12, dtype=np.int16).reshape(3, 4) - 5
    write_ct_slice(
        tmp_path / "one.dcm", raw, 7.0, series_uid="9.9", instance=1, slope=2.0, intercept=-1000
    )
    ds = load_dicom(tmp_path / "one.dcm")
    assert ds.image.shape == (1, 3, 4)
    np.testing.assert_array_equal(ds.image.values[0], raw * 2.0 - 1000.0)
    assert ds.attrs["spacing_mm"] == [2.0, 0.7, 0.6]  # slice thickness when no neighbour


def test_dicom_instance_number_fallback(ct_series):
    import pydicom

    folder, raw = ct_series
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        z = float(ds.ImagePositionPatient[2])
        del ds.ImagePositionPatient
        ds.InstanceNumber = round(z / 2.5) + 1
        ds.save_as(f)
    np.testing.assert_array_equal(load_dicom(folder).image.values, raw - 1024.0)


def test_dicom_errors(ct_series, tmp_path):
    folder, raw = ct_series
    (folder / "readme.txt").write_text("not DICOM")
    with pytest.raises(DataError, match=r"readme\.txt: not a DICOM file") as info:
        load_dicom(folder)
    assert "\n" not in str(info.value)
    (folder / "readme.txt").unlink()

    write_ct_slice(folder / "other.dcm", raw[0], 99.0, series_uid="7.7.7", instance=9)
    with pytest.raises(DataError, match=r"ct: 2 series in one folder \(1\.2\.3\.4\.5 \(5 files\); "
                       r"7\.7\.7 \(1 file\)\); put each series in its own folder"):  # fmt: skip
        load_dicom(folder)
    (folder / "other.dcm").unlink()

    write_ct_slice(
        folder / "wide.dcm", np.zeros((4, 5), np.int16), 99.0, series_uid="1.2.3.4.5", instance=9
    )
    with pytest.raises(DataError, match=r"wide\.dcm: slice is 4x5 but img000\.dcm is 4x3"):
        load_dicom(folder)
    (folder / "wide.dcm").unlink()

    write_ct_slice(folder / "dup.dcm", raw[0], 5.0, series_uid="1.2.3.4.5", instance=9)
    with pytest.raises(DataError, match="same slice position"):
        load_dicom(folder)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no DICOM files"):
        load_dicom(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        load_dicom(tmp_path / "absent")


# -------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def loaded() -> dict:
    """Module-wide cache: the real volume is read once (``shared_data`` itself is per-test)."""
    return {}


@pytest.fixture
def colin27(shared_data, loaded):
    if "colin27" not in loaded:
        loaded["colin27"] = load_nifti(shared_data / "brain_mri" / "ch2.nii.gz")
    return loaded["colin27"]


@pytest.mark.realdata
def test_colin27_real(colin27):
    ds = colin27
    print("Colin27 axial:", dict(ds.sizes), ds.attrs["spacing_mm"], ds.attrs["orientation"])
    # stored as 181 (R) x 217 (A) x 181 (S) voxels: axial slices run along S
    assert dict(ds.sizes) == {"slice": 181, "y": 217, "x": 181}
    assert ds.attrs["spacing_mm"] == [1.0, 1.0, 1.0]
    assert ds.attrs["orientation"] == "RAS" and ds.attrs["original_orientation"] == "RAS"
    assert ds.image.dtype == np.float32
    values = ds.image.values
    assert values.min() >= 0 and values.max() <= 255
    nonempty = int((values.reshape(181, -1) > 0).any(axis=1).sum())
    print("Colin27 axial slices with any signal:", nonempty)
    assert 100 < nonempty <= 181


def test_volume_slices_as_images(tmp_path):
    from stdiff.datasets.ingest import IngestOptions, ingest
    from stdiff.datasets.slices import slices_as_images

    vol = np.zeros((40, 30, 60), np.float32)  # (x, y, z): a bright ellipsoid, empty ends in z
    xx, yy, zz = np.meshgrid(np.arange(40), np.arange(30), np.arange(60), indexing="ij")
    vol[((xx - 20) / 15) ** 2 + ((yy - 15) / 12) ** 2 + ((zz - 30) / 25) ** 2 < 1] = 100.0
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    ds = slices_as_images(load_nifti(tmp_path / "v.nii.gz"), 16, block=4, test_every=3)
    n = ds.sizes["sample"]
    assert ds["image"].shape == (n, 1, 16, 16) and ds["image"].dtype == np.uint8
    assert 0 < n < 60  # the empty ends are dropped
    assert ds["image"].values.max() == 255 and ds["image"].values[:, :, 0, 0].max() == 0
    split = ds["split"].values
    assert split.sum() > 0 and list(split[:12]) == [0] * 4 + [1] * 4 + [0] * 4  # whole blocks
    res = ingest(
        tmp_path / "v.nii.gz", tmp_path / "s.zarr", IngestOptions(kind="images", image_size=16)
    )
    assert "images (sample=" in res.summary and "x=16" in res.summary


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ([1, 0, 0, 0, 1, 0], (False, False, False, "axial")),  # columns -> L, rows -> P
        ([-1, 0, 0, 0, -1, 0], (False, True, True, "axial")),  # columns -> R, rows -> A
        ([0, 1, 0, 1, 0, 0], (True, False, False, "axial")),  # rows and columns swapped
        ([1, 0, 0, 0, 0, -1], (False, False, False, "coronal")),  # columns -> L, rows -> I
        ([0, 1, 0, 0, 0, -1], (False, False, False, "sagittal")),  # columns -> P, rows -> I
        ([0, 0, -1, 0, -1, 0], (True, False, True, "sagittal")),  # columns -> I, rows -> A
    ],
)
def test_dicom_display_transform(iop, expected):
    """Radiological display of DICOM slices from ImageOrientationPatient (LPS direction
    cosines of the columns' and the rows' index): axial anterior up and the patient's right on
    the left, coronal superior up, sagittal superior up and anterior on the left."""
    from stdiff.datasets.slices import display_transform

    ds = xr.Dataset(attrs={"image_orientation_patient": [float(v) for v in iop]})
    assert display_transform(ds) == expected


def test_mgh_volume_and_4d_series(tmp_path):
    """FreeSurfer's .mgz reads like NIfTI (same voxels, same reorientation); a 4-D series of
    several volumes is refused with the way out, through the CLI too."""
    from typer.testing import CliRunner

    from stdiff.cli import app

    rng = np.random.default_rng(0)
    vol = rng.random((6, 7, 5)).astype(np.float32)
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, aff), tmp_path / "v.nii.gz")
    nib.save(nib.MGHImage(vol, aff), tmp_path / "v.mgz")
    a, b = load_nifti(tmp_path / "v.nii.gz"), load_nifti(tmp_path / "v.mgz")
    np.testing.assert_array_equal(a["image"].values, b["image"].values)
    assert a.attrs["spacing_mm"] == b.attrs["spacing_mm"]
    nib.save(nib.Nifti1Image(rng.random((6, 7, 5, 3)).astype(np.float32), aff), tmp_path / "f.nii")
    with pytest.raises(DataError, match=r"f\.nii: a 4-D series of 3 volumes .*img\.slicer"):
        load_nifti(tmp_path / "f.nii")
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "v.mgz"), "--kind", "medical",
                                   "--out", str(tmp_path / "m.zarr"), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------- HDF5 (fastMRI)

_HEADER = (
    b'<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
    b"<encodedSpace><matrixSize><x>48</x><y>64</y><z>1</z></matrixSize></encodedSpace>"
    b"<reconSpace><matrixSize><x>32</x><y>40</y><z>1</z></matrixSize>"
    b"<fieldOfView_mm><x>64</x><y>80</y><z>3</z></fieldOfView_mm></reconSpace>"
    b"</encoding></ismrmrdHeader>"
)


def _fastmri(path: Path, *, recon: np.ndarray | None = None) -> np.ndarray:
    """A fastMRI-layout file: 2 slices x 3 coils of an ellipse, coil c weighted 1 + c/2 with
    phase c; returns the exact root-sum-of-squares image (before cropping)."""
    import h5py

    yy, xx = np.mgrid[:64, :48]
    disc = (((yy - 32) / 20) ** 2 + ((xx - 24) / 15) ** 2 < 1).astype(np.complex64)
    gains = [(1 + c / 2) * np.exp(1j * c) for c in range(3)]
    coils = np.stack([[disc * g * (s + 1) for g in gains] for s in range(2)])
    kspace = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(coils, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace.astype(np.complex64)
        f["ismrmrd_header"] = _HEADER
        f.attrs["acquisition"] = "CORPD_FBK"
        f.attrs["patient_id"] = "hash"
        if recon is not None:
            f["reconstruction_rss"] = recon
    rss = np.sqrt(sum(abs(g) ** 2 for g in gains))
    return np.stack([disc.real * rss * (s + 1) for s in range(2)])


def test_fastmri_kspace_becomes_the_cropped_rss_image(tmp_path):
    """Without a reconstruction (fastMRI's test files): centred IFFT per coil, root sum of
    squares, cropped about the centre to reconSpace (40 x 32); spacing = FOV / matrix."""
    from stdiff.datasets.hdf5_volume import load_hdf5_volume

    exact = _fastmri(tmp_path / "file1000.h5")
    ds = load_hdf5_volume(tmp_path / "file1000.h5")
    assert ds.image.shape == (2, 40, 32)
    np.testing.assert_allclose(ds.image.values, exact[:, 12:52, 8:40], atol=1e-5)
    assert ds.attrs["spacing_mm"] == [3.0, 2.0, 2.0]
    assert ds.attrs["acquisition"] == "CORPD_FBK" and ds.attrs["modality"] == "MR"
    assert "patient_id" not in str(ds.attrs)


def test_hdf5_reconstruction_first_then_one_array_else_refused(tmp_path):
    import h5py

    from stdiff.datasets.hdf5_volume import load_hdf5_volume

    recon = np.random.default_rng(0).random((2, 40, 32)).astype(np.float32)
    _fastmri(tmp_path / "train.h5", recon=recon)
    ds = load_hdf5_volume(tmp_path / "train.h5")
    np.testing.assert_array_equal(ds.image.values, recon)
    assert ds.attrs["hdf5_array"] == "reconstruction_rss"
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["group/volume"] = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
        f["labels"] = np.arange(2)  # 1-D: not a volume
    ds = load_hdf5_volume(tmp_path / "one.h5")
    assert ds.image.shape == (2, 3, 4) and ds.attrs["hdf5_array"] == "group/volume"
    assert np.isnan(ds.attrs["spacing_mm"]).all()
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = np.zeros((2, 4, 4)), np.zeros((2, 4, 4))
    with pytest.raises(DataError, match=r"found several \(a, b\)"):
        load_hdf5_volume(tmp_path / "two.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="cannot read as HDF5"):
        load_hdf5_volume(tmp_path / "text.h5")


def test_fastmri_file_through_the_cli_as_volume_and_as_image_slices(tmp_path):
    from typer.testing import CliRunner

    from stdiff.cli import app
    from stdiff.datasets.store import open_store

    _fastmri(tmp_path / "f.h5")
    for kind, extra, sizes in [
        ("medical", [], {"slice": 2, "y": 40, "x": 32}),
        ("images", ["--image-size", "16"], {"sample": 2, "channel": 1, "y": 16, "x": 16}),
    ]:
        out = tmp_path / f"{kind}.zarr"
        args = ["ingest", str(tmp_path / "f.h5"), "--kind", kind, "--out", str(out), *extra]
        res = CliRunner().invoke(app, [*args, "--no-progress"])
        assert res.exit_code == 0, res.output
        assert dict(open_store(out).sizes) == sizes
