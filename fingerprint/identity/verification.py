"""The second, physical opinion on identity: are two canonical brains the same rigid object, down to the gyri?

Why a check beside the fingerprint: the fingerprint is a fast way to find candidates, but its similarity scale is
dominated by how a scan looks (scanner, resolution, contrast), so on real people one threshold on it cannot separate
"the same man twelve years later on another scanner" from "two different people of one site". A person's brain is
the same rigid object in every scan; another person's brain cannot be rigidly aligned to it down to its folds. So:

1. Every series keeps a compact **canonical brain** (:func:`fingerprint.imaging.brain.extract_brain`): the series resampled into the reference
   (MNI) box at 2 mm with the pipeline's own rigid alignment, inside the reference's brain mask (dilated a little)
   only, quantised to ``BRAIN_LEVELS`` grey levels, 0 where the field of view saw nothing. It holds no face: every
   voxel outside the brain mask is dropped before it is stored.
2. Two canonical brains are **registered** to each other (:func:`verify`): rigid (6 dof; they already sit within a
   few degrees of each other, so the search starts at the identity), Mattes mutual information inside the central
   brain, because contrast differs between scanners and sequences. A registration that runs off
   (``MAX_ROTATION_DEG``, ``MAX_SHIFT_MM``) gives **no score**: the two canonical brains do not sit where the
   pipeline should have put them (one alignment failed, or a weakly contrasted brain let the search wander), so
   neither "same" nor "different" can be read from them; the pair counts as unverified (``needs_review`` for a
   PatientID's own scans), not as a confident ``identity_mismatch``.
3. The **score** is the normalised correlation of their fine anatomy: the Laplacian of Gaussian (sigma
   ``DETAIL_SIGMA_MM``) of each brain inside the central brain (the mask eroded by ``fingerprint.imaging.brain.SCORE_EROSION_MM``) where both
   fields of view saw it. Plain intensity correlation does not tell people apart (every brain has grey and white
   matter in about the same place); the pattern of sulci and gyri does. The Laplacian is computed once per brain
   (:func:`prepare`) and moved with the registration: it commutes with rotations and shifts.

Training-free, so it does not inherit the cohort generator's biases. Its thresholds are calibrated on real different
people (:mod:`fingerprint.evaluation.real_calibration`) and stored per :data:`METHOD_VERSION`. Each verification can draw
its evidence (:func:`evidence_png`): the two brains after registration as a checkerboard on three planes.

Example::

    brain_a = extract_brain(volume_a, align(volume_a).transform)
    brain_b = extract_brain(volume_b, align(volume_b).transform)
    verify(prepare(brain_a), prepare(brain_b)).score   # high: same person; near 0: different people
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from fingerprint.imaging.brain import METHOD_VERSION, brain_grid
from fingerprint.imaging.canonical import registration_threads, rotation_angle_deg

#: Scale of the anatomy compared (mm): sulci and gyri, not noise.
DETAIL_SIGMA_MM = 2.0
#: Fraction of the scored region that both fields of view must cover for a score to count.
MIN_SHARED_FRACTION = 0.5
#: A registration that turns or moves the second brain further than this has run off: the pair gets no score.
MAX_ROTATION_DEG = 20.0
MAX_SHIFT_MM = 20.0
#: The scoring rule's version, beside METHOD_VERSION (the canonical brain's format, which stored brains and the
#: thresholds are keyed by): caches of pair scores carry both, so a changed rule never reads old scores. 2: a
#: registration that runs off gives no score (1: the pair was scored where the pipeline put it).
SCORING_RULE = 2
#: Registration: Mattes MI on a fixed random sample of the central brain, 4 then 2 mm, one thread (the same result
#: on every host).
SAMPLING_FRACTION = 0.05
SHRINK_FACTORS = (2, 1)
SMOOTHING_SIGMAS = (1.0, 0.0)
RANDOM_SEED = 20230227


@dataclass(frozen=True)
class RegistrationSettings:
    """How :func:`verify` registers a pair.

    ``min_step``: the optimizer stops once its step (parameters scaled to mm of movement) falls below it; fitting a
    pair finer than a small fraction of a 2 mm voxel moves its score by no more than :data:`SCORE_TOLERANCE` and costs
    iterations. ``fixed_gradient_filter``: whether ITK also filters the fixed image's
    gradient; Mattes MI's derivative reads only the moving image's gradient, so that output was never used and
    leaving it out changes no score (bench/bench_verify.py and tests/test_verification.py check both).
    """

    min_step: float = 0.05
    fixed_gradient_filter: bool = False


#: The settings the product uses.
REGISTRATION = RegistrationSettings()
#: Largest change of a verification score allowed between :data:`REGISTRATION` and :data:`REGISTRATION_BEFORE`.
SCORE_TOLERANCE = 0.015
#: The settings before the verification stage was made faster (issue 16), kept to measure against in one run.
REGISTRATION_BEFORE = RegistrationSettings(min_step=0.02, fixed_gradient_filter=True)


@dataclass(frozen=True)
class PreparedBrain:
    """A canonical brain ready to compare: intensities as an image, where it was seen, and its fine detail."""

    brain: np.ndarray  # uint8 (z, y, x) as stored
    image: sitk.Image  # float32 intensities on the grid
    seen: np.ndarray  # bool: inside the field of view and the stored region
    detail: np.ndarray  # float32 Laplacian of Gaussian of the intensities


@dataclass(frozen=True)
class VerificationResult:
    """One verified pair: the score, how far the registration moved the second brain, the anatomy both shared."""

    score: float | None  # None when the two scans share too little brain, or the registration ran off (unscored)
    shared_fraction: float
    rotation_deg: float
    shift_mm: float
    registration_used: bool
    registered: np.ndarray | None = None  # the second brain on the first one's grid (for the evidence picture)

    def as_json(self) -> dict[str, Any]:
        return {
            "method_version": METHOD_VERSION,
            "score": None if self.score is None else round(self.score, 4),
            "shared_fraction": round(self.shared_fraction, 3),
            "rotation_deg": round(self.rotation_deg, 2),
            "shift_mm": round(self.shift_mm, 2),
            "registration_used": self.registration_used,
            **({"unscored": self.unscored} if self.unscored else {}),
        }

    @property
    def unscored(self) -> str | None:
        """Why there is no score, in words for the evidence (None when there is one)."""
        if self.score is not None:
            return None
        if not self.registration_used:
            return (
                f"the registration ran off ({self.rotation_deg:.0f} degrees, {self.shift_mm:.0f} mm; at most "
                f"{MAX_ROTATION_DEG:.0f} and {MAX_SHIFT_MM:.0f}): one of the two alignments is probably wrong"
            )
        return f"the two scans share too little brain ({100 * self.shared_fraction:.0f}%, needs {100 * MIN_SHARED_FRACTION:.0f}%)"


def prepare(brain: np.ndarray) -> PreparedBrain:
    """What :func:`verify` needs of one brain, computed once however many pairs it takes part in."""
    grid = brain_grid()
    values = brain.astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid.image)
    sigma_voxels = DETAIL_SIGMA_MM / grid.image.GetSpacing()[0]
    detail = ndimage.gaussian_laplace(values, sigma=sigma_voxels).astype(np.float32)
    return PreparedBrain(brain, image, brain > 0, detail)


# --- the pair check ------------------------------------------------------------------------------------------------
def verify(
    fixed: PreparedBrain,
    moving: PreparedBrain,
    keep_registered: bool = False,
    settings: RegistrationSettings = REGISTRATION,
) -> VerificationResult:
    """Register ``moving`` onto ``fixed`` and score how well their fine anatomy agrees (see the module docstring).

    The archive passes the new series as ``fixed``; the score does not depend much on the order.
    """
    grid = brain_grid()
    transform = _register(fixed, moving, fixed.seen & grid.scored, settings)
    rotation, shift = _size_of(transform)
    used = rotation <= MAX_ROTATION_DEG and shift <= MAX_SHIFT_MM
    if not used:
        transform = sitk.Euler3DTransform(transform.GetCenter())
    moved_detail = _moved(moving.detail, transform, sitk.sitkLinear)
    moved_seen = _moved(moving.seen.view(np.uint8), transform, sitk.sitkNearestNeighbor, sitk.sitkUInt8) > 0
    shared = grid.scored & fixed.seen & moved_seen
    shared_fraction = float(shared.sum() / max(int(grid.scored.sum()), 1))
    scorable = used and shared_fraction >= MIN_SHARED_FRACTION
    score = _correlation(fixed.detail[shared], moved_detail[shared]) if scorable else None
    registered = _moved(moving.brain.astype(np.float32), transform, sitk.sitkLinear) if keep_registered else None
    return VerificationResult(score, shared_fraction, rotation, shift, used, registered)


def score_brain_pairs(
    brains: dict[int, np.ndarray] | list[np.ndarray],
    pairs: list[tuple[int, int]],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float | None, float]]:
    """``(score, CPU seconds)`` of each pair of canonical brains (the first fixed, the second registered onto it), on
    ``workers`` processes, in the order given. Each brain is prepared once per process."""
    from fingerprint.parallel import ordered_map

    pairs = list(pairs)
    lanes = max(1, workers)
    chunks = [pairs[k::lanes] for k in range(lanes)]
    chunks = [c for c in chunks if c]
    results: dict[tuple[int, int], tuple[float | None, float]] = {}
    for chunk, scored in ordered_map(_score_chunk, chunks, (brains,), workers):
        results.update(zip(chunk, scored))
        if progress:
            progress(len(chunk))
    return [results[p] for p in pairs]


def _score_chunk(
    chunk: list[tuple[int, int]], brains: dict[int, np.ndarray] | list[np.ndarray]
) -> list[tuple[float | None, float]]:
    prepared: dict[int, PreparedBrain] = {}
    out = []
    for a, b in chunk:
        for k in (a, b):
            if k not in prepared:
                prepared[k] = prepare(brains[k])
        started = time.process_time()  # the pair alone: the archive prepares the new brain once per series
        result = verify(prepared[a], prepared[b])
        out.append((result.score, time.process_time() - started))
    return out


def _register(
    fixed: PreparedBrain, moving: PreparedBrain, metric_mask: np.ndarray, settings: RegistrationSettings
) -> sitk.Euler3DTransform:
    """Rigid Mattes MI from the identity, centred on the metric region."""
    grid = brain_grid()
    mask = sitk.GetImageFromArray(metric_mask.astype(np.uint8))
    mask.CopyInformation(grid.image)
    transform = sitk.Euler3DTransform()
    centre = np.argwhere(metric_mask)[:, ::-1].mean(axis=0) if metric_mask.any() else np.zeros(3)
    transform.SetCenter(grid.image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in centre)))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, RANDOM_SEED)
    method.SetMetricUseFixedImageGradientFilter(settings.fixed_gradient_filter)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=settings.min_step,
        numberOfIterations=100,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS))
    method.SetInitialTransform(transform, inPlace=True)
    if metric_mask.any():
        with registration_threads(1):
            method.Execute(fixed.image, moving.image)
    return transform


def _size_of(transform: sitk.Euler3DTransform) -> tuple[float, float]:
    """Rotation angle (degrees) and how far the centre of the brain moves (mm)."""
    centre = np.asarray(transform.GetCenter())
    return rotation_angle_deg(transform), float(np.linalg.norm(np.asarray(transform.TransformPoint(tuple(centre))) - centre))


def _moved(
    values: np.ndarray, transform: sitk.Transform, interpolator: int, pixel_type: int = sitk.sitkFloat32
) -> np.ndarray:
    """``values`` (on the brain grid) resampled through ``transform`` onto the brain grid, 0 outside."""
    grid = brain_grid()
    image = sitk.GetImageFromArray(values if pixel_type != sitk.sitkFloat32 else values.astype(np.float32, copy=False))
    image.CopyInformation(grid.image)
    return sitk.GetArrayFromImage(sitk.Resample(image, grid.image, transform, interpolator, 0.0, pixel_type))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


# --- evidence ------------------------------------------------------------------------------------------------------
def evidence_png(fixed: np.ndarray, registered: np.ndarray, score: float | None, caption: str = "") -> bytes:
    """The two brains after registration as a checkerboard on an axial, a coronal and a sagittal plane through the
    brain's centre, with the score: what a person looks at to agree or disagree. Brain only, no face.

    Where one person is shown, the tiles continue each other's folds; where two are, the folds break at every edge.
    """
    from PIL import Image, ImageDraw

    grid = brain_grid()
    centre = np.round(np.argwhere(grid.scored).mean(axis=0)).astype(int)
    top = max(float(np.percentile(fixed[fixed > 0], 99)) if (fixed > 0).any() else 1.0, 1.0)
    low = max(float(np.percentile(registered[registered > 0], 99)) if (registered > 0).any() else 1.0, 1.0)
    a_scaled = np.clip(fixed.astype(np.float32) * (255.0 / top), 0, 255)
    b_scaled = np.clip(registered.astype(np.float32) * (255.0 / low), 0, 255)
    panels = [
        _checkerboard(np.take(a_scaled, centre[axis], axis=axis), np.take(b_scaled, centre[axis], axis=axis))
        for axis in (0, 1, 2)  # z: axial, y: coronal, x: sagittal
    ]
    height = max(p.shape[0] for p in panels)
    row = np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 4))) for p in panels], axis=1)
    picture = Image.fromarray(row).resize((row.shape[1] * 3, row.shape[0] * 3), Image.NEAREST)
    canvas = Image.new("L", (picture.width, picture.height + 20), 0)
    canvas.paste(picture, (0, 20))
    text = f"{caption}  verification {'n/a' if score is None else f'{score:.3f}'} ({METHOD_VERSION})".strip()
    ImageDraw.Draw(canvas).text((4, 4), text, fill=255)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _checkerboard(a: np.ndarray, b: np.ndarray, tile: int = 6) -> np.ndarray:
    """Alternate ``tile``-voxel squares of ``a`` and ``b``, turned so that superior (or anterior) is up."""
    rows, cols = np.indices(a.shape)
    merged = np.where(((rows // tile) + (cols // tile)) % 2 == 0, a, b)
    return np.flipud(merged).astype(np.uint8)
