"""The training set, fast path: one canonical slice per subject-visit, sampled straight from the base head.

Why no 3D volume per visit: the slice pipeline undoes head repositioning by rigid alignment, so what reaches the
encoder is (subject anatomy, after the visit's ageing) seen through the pipeline's *residual* alignment error, with the
visit scanner's contrast. We compose exactly that chain of maps and sample only the 128 x 128 canonical plane
(:func:`fingerprint.imaging.slicing.slice_grid`), ~10-20 ms per slice instead of seconds per volume:

    reference plane --residual rigid error--> subject space --slab offset--> subject anatomy + ageing --> base head

- residual rigid error (:class:`fingerprint.cohort.visits.ResidualModel`): a per-subject offset, a per-visit spread
  and occasional alignment failures, the shift including the axial level; sized to what the pipeline really does on
  the benchmark (``deepbrainprint cohort measure-alignment``);
- resolution: the base head is pre-blurred once for pixels coarser than 1.2 mm, and thick slices (> 1.2 mm) are the
  mean of three planes spread over the slice thickness along the acquisition's slice normal (which the head's
  repositioning turns in subject space);
- scanner appearance (contrast curve, bias field in scanner coordinates, Rician noise) on the sampled intensities,
  then the pipeline's own mask and percentile normalisation (:func:`fingerprint.imaging.slicing.normalise`).

Output folder: ``cohort.csv`` (scan_id, subject_id, visit, date, base_head, split), ``slices.npz`` (float16 ``slices``
(N, 128, 128) and ``scan_id``), and ``cohort.json`` (how it was made). With level offsets (the multi-level input of
an experiment, :func:`fast_levels`), ``slices`` is (N, L, 128, 128).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fingerprint.cohort.appearance import apply_appearance
from fingerprint.cohort.deform import SubjectAnatomy
from fingerprint.cohort.heads import load_head
from fingerprint.cohort.records import scan_row, write_cohort_csv
from fingerprint.cohort.visits import (
    MEASURED_RESIDUAL,
    ResidualModel,
    SubjectPlan,
    VisitPlan,
    plan_visits,
    pose_transform,
    residual_transform,
    scanner_direction,
)
from fingerprint.files import replacing
from fingerprint.parallel import ordered_map
from fingerprint.types import SLICE_SIZE

#: Pixels coarser than this use the pre-blurred head; slices thicker than this average several planes.
SHARP_LIMIT_MM = 1.2
#: Gaussian sigma (mm) of the pre-blur for 1.2-1.5 mm pixels (anti-aliasing of a ~1.4 mm voxel on a 1 mm head).
SOFT_SIGMA_MM = 0.5
#: Noise added on the 1.5 mm canonical grid is interpolated scanner noise: a bit weaker than the scanner's own.
INTERPOLATED_NOISE_FACTOR = 0.7


#: Room for both variants of every base head of the largest training head set (26 real people): subjects take their
#: heads in turn, so a cache smaller than the set would reload (and re-blur) a head for nearly every subject.
HEAD_VARIANT_CACHE = 64


@lru_cache(maxsize=HEAD_VARIANT_CACHE)
def head_variant(name: str, soft: bool) -> sitk.Image:
    """A base head, sharp or pre-blurred for coarser pixels (cached per process)."""
    head = load_head(name)
    return sitk.SmoothingRecursiveGaussian(head, SOFT_SIGMA_MM) if soft else head


def slab_offsets_mm(thickness_mm: float) -> tuple[float, ...]:
    """Offsets along the slice normal whose mean approximates a slice of this thickness."""
    if thickness_mm <= SHARP_LIMIT_MM:
        return (0.0,)
    return (-thickness_mm / 3.0, 0.0, thickness_mm / 3.0)


def fast_slice(anatomy: SubjectAnatomy, visit: VisitPlan) -> np.ndarray:
    """The canonical slice (float32 128 x 128, ~[0, 1], masked) the pipeline would give for this subject's visit."""
    return _VisitSampler(anatomy, visit).plane(None, visit.rng())


def fast_levels(anatomy: SubjectAnatomy, visit: VisitPlan, offsets_mm: tuple[float, ...]) -> np.ndarray:
    """Several axial levels of this subject's visit, (L, 128, 128) float32, offsets in mm from the canonical plane
    (:func:`fingerprint.imaging.slicing.level_mm`), as :func:`fingerprint.imaging.pipeline.canonical_levels` cuts a
    real volume. The canonical level is drawn first from the visit's noise stream, so it is :func:`fast_slice` bit
    for bit; the other levels continue that stream (their own noise, the same scanner and residual error)."""
    from fingerprint.imaging.slicing import level_mm

    sampler = _VisitSampler(anatomy, visit)
    rng = visit.rng()
    order = sorted(range(len(offsets_mm)), key=lambda k: float(offsets_mm[k]) != 0.0)  # the canonical level first
    planes: dict[int, np.ndarray] = {k: sampler.plane(level_mm(offsets_mm[k]), rng) for k in order}
    return np.stack([planes[k] for k in range(len(offsets_mm))])


