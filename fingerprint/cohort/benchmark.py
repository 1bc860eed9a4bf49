"""The benchmark (and calibration set), full path: each visit is a whole 3D volume as a scanner would store it.

Unlike the training fast path nothing is assumed about the pipeline: the head lies rotated (up to +-15 deg about each
axis) and shifted (up to +-20 mm) in the scanner, the field of view (200-230 mm in plane, 150-180 mm coverage, 40 mm
more for coronal slices, off-centre up to 10 mm) and the acquisition plane (axial, sagittal, coronal, oblique) vary, voxels are 1-1.5 mm in plane with slices
1-2.5 mm thick, and the scanner's contrast, bias field and Rician noise are applied in scanner space. The slice
pipeline must find the anatomy on its own, which is what the benchmark measures. The real-head kinds take the same
path, with about a quarter of their visits as thick 2D series (4-5 mm slices, see
:func:`fingerprint.cohort.visits.thick_2d_protocol`).

    scanner voxel --pose (scanner -> subject)--> subject space --ageing + anatomy--> base head

Volumes are written as int16 NIfTI (``volumes/<scan_id>.nii.gz``, ~2-4 MB) with the scanner's arbitrary intensity
scale; ``--dicom N`` also writes the first N as DICOM series with the slice helper's
``fingerprint.imaging.dicom_write.write_series`` for end-to-end runs through the PACS path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fingerprint.cohort.appearance import apply_appearance
from fingerprint.cohort.deform import BRAIN_CENTRE, SubjectAnatomy
from fingerprint.cohort.records import scan_row, write_cohort_csv
from fingerprint.cohort.training_set import SHARP_LIMIT_MM, head_variant
from fingerprint.cohort.visits import (
    SubjectPlan,
    VisitPlan,
    plan_visits,
    pose_transform,
    scanner_direction,
)
from fingerprint.parallel import ordered_map

#: Slices thicker than SHARP_LIMIT_MM are the mean of this many thinner sub-slices (partial-volume averaging).
SUB_SLICES = 3


def scanner_grid(visit: VisitPlan, slice_spacing_mm: float | None = None) -> sitk.Image:
    """The empty scanner-space image of a visit: plane, voxel size, field of view, centred near the head."""
    direction = scanner_direction(visit)
    pixel, thickness = visit.appearance.pixel_mm, visit.appearance.thickness_mm
    spacing = (pixel, pixel, slice_spacing_mm or thickness)
    size = [int(round(visit.fov_mm / pixel)), int(round(visit.fov_mm / pixel)), int(round(visit.coverage_mm / spacing[2]))]
    pose = pose_transform(visit)
    head_centre = np.asarray(pose.GetInverse().TransformPoint(BRAIN_CENTRE)) + np.asarray(visit.fov_offset_mm)
    half_extent = direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0)
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(tuple(direction.ravel()))
    grid.SetOrigin(tuple(float(v) for v in head_centre - half_extent))
    return grid


def scan_volume(anatomy: SubjectAnatomy, visit: VisitPlan) -> sitk.Image:
    """One visit as the scanner stores it: int16 volume in scanner space (see module docstring)."""
    thickness = visit.appearance.thickness_mm
    sub = SUB_SLICES if thickness > SHARP_LIMIT_MM else 1
    fine = scanner_grid(visit, thickness / sub)
    head = head_variant(anatomy.base_head, visit.appearance.pixel_mm > SHARP_LIMIT_MM)
    chain = sitk.CompositeTransform([anatomy.to_base(visit.years), pose_transform(visit)])
    sampled = sitk.GetArrayFromImage(sitk.Resample(head, fine, chain, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    slices = sampled.shape[0] // sub
    values = sampled[: slices * sub].reshape(slices, sub, *sampled.shape[1:]).mean(axis=1)
    grid = scanner_grid(visit)
    values = values[: grid.GetSize()[2]]
    shaded = apply_appearance(values, _acquisition_points(grid, values.shape), visit.appearance, visit.rng())
    scaled = np.clip(np.round(shaded * visit.appearance.intensity_scale), 0, 32767).astype(np.int16)
    image = sitk.GetImageFromArray(scaled)
    image.SetSpacing(grid.GetSpacing())
    image.SetDirection(grid.GetDirection())
    image.SetOrigin(grid.GetOrigin())
    return image


def _acquisition_points(grid: sitk.Image, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates in the acquisition frame (mm from the grid centre), as sparse broadcastable (u, v, w) axes."""
    spacing = grid.GetSpacing()
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape[::-1], spacing)]  # along x, y, z indices
    w, v, u = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij", sparse=True)
    return u, v, w


def write_volume_cohort(
    out: Path,
    subjects: list[SubjectPlan],
    visits: int,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    dicom_scans: int = 0,
) -> int:
    """Write ``volumes/<scan_id>.nii.gz`` and ``cohort.csv`` (with ``path``) into ``out``; returns the scan count."""
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for subject, scans in ordered_map(subject_volumes, subjects, (visits, out), workers, progress):
        rows.extend(scan_row(subject, visit, path) for visit, path in scans)
    write_cohort_csv(out, rows)
    if dicom_scans:
        write_dicom_copies(out, rows[:dicom_scans])
    return len(rows)


def subject_volumes(subject: SubjectPlan, visits: int, out: Path) -> list[tuple[VisitPlan, str]]:
    """Write one subject's visit volumes; returns (visit, path relative to ``out``). Entry point for workers."""
    anatomy = subject.anatomy()
    written = []
    for visit in plan_visits(subject, visits):
        relative = f"volumes/{visit.scan_id}.nii.gz"
        sitk.WriteImage(scan_volume(anatomy, visit), str(out / relative), useCompression=True)
        written.append((visit, relative))
    return written


def write_dicom_copies(out: Path, rows: list[dict[str, str]]) -> None:
    """Write these scans again as DICOM series (``dicom/<scan_id>/``), one patient per subject, for PACS-path runs."""
    from fingerprint.imaging.dicom_write import write_series

    for row in rows:
        image = sitk.ReadImage(str(out / row["path"]))
        write_series(  # the volume's own grid: the writer's resampling is then the identity
            image,
            out / "dicom" / row["scan_id"],
            patient_id=row["subject_id"],
            orientation=image.GetDirection(),
            pixel_spacing_mm=image.GetSpacing()[0],
            slice_thickness_mm=image.GetSpacing()[2],
            study_date=row["date"].replace("-", ""),
            series_description=f"synthetic T1 {row['scan_id']}",
        )
