"""Small synthetic MR instances: valid MR Image Storage objects for tests and the ingest benchmark.

They carry a fake PatientID on purpose, so tests can assert that it never shows up in logs or spool paths.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


def mr_series(
    count: int,
    *,
    patient_id: str = "SYNTH-PATIENT-0001",
    series_uid: str | None = None,
    size: int = 32,
    seed: int = 0,
) -> list[Dataset]:
    """``count`` axial MR slices of ``size`` x ``size`` 16-bit pixels, one series, 1 mm apart."""
    rng = np.random.default_rng(seed)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    return [
        _mr_slice(index, rng.integers(0, 4000, (size, size), dtype=np.uint16), patient_id, study_uid, series_uid,
                  frame_uid)
        for index in range(count)
    ]  # fmt: skip


def _mr_slice(
    index: int, pixels: np.ndarray, patient_id: str, study_uid: str, series_uid: str, frame_uid: str
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = f"Synthetic^{patient_id}"
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 MPRAGE synthetic"
    ds.StudyDate = "20240101"
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds
