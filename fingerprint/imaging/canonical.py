"""Canonical orientation: a fast rigid alignment of any head volume to the shipped reference brain.

Why the result is rigid (6 degrees of freedom) and not affine: head and brain size are part of what makes a person
recognisable, so the slice may only be moved and turned, never scaled. Why the *search* is scaled (9 dof: three
scales along the reference axes free, then only the rotation and the place of the canonical plane's centre kept, see
:func:`rigid_part`): a head whose proportions differ from the template's drifts to a tilted pose under a rigid fit,
even when started at the truth, because tilting is the only way a rigid fit can match a shorter or longer brain.
Scaled fits outside ``PLAUSIBLE_SCALE`` are not trusted and that start is searched rigidly.

Why mutual information (Mattes): series come from different scanners and sequences (MPRAGE, spin echo,
post-contrast), so intensities do not match the template's; MI only asks that they be predictable from each other.
The reference is brain-only; the metric is evaluated inside its dilated brain mask, so neck, shoulders and the field
of view do not pull the alignment.

How it stays fast: the volume is block-averaged to about 2 mm, the start comes from the head itself (the vertex and
the centroid of the top of the head, robust to how much neck the field of view holds), the scaled registration runs
on two resolutions (8 and 4 mm, on a 4 mm copy of the volume, densely sampled at the coarse level so the search lands
in the same basin from one head position to the next), then is polished at 2 mm inside the brain mask itself, and
each stage stops once its steps are small against what the next stage refines (``COARSE_MIN_STEP``,
``REFINE_MIN_STEP``). The scaled search and the polish run on :mod:`fingerprint.imaging.mi_registration`
(``ALIGNMENT_ENGINE``): ITK's Mattes metric and regular-step descent, vectorised over the sample points, whose
reference side is built once per process (:func:`prepare_alignment`). SimpleITK's own registration evaluates the
metric point by point (a Jacobian and six interpolations each) and cost about four times as much on one thread; it
still runs the rigid search.

Repeatable: sampling uses a fixed seed; SimpleITK registrations run on one thread (``REGISTRATION_THREADS``) and the
numpy engine uses no threads, fixed-order sums and no BLAS, so a volume gives the same transform, bit for bit, in any
worker, whatever its core count.

Coil shading: a series whose scaled fits all leave the plausible range is searched once more on its N4
bias-corrected copy before the rigid fallback is accepted (:func:`correct_bias`). The slice itself is still cut from
the series as it is: the encoder was trained with bias fields.

Guarding against failure: the DICOM patient frame is trusted for the start (scanners write patient coordinates, so
prone and decubitus series already arrive head-up). If the metric stays poor, other start rotations are tried and
one replaces the first only when clearly better; if it stays poor the series is refused as ``NOT_T1_BRAIN``, and so
is a volume that holds too little of the brain after alignment (a slab can score well anywhere), or one whose pose
turns too far from its own patient frame. A series whose patient position was entered wrongly is not rescued.

The measurements behind each of these choices are in the model card (fingerprint/weights/MODEL_CARD.md, "Why the
pipeline is built as it is"); the speed is measured by bench/bench_slice.py.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from fingerprint.errors import RejectReason, SeriesRejected
from fingerprint.imaging import mi_registration as mi
from fingerprint.imaging.reference import (
    HEAD_TOP_DEPTH_MM,
    Reference,
    foreground_points,
    load_reference,
    plane_centre,
)

#: Working resolution of the alignment (mm); the reference is 2 mm.
WORK_SPACING_MM = 2.0
#: Dilation of the reference brain mask for the metric (mm): takes in the dark CSF/inner-skull border, a strong cue.
#: Mattes MI is negative (lower is better). Measured on the real series in shared/data at 2 mm with a 3 mm metric
#: mask: correct alignments score about -0.08 to -0.23, a noise volume about -0.005, wrong poses -0.05 to -0.19.
#: So MI cannot tell a wrong pose from a right one across people, but it ranks the poses of one series, and it does
#: tell "no brain" from "a brain": above RETRY_METRIC the other starts are tried, above POOR_METRIC it is refused.
RETRY_METRIC = -0.07
POOR_METRIC = -0.04
#: A rotated start replaces the DICOM-frame start only if it is better by this much: patient coordinates are right
#: far more often than not, and a weak scan (the 2 mm Prisma series) can score a flipped pose a hair better.
ROTATED_START_MARGIN = 0.02
#: Fraction of the reference brain that must lie inside the volume after alignment. MI is computed only where both
#: images overlap, so a thin slab can "align" with an excellent metric anywhere; coverage catches that.
MIN_BRAIN_COVERAGE = 0.6
#: A pose that turns the head further than this (degrees) from the scanner's patient frame is refused with its
#: reason rather than sliced at the wrong anatomy. Scanners write patient coordinates, so real heads lie within about
#: 30 degrees of the frame; measured: a 4.3 mm sagittal 2D series of a held-out real head, posed within 15 degrees,
#: whose first start fitted poorly, was won by a rotated start (the "lying on a side entered as supine" hypothesis)
#: 95 degrees off, and then matched nobody, itself included. The rotated starts' rescue of a wrongly entered patient
#: position was already unreliable (module docstring); a series that would need it is now refused, said so.
MAX_TILT_FROM_PATIENT_FRAME_DEG = 45.0
#: The name of the first start: the head's own top, in the patient frame (no rotation).
PATIENT_FRAME_START = "head-top centroid"
#: Start rotations tried when the first alignment is poor (Euler angles x, y, z in radians).
EXTRA_STARTS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, math.pi),  # prone entered as supine
    (0.0, math.pi / 2, 0.0),  # lying on a side entered as supine
    (0.0, -math.pi / 2, 0.0),
    (0.0, math.pi, 0.0),
)
RANDOM_SEED = 20230227
#: The coarse search's levels: the reference shrunk 4x and 2x (8 and 4 mm), smoothed by these sigmas (mm), with
#: this fraction of the metric-mask voxels sampled per iteration (random, fixed seed). The brain-only polish at 2 mm
#: (:func:`_refine`) follows, so the coarse search stops at 4 mm: a third 2 mm level found the same pose again.
COARSE_SHRINK = (4, 2)
COARSE_SIGMAS_MM = (4.0, 2.0)
COARSE_SIGMAS_IN_MM = True  # False: COARSE_SIGMAS_MM are read in voxels of each image (as before issue 16)
SAMPLING_FRACTIONS = (1.0, 0.3)
#: The coarse search moves a copy of the volume block-averaged to this spacing (mm): its levels are 8 and 4 mm, and
#: the registration smooths the moving image at every level, which on the 2 mm copy cost more than the search.
COARSE_MOVING_SPACING_MM = 4.0
#: The coarse fit's metric (what RETRY_METRIC and POOR_METRIC are compared with) is read at the working 2 mm
#: resolution with this sampling fraction, as when the search had a 2 mm level.
METRIC_CHECK_FRACTION = 0.1
#: The smallest optimizer step (regular-step descent) before a stage stops: the coarse search hands over to the polish,
#: which only has to settle.
COARSE_MIN_STEP = 0.05
REFINE_MIN_STEP = 0.02
#: The rigid search (the fallback of the scaled one, and how the cohort places its base heads) keeps three levels
#: (8, 4, 2 mm) on the 2 mm volume and the finer stopping step in both stages: started from the careful placement
#: of the 2 mm Prisma head, a rigid search with the scaled search's two levels and coarser steps settled at another
#: level (model card, "Why the pipeline is built as it is").
RIGID_COARSE_SHRINK = (4, 2, 1)
RIGID_COARSE_SIGMAS_VOXELS = (2.0, 1.0, 0.0)
RIGID_SAMPLING_FRACTIONS = (1.0, 0.3, 0.1)
RIGID_MIN_STEP = 0.01
#: Fraction of the brain-mask voxels sampled per iteration of the polish at 2 mm.
REFINE_SAMPLING_FRACTION = 0.3
#: The polish's first step (regular-step descent learning rate) and its iteration cap.
REFINE_LEARNING_RATE = 1.0
REFINE_ITERATIONS = 100
#: The start point is read from the volume block-averaged to this spacing (mm): the head outline is all it needs.
START_SPACING_MM = 4.0
#: Whether the metric precomputes a smoothed gradient image of the whole moving volume at every level of every
#: registration (ITK's default), instead of central differences at the sampled points only. Precomputing cost more
#: than the iterations it served.
PRECOMPUTED_GRADIENT = False
#: Threads per registration: one, so results do not depend on the machine (see the module docstring). Workers run
#: series side by side instead (blocks of one count share the gate of :func:`registration_threads`). Why not two:
#: a series then slices about a third faster, but ITK's multi-threaded metric sums in a varying order, so the same
#: volume's transform moved by about 1e-11 from run to run: no longer bit for bit.
REGISTRATION_THREADS = 1
ROTATION_SCALE = 80.0**2
#: What runs the scaled search and the polish: "numpy" (fingerprint.imaging.mi_registration: the same Mattes metric
#: and regular-step descent, vectorised over the sample points) or "itk" (SimpleITK's ImageRegistrationMethod, as
#: before issue 16's last step). The rigid search (the fallback, and the cohort's placement of base heads) stays on
#: SimpleITK either way.
ALIGNMENT_ENGINE = "numpy"
ALIGNMENT_ENGINES = ("numpy", "itk")
#: How the pose is searched. "scaled": the three scales along the reference axes are free during the search (9 dof),
#: and only the rigid part of the result is kept. "rigid": 6 dof throughout (how base heads were placed for the
#: cohort's head cache v3, see fingerprint.cohort.heads).
POSE_SEARCHES = ("scaled", "rigid")
#: A scaled search that ends with a head-to-reference scale outside this range is not trusted; that start is then
#: searched rigidly instead. The MNI template is larger than most single brains, and held-out Siemens-Trio subjects
#: are short: measured scales were 0.72-0.99 on held-out benchmark heads whose pose came out right (the vertical one
#: often 0.72-0.75: a lower bound of 0.75 sent 7 of the 17 remaining benchmark failures to the rigid fallback, which
#: left them 7-41 degrees off; with 0.65 they came within 2-8 degrees, and 90 Trio and 60 Colin27 volumes and every
#: real series kept their pose), 0.84-1.06 on the real adult and child series. Fits needing more than 1.1 came with
#: a pose 13-20 degrees from the rigid one (the weakly contrasted 2 mm Prisma series, one benchmark volume at 1.36),
#: and on the four 4 mm decubitus series of one man the scales varied by 0.1-0.2 between positions, so past 1.1 the
#: scales absorb something other than head size.
PLAUSIBLE_SCALE = (0.65, 1.1)
#: Head proportions the scaled search starts from, tried in this order until a fit ends inside PLAUSIBLE_SCALE (then
#: the start is searched rigidly). 0.9 is about the median proportion of single brains against the (larger) MNI
#: template; 1.0 is the template's own size. Why two starts, and 0.9 first: from 1.0 alone (and the bound 0.75 used
#: then), 6 of 90 held-out Siemens-Trio volumes left the plausible range and the rigid fallback then left 3 of them
#: 20-30 degrees off; with (0.9, 1.0) none fell back and those three came within 3 degrees. Measured on the same 90
#: (and 60 Colin27 volumes): every other pose within 0.25 degrees of the 1.0-only fit, median 1.6 s instead of 2.0 s
#: (a closer start converges sooner); (1.0, 0.9) was as accurate but slower. On the real series only the Skyra child
#: moved (5 degrees; proportions 1.08/1.06/1.02 -> 0.93/0.89/0.84, brain-only metric -0.09 -> -0.15, better).
SCALED_START_PROPORTIONS: tuple[float, ...] = (0.9, 1.0)
#: N4 bias-field correction for the second try (see :func:`_align`): the field is fitted at BIAS_SHRINK x the working
#: spacing, with this many iterations at each of its fitting levels (four: fine enough for a head coil array's
#: shading; with three the Prisma series' start point stayed biased).
BIAS_SHRINK = 2
BIAS_ITERATIONS = (50, 50, 50, 50)
TransformT = TypeVar("TransformT", sitk.Euler3DTransform, sitk.ScaleVersor3DTransform, sitk.AffineTransform)
#: A scaled fit: SimpleITK's ScaleVersor3D (engine "itk") or an affine rotation-times-scales (engine "numpy").
SCALED_FITS = (sitk.ScaleVersor3DTransform, sitk.AffineTransform)


@dataclass
class Alignment:
    """Result of :func:`align`: the transform (reference mm -> image mm) and how it was found (JSON via ``as_json``)."""

    transform: sitk.Euler3DTransform
    metric: float
    start: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    brain_coverage: float = 1.0
    search: str = "scaled"
    head_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bias_corrected: bool = False

    def as_json(self) -> dict[str, Any]:
        angles = [self.transform.GetAngleX(), self.transform.GetAngleY(), self.transform.GetAngleZ()]
        return {
            "type": "rigid (Euler3D, 6 dof)",
            "search": f"{self.search} (see fingerprint.imaging.canonical)",
            "head_scale_vs_reference": [round(v, 3) for v in self.head_scale],
            "bias_field_corrected": self.bias_corrected,
            "maps": "reference (MNI152 2009a, LPS mm) -> image (LPS mm)",
            "rotation_deg": [round(math.degrees(a), 2) for a in angles],
            "translation_mm": [round(v, 2) for v in self.transform.GetTranslation()],
            "center_mm": [round(v, 2) for v in self.transform.GetCenter()],
            "metric": "Mattes mutual information (lower is better)",
            "metric_value": round(self.metric, 4),
            "start": self.start,
            "attempts": self.attempts,
            "brain_coverage": round(self.brain_coverage, 3),
            "seconds": round(self.seconds, 3),
        }


def align_to_reference(image: sitk.Image) -> sitk.Transform:
    """The rigid transform mapping reference (MNI, LPS mm) points to points of ``image`` (LPS mm).

    Raises ``SeriesRejected(NOT_T1_BRAIN)`` when no start gives an acceptable alignment.
    """
    return align(image).transform


def align(image: sitk.Image, search: str = "scaled") -> Alignment:
    """Align ``image`` to the reference and report the metric, start and attempts (see module docstring).

    ``search`` is "scaled" (the pipeline's) or "rigid" (see POSE_SEARCHES); the transform returned is rigid either way.
    """
    if search not in POSE_SEARCHES:
        raise ValueError(f"search must be one of {POSE_SEARCHES}, not {search!r}")
    with registration_threads(REGISTRATION_THREADS):
        return _align(image, search)


class _ThreadCountGate:
    """Blocks that need SimpleITK's process-wide default thread count at one value: blocks asking for the same count
    run side by side (two embedded workers aligning two series, or verifying two candidates, each on one thread);
    a block asking for another count waits until none is running. The first block in sets the count, the last one
    out puts the previous count back."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count: int | None = None
        self._holders = 0
        self._previous = 0

    @contextmanager
    def holding(self, count: int) -> Iterator[None]:
        with self._changed:
            while self._holders and self._count != count:
                self._changed.wait()
            if not self._holders:
                self._previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
                self._count = count
            self._holders += 1
        try:
            yield
        finally:
            with self._changed:
                self._holders -= 1
                if not self._holders:
                    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self._previous)
                    self._count = None
                    self._changed.notify_all()


