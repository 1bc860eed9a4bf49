"""Any volume -> a realistic MR Image Storage series, on disk or in memory (tests, the cohort generator, the demo,
the benchmarks; :func:`noise_series` makes the small noise series the DICOM tests send).

Real series differ in acquisition plane, obliquity, slice thickness, bit depth and transfer syntax; the pipeline
must give the same slice for all of them. This writer re-samples a volume (a NIfTI head, a synthetic subject) on the
grid a scanner would have used for the requested plane and writes one classic single-frame MR object per slice with
the attributes a PACS and our reader rely on: patient/study/series modules, ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness, SpacingBetweenSlices, 12-bit stored pixels with
RescaleSlope/Intercept, fresh UIDs from ``pydicom.uid.generate_uid``.

Thick slices are simulated honestly: the volume is smoothed along the slice normal with a Gaussian whose FWHM is the
slice thickness (less the source's own resolution along that normal) before it is sampled at the slice centres.
Writing a volume on its own grid (its direction, spacing and thickness) is therefore an identity resampling.

Transfer syntaxes: the native ones (explicit/implicit little endian, deflated) and those pydicom can encode here:
RLE Lossless (pydicom's own encoder), JPEG-LS Lossless and JPEG 2000 Lossless when their encoder plugins are
installed (see :func:`encodable_transfer_syntaxes`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

#: Direction matrices (columns: row direction, column direction, slice normal; LPS) of the standard planes.
PLANES: dict[str, tuple[float, ...]] = {
    "axial": (1, 0, 0, 0, 1, 0, 0, 0, 1),  # IOP [1 0 0 0 1 0]; slices inferior -> superior
    "sagittal": (0, 0, -1, 1, 0, 0, 0, -1, 0),  # IOP [0 1 0 0 0 -1]; slices left -> right
    "coronal": (1, 0, 0, 0, 0, 1, 0, -1, 0),  # IOP [1 0 0 0 0 -1]; slices anterior -> posterior
}
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
BITS_STORED = 12


def encodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes this installation can write (native + compressed with an available encoder)."""
    from pydicom.pixels import get_encoder

    found = list(NATIVE_SYNTAXES)
    for uid in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        try:
            if get_encoder(uid).is_available:
                found.append(uid)
        except (NotImplementedError, ValueError):
            continue
    return found


