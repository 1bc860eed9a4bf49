"""Every RejectReason is reachable, carries a clear detail without PHI, and nothing in shared/data/hard crashes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from fingerprint.errors import RejectReason, SeriesRejected
from fingerprint.imaging.dicom_read import read_series
from fingerprint.imaging.dicom_write import write_series
from fingerprint.imaging.pipeline import slice_series

PATIENT_ID = "PHI-SECRET-4711"
PATIENT_NAME = "Doe^Jane"


@pytest.fixture(scope="module")
def small_head(colin27: sitk.Image) -> sitk.Image:
    return sitk.BinShrink(colin27, [4, 4, 4])  # 45 x 54 x 45 voxels of 4 mm


def _write(volume: sitk.Image, folder: Path, **kwargs) -> list[Path]:
    return write_series(volume, folder, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, **kwargs)


def _rewrite(paths: list[Path], change: Callable[[pydicom.Dataset], None]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def no_dicom(head: sitk.Image, folder: Path) -> Path:
    (folder / "readme.txt").write_text("a report exported as text")
    (folder / "scan.raw").write_bytes(np.zeros(1000, np.uint8).tobytes())
    return folder


def no_pixel_data(head: sitk.Image, folder: Path) -> Path:
    def strip(ds: pydicom.Dataset) -> None:
        del ds.PixelData
        ds.SOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.88.22")  # Enhanced SR

    _rewrite(_write(head, folder), strip)
    return folder


def not_mr(head: sitk.Image, folder: Path) -> Path:
    _write(head, folder, modality="CT")
    _rewrite(sorted(folder.iterdir()), lambda ds: setattr(ds, "SOPClassUID", pydicom.uid.CTImageStorage))
    return folder


def localizer(head: sitk.Image, folder: Path) -> Path:
    _write(head, folder, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_description="AAHead_Scout")
    return folder


def too_few_slices(head: sitk.Image, folder: Path) -> Path:
    _write(head[:, :, 20:28], folder)
    return folder


def inconsistent_geometry(head: sitk.Image, folder: Path) -> Path:
    paths = _write(head, folder)
    paths[len(paths) // 2].unlink()  # a missing slice: one gap twice as large
    return folder


def undecodable(head: sitk.Image, folder: Path) -> Path:
    paths = _write(head, folder, transfer_syntax=pydicom.uid.RLELossless)

    def relabel(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder installed

    _rewrite(paths, relabel)
    return folder


def not_t1_brain(head: sitk.Image, folder: Path) -> Path:
    noise = sitk.GetImageFromArray(np.random.default_rng(1).uniform(0, 1000, (40, 64, 64)).astype(np.float32))
    noise.SetSpacing((3.0, 3.0, 3.0))
    _write(noise, folder)
    return folder


def multiple_series(head: sitk.Image, folder: Path) -> Path:
    _write(head, folder / "a")
    _write(head, folder / "b")
    return folder


CASES: dict[RejectReason, Callable[[sitk.Image, Path], Path]] = {
    RejectReason.NO_DICOM: no_dicom,
    RejectReason.NO_PIXEL_DATA: no_pixel_data,
    RejectReason.NOT_MR: not_mr,
    RejectReason.LOCALIZER: localizer,
    RejectReason.TOO_FEW_SLICES: too_few_slices,
    RejectReason.INCONSISTENT_GEOMETRY: inconsistent_geometry,
    RejectReason.UNDECODABLE_TRANSFER_SYNTAX: undecodable,
    RejectReason.NOT_T1_BRAIN: not_t1_brain,
    RejectReason.MULTIPLE_SERIES: multiple_series,
}


def test_every_reason_has_a_case() -> None:
    assert set(CASES) == set(RejectReason)


@pytest.mark.parametrize("reason", list(CASES), ids=lambda r: r.value)
def test_reason_is_reached_with_a_phi_free_detail(reason: RejectReason, small_head: sitk.Image, tmp_path: Path) -> None:
    source = CASES[reason](small_head, tmp_path)
    with pytest.raises(SeriesRejected) as caught:
        slice_series(source)
    assert caught.value.reason is reason, caught.value.detail
    detail = caught.value.detail
    assert len(detail) > 10
    assert PATIENT_ID not in detail and "Doe" not in detail
    assert caught.value.as_json() == {"rejected": reason.value, "detail": detail}
    # Whose series it was travels with the rejection (read once, with the headers), except where nothing was DICOM.
    if reason is RejectReason.NO_DICOM:
        assert caught.value.identifiers is None
    else:
        assert caught.value.identifiers is not None and caught.value.identifiers.patient_id == PATIENT_ID
        assert caught.value.identifiers.series_instance_uid


def test_a_good_series_written_the_same_way_is_accepted(small_head: sitk.Image, tmp_path: Path) -> None:
    """The cases above fail for their stated reason, not because the writer's output is unusable."""
    _write(small_head, tmp_path)
    assert read_series(tmp_path).image.GetSize() == small_head.GetSize()


def _hard_inputs() -> list[Path]:
    from tests.conftest import SHARED_DATA

    hard = SHARED_DATA / "hard"
    return sorted(hard.rglob("*")) if hard.exists() else []


@pytest.mark.parametrize("path", _hard_inputs(), ids=lambda p: str(p).split("hard/")[-1])
def test_everything_in_hard_is_read_or_rejected_with_a_reason(shared_data: Path, path: Path) -> None:
    try:
        loaded = read_series(path)
    except SeriesRejected as rejected:
        assert rejected.reason in RejectReason and rejected.detail
        return
    assert loaded.image.GetDimension() == 3


def test_hard_data_is_rejected_for_the_right_reasons(shared_data: Path) -> None:
    hard = shared_data / "hard"
    expected = {
        "transfer-syntaxes/9.dcm": RejectReason.NOT_T1_BRAIN,  # a Siemens fMRI mosaic
        "12bit": RejectReason.NOT_T1_BRAIN,
        "enhanced": RejectReason.MULTIPLE_SERIES,
        "enhanced/Philips": RejectReason.NOT_T1_BRAIN,  # several images per position (field map)
        "enhanced/Siemens/XA10/6_1.dcm": RejectReason.TOO_FEW_SLICES,
        "agfa-enhanced/Agfa": RejectReason.NOT_T1_BRAIN,  # perfusion
    }
    for relative, reason in expected.items():
        with pytest.raises(SeriesRejected) as caught:
            read_series(hard / relative)
        assert caught.value.reason is reason, relative


def test_a_three_plane_scout_without_telling_words_is_a_localizer(small_head: sitk.Image, tmp_path: Path) -> None:
    """GE/Philips scouts are often just a few images in three planes; their geometry gives them away."""
    for plane in ("axial", "sagittal", "coronal"):
        paths = _write(small_head, tmp_path / plane, orientation=plane, series_description="3pl T1")
        keep = paths[len(paths) // 2 - 1 : len(paths) // 2 + 2]
        for path in paths:
            if path not in keep:
                path.unlink()
    series_uid = pydicom.uid.generate_uid()
    _rewrite(sorted(tmp_path.rglob("*.dcm")), lambda ds: setattr(ds, "SeriesInstanceUID", series_uid))
    with pytest.raises(SeriesRejected) as caught:
        read_series(tmp_path)
    assert caught.value.reason is RejectReason.LOCALIZER


def test_malformed_headers_are_refused_not_raised(small_head: sitk.Image, tmp_path: Path) -> None:
    paths = _write(small_head, tmp_path)
    _rewrite(paths[:1], lambda ds: delattr(ds, "PixelSpacing"))
    with pytest.raises(SeriesRejected) as caught:
        read_series(tmp_path)
    assert caught.value.reason is RejectReason.INCONSISTENT_GEOMETRY


def test_a_skull_stripped_volume_ends_in_a_slice_or_a_stated_reason_and_the_next_series_still_reads(
    small_heads: dict, tmp_path: Path
) -> None:
    """A brain-only (skull-stripped) export is not what the alignment expects (it fits whole heads): whatever comes out,
    it is a canonical slice or a rejection with a stable reason, and the unstripped head written next still slices."""
    from fingerprint.imaging.reference import load_reference

    head = small_heads["colin"]
    mask = sitk.Resample(load_reference().mask, head, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mask = sitk.BinaryDilate(mask, [2, 2, 2], sitk.sitkBall)  # a stripping tool keeps a rim of CSF
    stripped = sitk.Mask(head, mask)
    kept = sitk.GetArrayViewFromImage(stripped)
    assert 0 < np.count_nonzero(kept) < 0.5 * kept.size, "the planted volume is brain only"
    _write(stripped, tmp_path / "stripped")
    try:
        result = slice_series(tmp_path / "stripped")
    except SeriesRejected as rejection:
        assert rejection.reason in set(RejectReason) and rejection.detail
        assert PATIENT_ID not in rejection.detail and PATIENT_NAME not in rejection.detail
    else:
        assert np.isfinite(result.pixels).all() and result.pixels.std() > 0.05
    _write(head, tmp_path / "whole")
    assert np.isfinite(slice_series(tmp_path / "whole").pixels).all()