_THREAD_COUNT = _ThreadCountGate()


def registration_threads(count: int) -> contextlib.AbstractContextManager[None]:
    """SimpleITK's default thread count set to ``count`` inside the block: the registration's metric, pyramid and
    start-point filters all follow the global default, not only the registration method's own setting. Blocks of one
    count may run in several threads at once (see :class:`_ThreadCountGate`).

    Example::

        with registration_threads(1):
            method.Execute(fixed, moving)
    """
    return _THREAD_COUNT.holding(count)


def _align(image: sitk.Image, search: str) -> Alignment:
    """See the module docstring. Why a second try on the bias-corrected series, when the first found only a rigid
    pose (every scaled fit out of range): a strong receive-coil shading (the 2 mm Prisma series, acquired without the
    scanner's intensity normalisation: dark centre, bright back of the head where it rests on the coil) biases the
    head's Otsu outline 10 mm backwards, and from that start the scaled fits swell the brain to 1.09-1.15 x the
    template; the rigid fallback then tilted the Prisma head 13.5 degrees from its careful placement (32 from its
    cached placement, slice above the ventricles). Corrected (:func:`correct_bias`), start and fit are right: scale
    0.92, within 1.9 degrees and 0.1 mm of the level of its careful placement (its cached head: 2.0 degrees, 0.9 mm). Only series that fell back pay for it (about 1 s of N4 and a
    second search)."""
    started = time.perf_counter()
    reference = load_reference()
    moving = downsample(image, WORK_SPACING_MM)
    attempts: list[dict[str, Any]] = []
    best = _search_starts(reference, moving, search, attempts)
    bias_corrected = False
    if search == "scaled" and best is not None and not isinstance(best[1], SCALED_FITS):
        corrected = correct_bias(moving)
        retry_attempts: list[dict[str, Any]] = []
        retry = _search_starts(reference, corrected, search, retry_attempts)
        attempts.extend({**a, "start": f"{a['start']}, bias-field corrected"} for a in retry_attempts)
        if retry is not None and isinstance(retry[1], SCALED_FITS):
            best, moving, bias_corrected = retry, corrected, True
    if best is None:
        raise SeriesRejected(RejectReason.NOT_T1_BRAIN, "the rigid alignment to the reference brain failed from every start")
    metric, transform, name = best
    if metric < POOR_METRIC:
        try:
            transform, refined_metric = _refine(reference, moving, transform)
            polished = {"metric_value": round(refined_metric, 4), "search": _search_of(transform)}
            attempts.append({"start": "brain-only refinement", **polished})
        except RuntimeError:
            attempts.append({"start": "brain-only refinement", "failed": "kept the coarse alignment"})
    head_scale = (1.0, 1.0, 1.0)
    if isinstance(transform, SCALED_FITS):
        head_scale, transform = head_proportions(transform), rigid_part(transform, plane_centre())
    if metric >= POOR_METRIC:
        raise SeriesRejected(
            RejectReason.NOT_T1_BRAIN,
            f"no rigid alignment to the reference brain reached the quality threshold (best Mattes MI {metric:.3f}, "
            f"needs < {POOR_METRIC}): not a T1 brain volume, or too little of the head",
        )
    tilt = rotation_angle_deg(transform)
    if tilt > MAX_TILT_FROM_PATIENT_FRAME_DEG:
        raise SeriesRejected(
            RejectReason.NOT_T1_BRAIN,
            f"the alignment turned the head {tilt:.0f} degrees from the scanner's patient frame (at most "
            f"{MAX_TILT_FROM_PATIENT_FRAME_DEG:.0f} is plausible; best start: {name}): the pose search failed, or the "
            "series' patient position is wrong",
        )
    covered = coverage(image, transform, reference.mask_points)
    if covered < MIN_BRAIN_COVERAGE:
        raise SeriesRejected(
            RejectReason.NOT_T1_BRAIN,
            f"the volume holds only {100 * covered:.0f}% of the brain after alignment (needs {100 * MIN_BRAIN_COVERAGE:.0f}%): "
            "a partial-coverage slab, not a whole-brain T1 volume",
        )
    return Alignment(
        transform=transform,
        metric=metric,
        start=name,
        attempts=attempts,
        seconds=time.perf_counter() - started,
        brain_coverage=covered,
        search=search,
        head_scale=head_scale,
        bias_corrected=bias_corrected,
    )


