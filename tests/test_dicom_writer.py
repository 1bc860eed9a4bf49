"""The DICOM writer: realistic MR series from any volume, read back to the same voxels and geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from fingerprint.imaging.dicom_read import read_series
from fingerprint.imaging.dicom_write import (
    PLANES,
    encodable_transfer_syntaxes,
    write_series,
)


@pytest.fixture(scope="module")
def small_volume(colin27: sitk.Image) -> sitk.Image:
    """Colin27 block-averaged to 4 mm (a real head, small enough to write many times), with LPS axes (identity
    direction) so that an axial series has exactly its voxel grid."""
    return sitk.DICOMOrient(sitk.BinShrink(colin27, [4, 4, 4]), "LPS")


@pytest.mark.parametrize("syntax", encodable_transfer_syntaxes(), ids=lambda uid: uid.name)
def test_round_trip_in_every_encodable_transfer_syntax(small_volume: sitk.Image, tmp_path: Path, syntax) -> None:
    paths = write_series(small_volume, tmp_path, patient_id="RT-1", transfer_syntax=syntax)
    assert str(pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    back = read_series(tmp_path).image
    assert back.GetSize() == small_volume.GetSize()
    assert np.allclose(back.GetOrigin(), small_volume.GetOrigin(), atol=1e-3)
    assert np.allclose(back.GetSpacing(), small_volume.GetSpacing(), atol=1e-3)
    assert np.allclose(back.GetDirection(), small_volume.GetDirection(), atol=1e-5)
    original = sitk.GetArrayFromImage(small_volume)
    quantum = (original.max() - original.min()) / 4095
    assert np.abs(sitk.GetArrayFromImage(back) - original).max() <= quantum  # 12-bit rescale, lossless otherwise


def test_compressed_syntaxes_include_rle_and_jpeg2000() -> None:
    names = {uid.name for uid in encodable_transfer_syntaxes()}
    assert "RLE Lossless" in names
    assert "JPEG 2000 Image Compression (Lossless Only)" in names


@pytest.mark.parametrize("orientation", ["sagittal", "coronal", "oblique"])
def test_other_planes_resample_the_same_head(small_volume: sitk.Image, tmp_path: Path, orientation: str) -> None:
    direction = orientation
    if orientation == "oblique":
        rotation = sitk.Euler3DTransform()
        rotation.SetRotation(np.radians(20), np.radians(-10), np.radians(5))
        direction = rotation.GetMatrix()
    write_series(small_volume, tmp_path, patient_id="RT-2", orientation=direction)
    back = read_series(tmp_path).image
    expected = np.array(direction if orientation == "oblique" else PLANES[orientation]).reshape(3, 3)
    assert np.allclose(np.array(back.GetDirection()).reshape(3, 3), expected, atol=1e-4)
    on_original = sitk.GetArrayFromImage(sitk.Resample(back, small_volume, sitk.Transform(), sitk.sitkLinear, 0.0))
    original = sitk.GetArrayFromImage(small_volume)
    inside = original > 0.2 * original.max()
    inside[:2], inside[-2:], inside[:, :2], inside[:, -2:], inside[:, :, :2], inside[:, :, -2:] = (False,) * 6
    assert np.corrcoef(on_original[inside], original[inside])[0, 1] > 0.9


def test_mandatory_attributes_and_thick_slices(small_volume: sitk.Image, tmp_path: Path) -> None:
    paths = write_series(
        small_volume, tmp_path, patient_id="RT-3", orientation="sagittal", slice_thickness_mm=8.0, study_date="20230405"
    )
    ds = pydicom.dcmread(paths[0])
    for keyword in (
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID",
        "Modality", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
        "RescaleSlope", "RescaleIntercept", "BitsStored", "StudyDate",
    ):
        assert keyword in ds, keyword
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.BitsStored == 12 and ds.StudyDate == "20230405"
    assert float(ds.SliceThickness) == 8.0
    assert len({pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}) == len(paths)
    back = read_series(tmp_path).image
    assert back.GetSpacing()[2] == pytest.approx(8.0, abs=1e-3)