def write_series(image: sitk.Image, out_dir: Path | str, **options: Any) -> list[Path]:
    """Write ``image`` as one MR series in ``out_dir`` (created) and return the file paths, one per slice
    (``0001.dcm`` ...). ``options`` are those of :func:`series_datasets` (``patient_id`` is required)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(series_datasets(image, **options)):
        path = out / f"{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def series_datasets(
    image: sitk.Image,
    *,
    patient_id: str,
    orientation: str | Sequence[float] = "axial",
    slice_thickness_mm: float | None = None,
    pixel_spacing_mm: float | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_date: str = "20240101",
    series_description: str = "T1 MPRAGE",
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "ANONYMOUS^SUBJECT",
    patient_birth_date: str = "",
    patient_sex: str = "O",
    series_number: int = 1,
    manufacturer: str = "DeepBrainPrint synthetic",
    magnetic_field_strength: float = 3.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "NONE"),
    modality: str = "MR",
) -> list[Dataset]:
    """``image`` as one MR series in memory: one dataset per slice, in ``transfer_syntax`` (file meta included).

    ``orientation``: "axial", "sagittal", "coronal" or a 9-value direction matrix (row-major, columns = row
    direction, column direction, slice normal) for oblique acquisitions. ``slice_thickness_mm`` defaults to the
    in-plane spacing (isotropic); slices are contiguous (gap = thickness). ``pixel_spacing_mm`` defaults to the
    finest spacing of ``image``.
    """
    direction = _direction(orientation)
    in_plane = float(pixel_spacing_mm or min(image.GetSpacing()))
    thickness = float(slice_thickness_mm or in_plane)
    volume = _resample_for_acquisition(image, direction, in_plane, thickness)
    array = sitk.GetArrayFromImage(volume)  # (slices, rows, columns)
    low, high = float(array.min()), float(array.max())
    slope = max(high - low, 1e-6) / (2**BITS_STORED - 1)
    stored = np.clip(np.round((array - low) / slope), 0, 2**BITS_STORED - 1).astype(np.uint16)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    normal = np.array(direction).reshape(3, 3)[:, 2]
    datasets = []
    now = dt.datetime.now()
    for k in range(stored.shape[0]):
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        ds = _slice_dataset(
            stored[k],
            patient_id=patient_id,
            patient_name=patient_name,
            patient_birth_date=patient_birth_date,
            patient_sex=patient_sex,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            study_date=study_date,
            study_time=now.strftime("%H%M%S"),
            series_description=series_description,
            series_number=series_number,
            manufacturer=manufacturer,
            field_strength=magnetic_field_strength,
            image_type=image_type,
            modality=modality,
            instance_number=k + 1,
            position=position,
            iop=[float(v) for v in np.array(direction).reshape(3, 3)[:, :2].T.ravel()],
            spacing=(in_plane, in_plane),
            thickness=thickness,
            slice_location=float(np.dot(position, normal)),
            slope=slope,
            intercept=low,
        )
        _encode(ds, UID(transfer_syntax))
        datasets.append(ds)
    return datasets


def noise_series(
    count: int, *, patient_id: str = "SYNTH-PATIENT-0001", series_uid: str | None = None, size: int = 32, seed: int = 0
) -> list[Dataset]:
    """``count`` axial slices of ``size`` x ``size`` seeded noise, 1 mm apart, as one MR series in memory (fresh UIDs,
    explicit little endian): small valid MR Image Storage objects for the tests and the ingest benchmark. The fake
    PatientID, patient name (``Synthetic^<id>``) and birth date are there on purpose, so tests can assert that patient
    data never show up in logs or spool paths."""
    pixels = np.random.default_rng(seed).integers(0, 4000, (count, size, size), dtype=np.uint16)
    return series_datasets(
        sitk.GetImageFromArray(pixels), patient_id=patient_id, series_uid=series_uid,
        patient_name=f"Synthetic^{patient_id}", patient_birth_date="19700101", series_description="T1 MPRAGE synthetic",
    )  # fmt: skip


def _direction(orientation: str | Sequence[float]) -> tuple[float, ...]:
    if isinstance(orientation, str):
        if orientation not in PLANES:
            raise ValueError(f"orientation must be one of {', '.join(PLANES)} or a 3x3 direction matrix")
        return PLANES[orientation]
    matrix = np.asarray(orientation, dtype=float).reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
        raise ValueError("an oblique orientation must be an orthonormal 3x3 direction matrix")
    if np.linalg.det(matrix) < 0:  # keep a right-handed frame, as scanners do
        matrix[:, 2] *= -1
    return tuple(float(v) for v in matrix.ravel())


def _resample_for_acquisition(image: sitk.Image, direction: Sequence[float], in_plane: float, thickness: float) -> sitk.Image:
    """``image`` sampled on a grid with ``direction`` covering the same physical box, smoothed across slices."""
    matrix = np.array(direction).reshape(3, 3)
    size = np.array(image.GetSize())
    corners = np.array(
        [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (size - 1) * np.array(b)]) for b in np.ndindex(2, 2, 2)]
    )
    local = corners @ matrix  # coordinates along the new axes
    low, high = local.min(axis=0), local.max(axis=0)
    spacing = np.array([in_plane, in_plane, thickness])
    new_size = np.maximum(1, np.floor((high - low) / spacing).astype(int) + 1)
    grid = sitk.Image([int(v) for v in new_size], sitk.sitkFloat32)
    grid.SetSpacing([float(v) for v in spacing])
    grid.SetDirection([float(v) for v in matrix.ravel()])
    grid.SetOrigin([float(v) for v in matrix @ low])
    source = sitk.Cast(image, sitk.sitkFloat32)
    # The source already blurs over its own voxel size along the new normal; add only what the thickness lacks.
    normal = matrix[:, 2]
    source_axes = np.array(image.GetDirection()).reshape(3, 3)
    source_resolution = float(np.sum(np.abs(source_axes.T @ normal) * np.array(image.GetSpacing())))
    across = np.sqrt(max(0.0, thickness**2 - source_resolution**2)) / 2.355  # Gaussian sigma from FWHM
    finest = min(image.GetSpacing())
    if across > 0.5 * finest:
        # Smooth along the new slice normal: resample to the new frame at fine spacing, blur along z, then sample.
        fine = sitk.Image([int(v) for v in np.ceil((high - low) / np.array([in_plane, in_plane, finest])) + 1], sitk.sitkFloat32)
        fine.SetSpacing([in_plane, in_plane, finest])
        fine.SetDirection(grid.GetDirection())
        fine.SetOrigin(grid.GetOrigin())
        source = sitk.Resample(source, fine, sitk.Transform(), sitk.sitkLinear, 0.0)
        source = sitk.RecursiveGaussian(source, sigma=float(across), direction=2)
    return sitk.Resample(source, grid, sitk.Transform(), sitk.sitkLinear, 0.0)


def _slice_dataset(pixels: np.ndarray, **a) -> Dataset:  # noqa: ANN003 - private helper, keywords listed by caller
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = a["modality"]
    ds.ImageType = list(a["image_type"])
    ds.Manufacturer = a["manufacturer"]
    ds.PatientID = a["patient_id"]
    ds.PatientName = a["patient_name"]
    ds.PatientBirthDate = a["patient_birth_date"]
    ds.PatientSex = a["patient_sex"]
    ds.StudyInstanceUID = a["study_uid"]
    ds.SeriesInstanceUID = a["series_uid"]
    ds.FrameOfReferenceUID = a["frame_uid"]
    ds.StudyDate = a["study_date"]
    ds.SeriesDate = a["study_date"]
    ds.ContentDate = a["study_date"]
    ds.StudyTime = a["study_time"]
    ds.SeriesTime = a["study_time"]
    ds.ContentTime = a["study_time"]
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = a["series_number"]
    ds.InstanceNumber = a["instance_number"]
    ds.SeriesDescription = a["series_description"]
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SP", "MP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.InversionTime = "900"
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = a["field_strength"]
    ds.FlipAngle = "9"
    ds.ImagePositionPatient = [f"{v:.4f}" for v in a["position"]]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in a["iop"]]
    ds.PixelSpacing = [f"{v:.4f}" for v in a["spacing"]]
    ds.SliceThickness = f"{a['thickness']:.4f}"
    ds.SpacingBetweenSlices = f"{a['thickness']:.4f}"
    ds.SliceLocation = f"{a['slice_location']:.4f}"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{a['slope']:.10g}"
    ds.RescaleIntercept = f"{a['intercept']:.10g}"
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = pixels.tobytes()
    return ds


def _encode(ds: Dataset, transfer_syntax: UID) -> None:
    """Give ``ds`` its file meta and encode its pixels in ``transfer_syntax`` (compressing where it asks for it)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if transfer_syntax.is_compressed:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = transfer_syntax