def _search_starts(
    reference: Reference, moving: sitk.Image, search: str, attempts: list[dict[str, Any]]
) -> tuple[float, sitk.Euler3DTransform | sitk.ScaleVersor3DTransform, str] | None:
    """The coarse search from the head's own start, then from the rotated starts while the metric stays poor; the
    best (metric, transform, start name), or None when every start failed. Appends one record per start."""
    centre_guess = head_start_point(downsample(moving, START_SPACING_MM))
    best: tuple[float, sitk.Euler3DTransform | sitk.ScaleVersor3DTransform, str] | None = None
    for name, angles in ((PATIENT_FRAME_START, (0.0, 0.0, 0.0)), *[(f"rotated start {i + 1}", a) for i, a in enumerate(EXTRA_STARTS)]):
        start = sitk.Euler3DTransform()
        start.SetCenter(reference.brain_top_centroid)
        start.SetRotation(*angles)
        start.SetTranslation(tuple(np.subtract(centre_guess, reference.brain_top_centroid)))
        try:
            transform, metric = _register(reference, moving, start, search)
        except RuntimeError as error:  # ITK: e.g. too many samples map outside the moving image (a thin slab)
            attempts.append({"start": name, "failed": str(error).strip().splitlines()[-1][:160]})
            continue
        attempts.append({"start": name, "metric_value": round(metric, 4), "search": _search_of(transform)})
        if best is None or metric < best[0] - ROTATED_START_MARGIN:
            best = (metric, transform, name)
        if metric < RETRY_METRIC:
            break
    return best


def rotation_angle_deg(transform: sitk.Transform) -> float:
    """The angle (degrees) of the rotation in a rigid transform's matrix."""
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    return float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))


def correct_bias(image: sitk.Image) -> sitk.Image:
    """``image`` divided by its N4 bias field (SimpleITK's N4BiasFieldCorrectionImageFilter, fitted inside the Otsu
    head mask at BIAS_SHRINK x the spacing; about 1 s for a head at 2 mm): removes a receive coil's slow shading."""
    small = sitk.Shrink(image, [BIAS_SHRINK] * 3)
    head = sitk.OtsuThreshold(small, 0, 1) * sitk.Cast(small > 0, sitk.sitkUInt8)  # N4 takes logs: positive voxels only
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(BIAS_ITERATIONS))
    n4.Execute(small, head)
    return sitk.Cast(image / sitk.Exp(n4.GetLogBiasFieldAsImage(image)), sitk.sitkFloat32)


def rigid_part(
    transform: sitk.ScaleVersor3DTransform | sitk.AffineTransform, anchor: tuple[float, float, float]
) -> sitk.Euler3DTransform:
    """The rotation of ``transform`` (the orthogonal factor of its matrix's polar decomposition), placed so that
    ``anchor`` lands where ``transform`` puts it: same pose and same anatomical level, without the stretch.

    The polar factor is the rotation closest to the fitted linear map whatever its parameterisation (ITK's
    ScaleVersor3D matrix is R + diag(s - 1), not R diag(s)). Example: a head 15 % shorter than the reference, fitted
    with a vertical stretch of 0.85, gets its slice through the same anatomical level as a reference-sized head,
    sampled at the head's own size.
    """
    rotation, _stretch = _polar_factors(transform)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(anchor)
    rigid.SetMatrix(tuple(float(v) for v in rotation.ravel()))
    rigid.SetTranslation(tuple(float(v) for v in np.subtract(transform.TransformPoint(anchor), anchor)))
    return rigid


