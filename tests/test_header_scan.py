"""The SCP's SeriesInstanceUID lookup (dicom_node.header_scan, then pydicom) against pydicom reading the whole file,
on every real file in shared/data (plain, gzipped, enhanced, odd transfer syntaxes) and on data sets built to make
the header walk give up."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.header_scan import MAX_DEPTH, element_value, uid_value
from dicom_node.scp import SERIES_INSTANCE_UID_TAG, series_uid_in


def _raw_data_set(data: bytes) -> tuple[bytes, pydicom.uid.UID]:
    """The data set bytes as they travel in a C-STORE (no preamble, no file meta) and their transfer syntax."""
    stream = io.BytesIO(data)
    pydicom.filereader.read_preamble(stream, False)
    meta = pydicom.filereader._read_file_meta_info(stream)
    return stream.read(), meta.TransferSyntaxUID


def _real_files(root: Path) -> list[Path]:
    """Up to three files of every real series folder, and every file of the hard cases."""
    picked: list[Path] = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.is_file() and p.parent != root}):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".md")
        picked += files if "hard" in folder.parts else files[:3]
    return picked


def test_every_real_file_gives_pydicoms_series_uid(shared_data: Path) -> None:
    walked = 0
    checked = 0
    for path in _real_files(shared_data):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        try:
            raw, syntax = _raw_data_set(data)
        except Exception:  # noqa: BLE001 - not a DICOM file (a licence, a header of another format)
            continue
        if syntax == DeflatedExplicitVRLittleEndian:  # pynetdicom inflates these; series_uid_of asks pydicom
            continue
        expected = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).get("SeriesInstanceUID", "")).strip()
        assert series_uid_in(raw, syntax) == expected, path.name
        checked += 1
        walked += syntax.is_little_endian and uid_value(raw, SERIES_INSTANCE_UID_TAG, syntax.is_implicit_VR) is not None
    assert checked >= 25, checked
    assert walked >= checked - 3, f"the header walk answered only {walked} of {checked} real files"


def _encoded(ds: Dataset, implicit: bool = False) -> bytes:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return _raw_data_set(buffer.getvalue())[0]


def _base(series_uid: str | None = "1.2.826.0.1.3680043.8.498.77") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "MR"
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 3
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_plain_data_sets_are_walked(implicit: bool) -> None:
    raw = _encoded(_base(), implicit)
    assert uid_value(raw, SERIES_INSTANCE_UID_TAG, implicit) == "1.2.826.0.1.3680043.8.498.77"
    assert uid_value(_encoded(_base(None), implicit), SERIES_INSTANCE_UID_TAG, implicit) == ""  # absent: sorted past


def _nested_undefined_sequences(depth: int) -> bytes:
    """(0008,1140) sequences of undefined length, each in an item of undefined length of the one before, as scanners
    send them; the innermost item holds one UID."""
    inner = struct.pack("<HH2sH", 0x0008, 0x1155, b"UI", 8) + b"1.2.3.5\x00"
    for _ in range(depth):
        inner = (struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
                 + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
                 + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return inner


@pytest.mark.parametrize("depth", [1, 3, 9])
def test_undefined_length_sequences_before_the_uid(depth: int) -> None:
    """Stepped over up to MAX_DEPTH levels of nesting (the real Philips and Siemens files above need one); deeper,
    the walk gives up and pydicom answers."""
    raw = _encoded(_base())
    at = raw.index(struct.pack("<HH2s", 0x0020, 0x000E, b"UI"))
    raw = raw[:at] + _nested_undefined_sequences(depth) + raw[at:]
    walked = uid_value(raw, SERIES_INSTANCE_UID_TAG, False)
    assert walked == ("1.2.826.0.1.3680043.8.498.77" if depth < MAX_DEPTH else None)
    by_pydicom = pydicom.filereader.read_dataset(io.BytesIO(raw), False, True)
    assert len(by_pydicom.ReferencedImageSequence) == 1
    assert series_uid_in(raw, ExplicitVRLittleEndian) == by_pydicom.SeriesInstanceUID


def test_an_unknown_sequence_of_undefined_length_is_read_in_implicit_vr() -> None:
    """A private sequence whose VR the sender did not know (UN, undefined length): its items are implicit VR even in
    an explicit-VR data set."""
    raw = _encoded(_base())
    at = raw.index(struct.pack("<HH2s", 0x0020, 0x000E, b"UI"))
    implicit_element = struct.pack("<HHI", 0x0009, 0x1002, 8) + b"ABCDEFGH"
    private = (struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"PRIVATE "
               + struct.pack("<HH2sHI", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF)
               + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + implicit_element
               + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    raw = raw[:at] + private + raw[at:]
    assert uid_value(raw, SERIES_INSTANCE_UID_TAG, False) == "1.2.826.0.1.3680043.8.498.77"
    by_pydicom = pydicom.filereader.read_dataset(io.BytesIO(raw), False, True)
    assert series_uid_in(raw, ExplicitVRLittleEndian) == by_pydicom.SeriesInstanceUID


@pytest.mark.parametrize("value", ["1.2.3\\4.5", "1.2.3x"])
def test_values_other_than_one_plain_uid_are_left_to_pydicom(value: str) -> None:
    raw = _encoded(_base(value))
    assert uid_value(raw, SERIES_INSTANCE_UID_TAG, False) is None
    by_pydicom = str(pydicom.filereader.read_dataset(io.BytesIO(raw), False, True).get("SeriesInstanceUID", ""))
    assert series_uid_in(raw, ExplicitVRLittleEndian) == by_pydicom.strip()


def test_a_truncated_data_set_is_not_read_past_its_end() -> None:
    raw = _encoded(_base())
    cut = raw[: raw.index(b"1.2.826.0.1.3680043.8.498.77") - 3]
    assert element_value(cut, SERIES_INSTANCE_UID_TAG, False) is None
