"""The reader on the real files a PACS sends (shared/data) and on in-memory datasets."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from fingerprint.imaging.dicom_read import (
    _pixel_array,
    find_series,
    read_dicom_file,
    read_series,
)

T1_SERIES = {
    # folder: (size, spacing mm) as the README describes them (the reader's x, y = columns, rows; z = slices)
    "philips-elition-3t-sag-gz": ((256, 256, 170), (1.0, 1.0, 1.0)),
    "siemens-trio-3t-sag": ((256, 256, 176), (1.0, 1.0, 1.0)),
    "siemens-skyra-3t-sag-child": ((256, 256, 192), (0.859, 0.859, 0.9)),
    "siemens-prisma-xa30-enhanced-2mm": ((128, 128, 96), (2.0, 2.0, 2.0)),
    "siemens-avanto-1.5t-axial-postcontrast": ((512, 512, 120), (0.41, 0.41, 1.5)),
}


@pytest.mark.parametrize("folder", sorted(T1_SERIES))
def test_real_t1_series_become_volumes_with_their_geometry(shared_data: Path, folder: str) -> None:
    loaded = read_series(shared_data / "t1" / folder)
    size, spacing = T1_SERIES[folder]
    assert loaded.image.GetSize() == size
    assert np.allclose(loaded.image.GetSpacing(), spacing, atol=0.01)
    direction = np.array(loaded.image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-3)  # orthonormal: no gantry-tilt shear
    assert loaded.identifiers.modality == "MR"
    assert len(loaded.identifiers.sop_instance_uids) == loaded.info["instances"]
    pixels = sitk.GetArrayViewFromImage(loaded.image)
    assert np.isfinite(pixels).all() and pixels.max() > pixels.min()


def test_slices_are_sorted_along_the_normal(shared_data: Path) -> None:
    """Origin = the first slice along the normal; every slice lies one spacing further (files named at random)."""
    folder = shared_data / "t1" / "siemens-skyra-3t-sag-child"
    loaded = read_series(folder)
    positions = []
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        positions.append([float(v) for v in ds.ImagePositionPatient])
    direction = np.array(loaded.image.GetDirection()).reshape(3, 3)
    along = np.array(positions) @ direction[:, 2]
    assert np.isclose(along.min(), np.dot(loaded.image.GetOrigin(), direction[:, 2]), atol=1e-3)
    assert np.isclose(along.max() - along.min(), (loaded.image.GetSize()[2] - 1) * loaded.image.GetSpacing()[2], atol=0.01)


def test_philips_rescale_slope_is_applied(shared_data: Path) -> None:
    folder = shared_data / "t1" / "philips-elition-3t-sag-gz"
    first = sorted(folder.iterdir())[0]
    ds = read_dicom_file(first)
    assert ds is not None and float(ds.RescaleSlope) != 1.0
    loaded = read_series(folder)
    stored_max = max(int(read_dicom_file(p).pixel_array.max()) for p in sorted(folder.iterdir())[60:110])
    assert float(sitk.GetArrayViewFromImage(loaded.image).max()) > stored_max * 1.5  # slope 2.36 applied


def test_gzip_wrapped_and_oddly_named_files_are_read_and_junk_is_skipped(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm"
    original = next(source.iterdir())
    with open(original, "rb") as fh, gzip.open(tmp_path / "image.bin", "wb") as out:
        out.write(fh.read())
    (tmp_path / "notes.txt").write_text("not DICOM")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "noise").write_bytes(np.random.default_rng(0).bytes(4096))
    assert read_dicom_file(tmp_path / "notes.txt") is None
    assert read_dicom_file(tmp_path / "sub" / "noise") is None
    assert list(find_series(tmp_path)) == [str(pydicom.dcmread(original, stop_before_pixels=True).SeriesInstanceUID)]
    assert read_series(tmp_path).image.GetSize() == (128, 128, 96)


def test_in_memory_datasets_equal_files(shared_data: Path) -> None:
    folder = shared_data / "repeats" / "decubitus-HFS-t1-2d"
    from_files = read_series(folder)
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir(), reverse=True)]
    from_memory = read_series(datasets)
    assert from_memory.image.GetOrigin() == from_files.image.GetOrigin()
    assert np.array_equal(sitk.GetArrayViewFromImage(from_memory.image), sitk.GetArrayViewFromImage(from_files.image))


def test_find_series_groups_a_mixed_study_and_ignores_objects_without_pixels(shared_data: Path, tmp_path: Path) -> None:
    for name in ("decubitus-HFS-t1-2d", "decubitus-HFP-t1-2d"):
        shutil.copytree(shared_data / "repeats" / name, tmp_path / name)
    report = pydicom.dcmread(next((tmp_path / "decubitus-HFS-t1-2d").iterdir()))
    del report.PixelData
    del report.Rows, report.Columns
    report.SOPInstanceUID = pydicom.uid.generate_uid()
    report.save_as(tmp_path / "report.dcm")
    groups = find_series(tmp_path)
    assert sorted(len(v) for v in groups.values()) == [35, 35]


def test_nine_transfer_syntaxes_decode_to_the_same_pixels(shared_data: Path) -> None:
    folder = shared_data / "hard" / "transfer-syntaxes"
    reference = _pixel_array(read_dicom_file(folder / "1.dcm"))
    syntaxes = set()
    for index in range(1, 10):
        ds = read_dicom_file(folder / f"{index}.dcm")
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        assert np.array_equal(_pixel_array(ds).astype(np.int32), reference.astype(np.int32)), f"{index}.dcm"
    assert len(syntaxes) >= 7


def test_12bit_pixels_stay_within_12_bits_despite_set_high_bits(shared_data: Path) -> None:
    for name, low, high in (("12bitUnsigned_0x0F0F", 0, 4095), ("12bitSigned_0x0F0F", -2048, 2047)):
        ds = read_dicom_file(shared_data / "hard" / "12bit" / f"{name}.dcm")
        raw = np.frombuffer(ds.PixelData, dtype="<u2")
        assert raw.max() > 4095  # the file really has bits set above bit 11
        pixels = _pixel_array(ds)
        assert low <= pixels.min() and pixels.max() <= high