def head_proportions(transform: sitk.ScaleVersor3DTransform | sitk.AffineTransform) -> tuple[float, float, float]:
    """Stretch of the head along the reference's x, y, z axes (1 = the template's size): the diagonal of the
    symmetric factor of the matrix's polar decomposition."""
    _rotation, stretch = _polar_factors(transform)
    return tuple(float(v) for v in np.diag(stretch))


def _polar_factors(transform: sitk.ScaleVersor3DTransform | sitk.AffineTransform) -> tuple[np.ndarray, np.ndarray]:
    """The polar decomposition matrix = rotation @ stretch (stretch symmetric), from the SVD of the linear part.
    Positive stretches give a positive determinant, so the rotation has no reflection to undo."""
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    return rotation, rotation.T @ matrix


def coverage(image: sitk.Image, transform: sitk.Euler3DTransform, points: np.ndarray) -> float:
    """Fraction of ``points`` (reference LPS mm: the reference brain mask's voxels) that ``transform`` maps inside
    ``image``'s volume: within half a voxel of its grid, where a nearest-neighbour resample would find a voxel.
    The points are mapped directly, so the volume is neither copied nor resampled."""
    if len(points) == 0:
        return 0.0
    # One affine map from reference mm to the image's continuous index, applied coordinate by coordinate.
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    to_index = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing()))
    linear = to_index @ matrix
    offset = to_index @ (centre + np.asarray(transform.GetTranslation()) - matrix @ centre - np.asarray(image.GetOrigin()))
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    inside = np.ones(len(points), dtype=bool)
    for axis, size in enumerate(image.GetSize()):
        index = linear[axis, 0] * x + linear[axis, 1] * y + linear[axis, 2] * z + offset[axis]
        inside &= (index >= -0.5) & (index < size - 0.5)
    return float(inside.mean())


