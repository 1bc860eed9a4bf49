"""Bad input, fuzzed: whatever a PACS sends, reading a series ends in a volume or a stated rejection, never a crash.

Hypothesis draws mutations of a small valid MR series written by the project's writer (truncated files, damaged
preambles, flipped bytes, missing or contradictory geometry, mixed series, foreign modalities, huge or zero sizes,
empty pixel data, an unknown transfer syntax, duplicate SOP Instance UIDs with other content, constant volumes) and
feeds each to the reader; every outcome must be a :class:`LoadedSeries` or a :class:`SeriesRejected` with one of
the stable reasons. The number of inputs tried is counted and must reach 100. Then a good series still reads.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from reliability_log import record_bad_inputs

from fingerprint.errors import RejectReason, SeriesRejected
from fingerprint.imaging.dicom_read import read_dicom_file, read_series
from fingerprint.imaging.dicom_write import series_datasets

TRIED: list[str] = []
CRASHED: list[str] = []  # inputs that ended in anything but a volume or a stated rejection
#: pydicom warns about every damaged value it meets; here damage is the point.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def base_series() -> list[Dataset]:
    volume = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 500, (20, 24, 24)).astype(np.float32))
    volume.SetSpacing((2.0, 2.0, 2.0))
    return series_datasets(volume, patient_id="FUZZ-1")


BASE = base_series()


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def mutate(datasets: list[Dataset], kind: str, data: st.DataObject) -> list[bytes | Dataset]:
    """One mutation of the series, as file bytes or datasets."""
    items: list[Dataset] = [copy.deepcopy(ds) for ds in datasets]
    pick = data.draw(st.integers(0, len(items) - 1), label="instance")
    target = items[pick]
    if kind == "truncate":
        raw = encoded(target)
        cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
        return [raw[:cut] if i == pick else encoded(ds) for i, ds in enumerate(items)]
    if kind == "preamble":
        raw = bytearray(encoded(target))
        raw[128:132] = data.draw(st.binary(min_size=4, max_size=4), label="magic")
        return [bytes(raw) if i == pick else encoded(ds) for i, ds in enumerate(items)]
    if kind == "flip_bytes":
        raw = bytearray(encoded(target))
        for _ in range(data.draw(st.integers(1, 20), label="flips")):
            raw[data.draw(st.integers(132, len(raw) - 1))] = data.draw(st.integers(0, 255))
        return [bytes(raw) if i == pick else encoded(ds) for i, ds in enumerate(items)]
    if kind == "drop_geometry":
        keyword = data.draw(st.sampled_from(["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                             "Rows", "Columns", "BitsAllocated", "PixelRepresentation"]))
        for ds in items if data.draw(st.booleans(), label="all") else [target]:
            if keyword in ds:
                ds["PixelData"].VR = "OW"  # stated, so the file can still be written without BitsAllocated
                delattr(ds, keyword)
        return items
    if kind == "contradict_geometry":
        keyword, value = data.draw(st.sampled_from([
            ("ImageOrientationPatient", [0, 1, 0, 0, 0, 1]), ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0]),
            ("PixelSpacing", [0, 0]), ("PixelSpacing", [7.5, 0.3]), ("Rows", 65535), ("Columns", 1),
            ("ImagePositionPatient", [0, 0, 0]), ("SliceThickness", -3), ("NumberOfFrames", 40),
        ]))
        setattr(target, keyword, value)
        return items
    if kind == "foreign":
        keyword, value = data.draw(st.sampled_from([
            ("Modality", "CT"), ("Modality", ""), ("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]),
            ("SeriesInstanceUID", pydicom.uid.generate_uid()), ("SamplesPerPixel", 3),
            ("PhotometricInterpretation", "RGB"), ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.88.22"),
        ]))
        for ds in items if data.draw(st.booleans(), label="all") else [target]:
            setattr(ds, keyword, value)
        return items
    if kind == "pixels":
        how = data.draw(st.sampled_from(["empty", "short", "syntax", "constant", "duplicate_uid"]))
        if how == "empty":
            target.PixelData = b""
        elif how == "short":
            target.PixelData = target.PixelData[: len(target.PixelData) // 3]
        elif how == "syntax":  # an unknown transfer syntax, patched into the written file (pydicom will not write it)
            raw = encoded(target).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.9\x00", 1)
            return [raw if i == pick else encoded(ds) for i, ds in enumerate(items)]
        elif how == "constant":
            for ds in items:
                ds.PixelData = bytes(len(ds.PixelData))
        else:
            other = items[(pick + 1) % len(items)]
            target.SOPInstanceUID = other.SOPInstanceUID
        return items
    if kind == "few":
        return items[: data.draw(st.integers(0, 2))]
    raise AssertionError(kind)


KINDS = ["truncate", "preamble", "flip_bytes", "drop_geometry", "contradict_geometry", "foreign", "pixels", "few"]


@settings(max_examples=160, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_any_mutation_ends_in_a_volume_or_a_stated_rejection(kind: str, data: st.DataObject, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    for number, item in enumerate(mutate(BASE, kind, data)):
        (folder / f"{number:03d}.dcm").write_bytes(item if isinstance(item, bytes) else encoded(item))
    TRIED.append(kind)
    try:
        loaded = read_series(folder)
    except SeriesRejected as rejection:
        assert rejection.reason in RejectReason and rejection.detail
        assert "FUZZ-1" not in rejection.detail  # never the patient's ID in a reason
    except Exception:
        CRASHED.append(kind)
        raise
    else:
        assert loaded.image.GetDimension() == 3 and min(loaded.image.GetSize()) >= 1


def test_enough_inputs_were_tried_and_a_good_series_still_reads(tmp_path: Path) -> None:
    if not TRIED:
        pytest.skip("run with the fuzz test in the same session")
    record_bad_inputs("fuzzed DICOM series (hypothesis)", tried=len(TRIED), crashes=len(CRASHED))
    assert len(TRIED) >= 100 and set(TRIED) == set(KINDS), (len(TRIED), sorted(set(TRIED)))
    for number, ds in enumerate(BASE):
        (tmp_path / f"{number:03d}.dcm").write_bytes(encoded(ds))
    assert read_series(tmp_path).image.GetSize() == (24, 24, 20)
    assert read_dicom_file(tmp_path / "000.dcm") is not None