class _VisitSampler:
    """The chain of maps of one subject's visit (see the module docstring), sampled at any axial level."""

    def __init__(self, anatomy: SubjectAnatomy, visit: VisitPlan) -> None:
        self.visit = visit
        self.head = head_variant(anatomy.base_head, visit.appearance.pixel_mm > SHARP_LIMIT_MM)
        self.to_base = anatomy.to_base(visit.years)
        self.residual = residual_transform(visit)
        self.pose = pose_transform(visit)
        self.normal = np.asarray(self.pose.GetMatrix()).reshape(3, 3) @ scanner_direction(visit)[:, 2]

    def plane(self, level_mm: float | None, rng: np.random.Generator) -> np.ndarray:
        """The masked, normalised plane at reference z ``level_mm`` (None: the canonical level), noise from ``rng``."""
        from fingerprint.imaging.slicing import canonical_mask, normalise, slice_grid

        grid = slice_grid(level_mm)
        planes = []
        for offset in slab_offsets_mm(self.visit.appearance.thickness_mm):
            slab = sitk.TranslationTransform(3, tuple(float(v) for v in self.normal * offset))
            chain = sitk.CompositeTransform([self.to_base, slab, self.residual])
            planes.append(
                sitk.GetArrayFromImage(sitk.Resample(self.head, grid, chain, sitk.sitkLinear, 0.0, sitk.sitkFloat32))[0]
            )
        pixels = np.mean(planes, axis=0)
        frame = _acquisition_points(grid, self.residual, self.pose) @ scanner_direction(self.visit)  # as the volume's
        coords = (frame[..., 0], frame[..., 1], frame[..., 2])
        shaded = apply_appearance(pixels, coords, self.visit.appearance, rng, INTERPOLATED_NOISE_FACTOR)
        return normalise(shaded, canonical_mask(level_mm))


def _acquisition_points(grid: sitk.Image, residual: sitk.Transform, pose: sitk.Euler3DTransform) -> np.ndarray:
    """Scanner coordinates (mm from where the brain centre lies in the scanner) of the canonical plane's pixels: bias
    fields belong to the coil, so they move with the scanner, not with the head."""
    nx, ny = grid.GetSize()[:2]
    j, i = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    origin, spacing = np.asarray(grid.GetOrigin()), np.asarray(grid.GetSpacing())
    points = np.stack([origin[0] + i * spacing[0], origin[1] + j * spacing[1], np.full(i.shape, origin[2])], axis=-1)
    subject = _apply_rigid(residual, points)
    matrix, centre = np.asarray(pose.GetMatrix()).reshape(3, 3), np.asarray(pose.GetCenter())
    return (subject - centre - np.asarray(pose.GetTranslation())) @ matrix  # inverse pose, relative to its centre


def _apply_rigid(transform: sitk.Euler3DTransform, points: np.ndarray) -> np.ndarray:
    """Apply a rigid transform to an (..., 3) array of points, vectorised: x -> M (x - c) + c + t."""
    matrix, centre = np.asarray(transform.GetMatrix()).reshape(3, 3), np.asarray(transform.GetCenter())
    return (points - centre) @ matrix.T + centre + np.asarray(transform.GetTranslation())


def subject_slices(
    subject: SubjectPlan,
    visits: int,
    residual: ResidualModel = MEASURED_RESIDUAL,
    offsets_mm: tuple[float, ...] | None = None,
) -> list[tuple[VisitPlan, np.ndarray]]:
    """All visits of one subject, as (visit plan, slice) pairs; with ``offsets_mm``, (visit plan, (L,128,128)
    levels) pairs (:func:`fast_levels`). Picklable entry point for worker processes."""
    anatomy = subject.anatomy()
    if offsets_mm is not None:
        return [(visit, fast_levels(anatomy, visit, offsets_mm)) for visit in plan_visits(subject, visits, residual)]
    return [(visit, fast_slice(anatomy, visit)) for visit in plan_visits(subject, visits, residual)]


def generate_slices(
    subjects: list[SubjectPlan],
    visits: int,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    residual: ResidualModel = MEASURED_RESIDUAL,
    offsets_mm: tuple[float, ...] | None = None,
) -> Iterator[tuple[SubjectPlan, list[tuple[VisitPlan, np.ndarray]]]]:
    """Yield each subject with its slices (or levels, see :func:`subject_slices`), in subject order, on ``workers``
    processes (1: in this process)."""
    return ordered_map(subject_slices, subjects, (visits, residual, offsets_mm), workers, progress, chunksize=4)


def write_slice_cohort(
    out: Path,
    subjects: list[SubjectPlan],
    visits: int,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    residual: ResidualModel = MEASURED_RESIDUAL,
    offsets_mm: tuple[float, ...] | None = None,
) -> int:
    """Write ``cohort.csv`` + ``slices.npz`` (float16) for these subjects into ``out``; returns the number of scans.

    ``offsets_mm`` (default None: one canonical slice per scan, (N, 128, 128)): several axial levels per scan
    instead, ``slices`` then (N, L, 128, 128) (see :func:`fast_levels`)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    levels = () if offsets_mm is None else (len(offsets_mm),)
    slices = np.empty((len(subjects) * visits, *levels, SLICE_SIZE, SLICE_SIZE), dtype=np.float16)
    for subject, results in generate_slices(subjects, visits, workers, progress, residual, offsets_mm):
        for visit, pixels in results:
            slices[len(rows)] = pixels.astype(np.float16)
            rows.append(scan_row(subject, visit))
    scan_ids = np.array([row["scan_id"] for row in rows])
    with replacing(out / "slices.npz") as partial:
        np.savez(partial, slices=slices[: len(rows)], scan_id=scan_ids)
    write_cohort_csv(out, rows)
    return len(rows)