def downsample(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Block-average ``image`` to about ``spacing_mm`` per axis (fast, and it smooths before the coarse levels)."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.BinShrink(image, factors) if any(f > 1 for f in factors) else image


def head_start_point(image: sitk.Image) -> tuple[float, float, float]:
    """Where the reference's top-of-brain centroid probably lies in ``image`` (LPS mm): the starting translation.

    The head is the largest bright component (Otsu); its most superior point is the vertex. The centroid of the head
    down to HEAD_TOP_DEPTH_MM below the vertex does not depend on how much neck the field of view holds.
    """
    head = sitk.OtsuThreshold(image, 0, 1)
    head = sitk.RelabelComponent(sitk.ConnectedComponent(head), sortByObjectSize=True) == 1
    points = foreground_points(head, threshold=0.5)
    if len(points) < 100:
        raise SeriesRejected(RejectReason.NOT_T1_BRAIN, "no head found in the volume (empty or noise only)")
    vertex_z = float(points[:, 2].max())
    top = points[points[:, 2] > vertex_z - HEAD_TOP_DEPTH_MM]
    return tuple(float(v) for v in top.mean(axis=0))


def _refine(
    reference: Reference, moving: sitk.Image, start: TransformT
) -> tuple[sitk.Euler3DTransform | sitk.ScaleVersor3DTransform, float]:
    """Polish a coarse alignment at 2 mm with the metric restricted to the brain itself.

    A scaled coarse fit is polished with its scales free too (measured: a rigid polish from the rigid part of a good
    scaled fit drifted back to the tilted pose, 2 -> 11 degrees on a held-out benchmark volume); if the polished
    scales leave PLAUSIBLE_SCALE, the rigid part of the coarse fit is polished rigidly instead.

    Measured on the four decubitus repeats of one man: slice agreement (NCC) between the three fully covered
    positions rose from 0.26-0.73 to 0.82-0.87 with this stage; started from a coarse pose, the brain-only metric no
    longer drifts.
    Sampling 30 % with a 0.01 mm minimum step and up to 100 iterations costs ~0.4 s more than 10 % / 40 iterations
    and lowered the within-subject tilt spread on held-out benchmark subjects.
    """
    if ALIGNMENT_ENGINE == "numpy":
        return _refine_numpy(reference, moving, start)
    if isinstance(start, sitk.ScaleVersor3DTransform):
        polished, metric = _run(_polish_method(reference, nine_dof=True), reference, moving, start)
        if _plausible(polished):
            return polished, metric
        start = rigid_part(start, plane_centre())
    return _run(_polish_method(reference, nine_dof=False), reference, moving, start)


def _polish_method(reference: Reference, *, nine_dof: bool) -> sitk.ImageRegistrationMethod:
    """One level at 2 mm, metric inside the brain mask itself, 30 % sampled, up to 100 iterations."""
    min_step = REFINE_MIN_STEP if nine_dof else RIGID_MIN_STEP
    return _mattes_method(
        reference.mask, REFINE_SAMPLING_FRACTION, learning_rate=REFINE_LEARNING_RATE, min_step=min_step,
        iterations=REFINE_ITERATIONS, nine_dof=nine_dof,
    )


def _plausible(transform: sitk.ScaleVersor3DTransform | sitk.AffineTransform) -> bool:
    """Whether the fit's three scales lie in PLAUSIBLE_SCALE: ScaleVersor3D's scale parameters, as measured there
    (they differ from :func:`head_proportions` by a fraction of the rotation times the stretch), or the proportions
    of an affine rotation-times-scales fit."""
    low, high = PLAUSIBLE_SCALE
    scales = transform.GetScale() if isinstance(transform, sitk.ScaleVersor3DTransform) else head_proportions(transform)
    return all(low <= v <= high for v in scales)


def _register(
    reference: Reference, moving: sitk.Image, start: sitk.Euler3DTransform, search: str
) -> tuple[sitk.Euler3DTransform | sitk.ScaleVersor3DTransform, float]:
    """One multi-resolution Mattes-MI registration from ``start``; returns the transform and final metric.

    Why a scaled search: a head whose proportions differ from the template's (held-out heads 10-20 % shorter or
    narrower) drifts to a pitched pose under a rigid MI fit, even when started at the truth. With the three scales
    free the fit no longer has to tilt the head to match its size. An implausible scale means a wrong basin: that
    start is then searched rigidly, as with ``search="rigid"``.
    """
    if search == "scaled":
        for proportions in SCALED_START_PROPORTIONS:
            if ALIGNMENT_ENGINE == "numpy":
                scaled, metric = _coarse_numpy(reference, moving, start, proportions)
            else:
                scaled, metric = _run_coarse(reference, moving, _scaled_copy(start, proportions), nine_dof=True)
            if _plausible(scaled):
                return scaled, metric
    return _run_coarse(reference, moving, start, nine_dof=False)


def _run_coarse(reference: Reference, moving: sitk.Image, start: TransformT, *, nine_dof: bool) -> tuple[TransformT, float]:
    """The coarse search (:func:`_coarse_method`); the scaled one moves ``moving`` block-averaged to
    COARSE_MOVING_SPACING_MM. Returns the transform and its metric at the working resolution (see
    METRIC_CHECK_FRACTION)."""
    coarse_moving = downsample(moving, COARSE_MOVING_SPACING_MM) if nine_dof else moving
    transform, metric = _run(_coarse_method(reference, nine_dof=nine_dof), reference, coarse_moving, start)
    if nine_dof and (COARSE_SHRINK[-1] != 1 or coarse_moving is not moving):
        check = _mattes_method(reference.metric_mask, METRIC_CHECK_FRACTION, learning_rate=1.0, min_step=1.0, iterations=1, nine_dof=nine_dof)
        check.SetInitialTransform(type(transform)(transform), inPlace=True)
        metric = float(check.MetricEvaluate(reference.image, moving))
    return transform, metric


def _search_of(transform: sitk.Transform) -> str:
    """How a coarse transform was found, for the attempts log."""
    if isinstance(transform, SCALED_FITS):
        return "scaled, head proportions " + ", ".join(f"{v:.3f}" for v in head_proportions(transform))
    return "rigid"


def _coarse_method(reference: Reference, *, nine_dof: bool) -> sitk.ImageRegistrationMethod:
    """The scaled search's levels (COARSE_SHRINK: 8 and 4 mm) or the rigid search's (RIGID_COARSE_SHRINK: 8, 4 and
    2 mm), dense sampling at the coarsest, metric inside the dilated brain mask."""
    shrink, sigmas, fractions, min_step = (
        (COARSE_SHRINK, COARSE_SIGMAS_MM, SAMPLING_FRACTIONS, COARSE_MIN_STEP)
        if nine_dof
        else (RIGID_COARSE_SHRINK, RIGID_COARSE_SIGMAS_VOXELS, RIGID_SAMPLING_FRACTIONS, RIGID_MIN_STEP)
    )
    method = _mattes_method(reference.metric_mask, fractions[-1], learning_rate=4.0, min_step=min_step, iterations=150, nine_dof=nine_dof)
    method.SetMetricSamplingPercentagePerLevel(list(fractions), RANDOM_SEED)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(sigmas))
    if nine_dof and COARSE_SIGMAS_IN_MM:
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    else:
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _scaled_copy(rigid: sitk.Euler3DTransform, proportions: float = 1.0) -> sitk.ScaleVersor3DTransform:
    """``rigid`` as a 9-parameter transform (versor, translation, the three scales set to ``proportions``) with the
    same centre."""
    versor = sitk.VersorRigid3DTransform()
    versor.SetMatrix(rigid.GetMatrix())
    transform = sitk.ScaleVersor3DTransform()
    transform.SetCenter(rigid.GetCenter())
    transform.SetRotation(versor.GetVersor())
    transform.SetTranslation(rigid.GetTranslation())
    transform.SetScale((proportions,) * 3)
    return transform


def _mattes_method(
    fixed_mask: sitk.Image, sampling_fraction: float, *, learning_rate: float, min_step: float, iterations: int, nine_dof: bool
) -> sitk.ImageRegistrationMethod:
    """Mattes MI (32 bins, seeded random sampling inside ``fixed_mask``), linear interpolation, regular-step descent,
    for an Euler3D (6 dof) or a ScaleVersor3D (``nine_dof``: versor, translation, scales) transform."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_fraction, RANDOM_SEED)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=min_step,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    # Fixed scales instead of SetOptimizerScalesFromPhysicalShift (which costs more than the registration itself):
    # one radian moves the brain surface by about 80 mm, hence (80 mm)^2 for the angles; a unit of versor or of
    # scale moves it by tens of mm too.
    method.SetOptimizerScales([ROTATION_SCALE] * 3 + [1.0] * 3 + ([ROTATION_SCALE] * 3 if nine_dof else []))
    method.SetMetricUseFixedImageGradientFilter(PRECOMPUTED_GRADIENT)
    method.SetMetricUseMovingImageGradientFilter(PRECOMPUTED_GRADIENT)
    return method


def _run(
    method: sitk.ImageRegistrationMethod, reference: Reference, moving: sitk.Image, start: TransformT
) -> tuple[TransformT, float]:
    transform = type(start)(start)
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(reference.image, moving)
    return transform, float(method.GetMetricValue())


def prepare_alignment() -> None:
    """Read the reference and build the numpy engine's sample points of every level now (a few tenths of a second,
    once per process) rather than inside the first series' alignment: for long-lived workers and benchmarks."""
    reference = load_reference()
    _coarse_levels(reference)
    _check_level(reference)
    _polish_level(reference)


def _coarse_levels(reference: Reference) -> list[tuple[mi.FixedLevel, float]]:
    """The numpy engine's coarse levels (COARSE_SHRINK, on the dilated metric mask), each with its smoothing (mm)."""
    return [
        (mi.fixed_level(reference, "metric", shrink=shrink, sigma_mm=sigma, fraction=fraction, seed=RANDOM_SEED), sigma)
        for shrink, sigma, fraction in zip(COARSE_SHRINK, COARSE_SIGMAS_MM, SAMPLING_FRACTIONS)
    ]


def _check_level(reference: Reference) -> mi.FixedLevel:
    """Where a coarse fit's metric is read: the working resolution, the metric mask, METRIC_CHECK_FRACTION."""
    return mi.fixed_level(reference, "metric", shrink=1, sigma_mm=0.0, fraction=METRIC_CHECK_FRACTION, seed=RANDOM_SEED)


def _polish_level(reference: Reference) -> mi.FixedLevel:
    """The polish's points: the working resolution, the brain mask itself, REFINE_SAMPLING_FRACTION."""
    return mi.fixed_level(reference, "brain", shrink=1, sigma_mm=0.0, fraction=REFINE_SAMPLING_FRACTION, seed=RANDOM_SEED)


def _coarse_numpy(
    reference: Reference, moving: sitk.Image, start: sitk.Euler3DTransform, proportions: float
) -> tuple[sitk.AffineTransform, float]:
    """The scaled coarse search with :mod:`fingerprint.imaging.mi_registration`: the levels of COARSE_SHRINK on the
    dilated metric mask, the moving volume block-averaged to COARSE_MOVING_SPACING_MM and smoothed as each level says
    (COARSE_SIGMAS_MM), started with the head proportions at ``proportions``; the metric is then read at the working
    resolution (METRIC_CHECK_FRACTION), as for the "itk" engine. RuntimeError where too few samples map inside."""
    coarse_moving = downsample(moving, COARSE_MOVING_SPACING_MM)
    pose = mi.Pose.from_rigid(start, proportions)
    for level, sigma in _coarse_levels(reference):
        pose, _metric, _steps = mi.register(
            level, mi.moving_volume(coarse_moving, sigma), pose, nine_dof=True, learning_rate=4.0, min_step=COARSE_MIN_STEP,
            iterations=150, rotation_scale=ROTATION_SCALE,
        )
    metric = mi.metric_value(_check_level(reference), mi.moving_volume(moving), pose)
    return pose.as_sitk(scaled=True), metric


def _refine_numpy(
    reference: Reference, moving: sitk.Image, start: sitk.Euler3DTransform | sitk.AffineTransform
) -> tuple[sitk.Euler3DTransform | sitk.AffineTransform, float]:
    """:func:`_refine` with :mod:`fingerprint.imaging.mi_registration`: one level at the working resolution, the metric
    inside the brain mask itself (REFINE_SAMPLING_FRACTION), scales free for a scaled fit; an implausible polished fit
    is polished again rigidly from the rigid part of ``start``."""
    level = _polish_level(reference)
    volume = mi.moving_volume(moving)
    settings = {"learning_rate": REFINE_LEARNING_RATE, "iterations": REFINE_ITERATIONS, "rotation_scale": ROTATION_SCALE}
    if isinstance(start, sitk.AffineTransform):
        pose, metric, _steps = mi.register(level, volume, mi.Pose.from_affine(start), nine_dof=True, min_step=REFINE_MIN_STEP, **settings)
        polished = pose.as_sitk(scaled=True)
        if _plausible(polished):
            return polished, metric
        start = rigid_part(start, plane_centre())
    pose, metric, _steps = mi.register(level, volume, mi.Pose.from_rigid(start), nine_dof=False, min_step=RIGID_MIN_STEP, **settings)
    return pose.as_sitk(scaled=False), metric
