"""The real heads every synthetic subject is built from, brought once into the reference (MNI) space and cached.

Why real heads: the model must learn anatomy that generalises to real scans, so every synthetic subject is a smooth
deformation of a real person's head (or of the MNI152 average), never a drawing.

The split (the model card quotes it):

- TRAINING heads: ``mni152`` (nilearn's MNI152 2009 average), ``philips-elition`` (man, 41 y),
  ``siemens-skyra-child`` (child, 3 y), ``siemens-prisma-xa30`` (man, 31 y, 2 mm) and ``siemens-avanto`` (man, 60 y,
  post-contrast, axial). Training and validation subjects and the calibration split come from these.
- HELD-OUT heads: ``colin27`` (one real man, the MNI Colin27 average of 27 scans of him) and ``siemens-trio``
  (man, 39 y). Only the benchmark's subjects come from them; no training subject ever does.

Each head is read from its DICOM series with the slice pipeline's reader (``fingerprint.imaging.dicom_read.read_series``)
and brought into reference space by a rigid (6 dof: head size is identity, it must not be normalised away) alignment
in two steps (:func:`alignment_to_reference`): a careful head-to-head registration to Colin27, a whole head in MNI
space (skull and scalp included, unlike the brain-only MNI152 average, so mutual information has far more to hold on
to; ~30-60 s, once per head), then the pipeline's own brain alignment (``fingerprint.imaging.canonical.align``) from there, so
the base head sits exactly where the pipeline puts heads and the canonical plane cuts it at the pipeline's level.
Colin27 only gives the *pose* (6 numbers) of the training heads: none of its anatomy enters them. The aligned head is
resampled on the 1 mm MNI152 grid, cropped to the head, intensity-scaled so that the 99.5th percentile of the head is
1, and cached as NIfTI under ``~/.cache/deepbrainprint/cohort-heads`` (or ``$DBP_COHORT_CACHE``). MNI152 is the
reference itself and is used as it is. The pipeline's residual alignment error on *visits* is modelled separately
(see :mod:`fingerprint.cohort.visits` and :mod:`fingerprint.cohort.alignment_check`).

Real people (the real-head cohorts, :data:`REAL_TEST_HEADS` and :data:`REAL_CALIBRATION_HEADS`): the 33 whole-head
NIfTI of ``shared/data/people`` (23 older adults ``oa-subj1`` .. ``oa-subj23``, 10 IXI heads ``ixi012`` ..) are base
heads too, prepared in exactly the same way as the DICOM heads (same alignment, grid, scaling and cache version).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fingerprint.files import replacing
from fingerprint.imaging.reference import load_colin27, load_mni152
from fingerprint.locations import COLIN27_PATH, shared_data_dir

#: Bump when the way heads are prepared changes: old caches are then ignored, not reused.
HEAD_CACHE_VERSION = "v3"
#: A pipeline refinement of a base head's careful alignment that turns it more than this is rejected as a failure.
MAX_REFINEMENT_DEG = 12.0
SHARED_DATA = shared_data_dir()
SHARED_T1 = SHARED_DATA / "t1"


@dataclass(frozen=True)
class HeadSource:
    """Where one base head comes from: a NIfTI (``nifti``, or ``shared_nifti`` relative to shared/data, both in any
    space), or a DICOM folder under shared/data/t1. Shared paths are resolved only when the head is prepared, so a
    machine without shared/data still imports this module."""

    name: str
    nifti: Path | None = None
    dicom_folder: str | None = None
    description: str = ""
    shared_nifti: str | None = None


HEAD_SOURCES: dict[str, HeadSource] = {
    s.name: s
    for s in (
        HeadSource("mni152", description="MNI152 2009 average (nilearn), 1 mm"),
        HeadSource("colin27", nifti=COLIN27_PATH, description="Colin27: one real man, average of 27 scans"),
        HeadSource("philips-elition", dicom_folder="philips-elition-3t-sag-gz", description="man, 41 y, 3T, 1 mm"),
        HeadSource("siemens-trio", dicom_folder="siemens-trio-3t-sag", description="man, 39 y, 3T MPRAGE, 1 mm"),
        HeadSource("siemens-skyra-child", dicom_folder="siemens-skyra-3t-sag-child", description="child, 3 y, 3T"),
        HeadSource("siemens-prisma-xa30", dicom_folder="siemens-prisma-xa30-enhanced-2mm", description="man, 31 y, 2 mm"),
        HeadSource("siemens-avanto", dicom_folder="siemens-avanto-1.5t-axial-postcontrast", description="man, 60 y, Gd"),
    )
}
TRAINING_HEADS: tuple[str, ...] = ("mni152", "philips-elition", "siemens-skyra-child", "siemens-prisma-xa30", "siemens-avanto")
HELD_OUT_HEADS: tuple[str, ...] = ("colin27", "siemens-trio")

#: The IXI files of shared/data/people/ixi-2mm (IXI number, hospital, scan number), one person each.
IXI_FILES: tuple[str, ...] = (
    "IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236", "IXI015-HH-1258", "IXI033-HH-1259",
    "IXI034-HH-1260", "IXI039-HH-1261", "IXI048-HH-1326", "IXI049-HH-1358", "IXI051-HH-1328",
)
OLDER_ADULTS = 23


def _people_sources() -> tuple[HeadSource, ...]:
    """The 33 real people of shared/data/people as head sources (names from their file names)."""
    older = (
        HeadSource(f"oa-subj{k}", shared_nifti=f"people/older-adults-2mm/Subj{k}_T1.nii.gz", description="older adult")
        for k in range(1, OLDER_ADULTS + 1)
    )
    ixi = (
        HeadSource(stem[:6].lower(), shared_nifti=f"people/ixi-2mm/{stem}-T1_ds.nii.gz", description="IXI, Philips 3T")
        for stem in IXI_FILES
    )
    return (*older, *ixi)


HEAD_SOURCES.update({s.name: s for s in _people_sources()})
PEOPLE_HEADS: tuple[str, ...] = tuple(s.name for s in _people_sources())

REAL_TEST_HEADS: tuple[str, ...] = (
    *(f"oa-subj{k}" for k in range(1, 9)), "ixi012", "ixi013", "ixi014", "siemens-trio", "colin27",
)
"""Real people held out of training *and* of calibration, for our own test of the verification stage.

Why these: thresholds must never be tuned on the people they are tested on, so the test people are fixed here once.
They mix both archives (8 older adults, 3 IXI heads) so the test sees atrophied and younger brains; siemens-trio is
the one man with real repeats twelve years later (shared/data/repeats), so the real same-person check stays on the
test side; colin27 is a real man and was already held out of training.
"""

REAL_CALIBRATION_HEADS: tuple[str, ...] = (
    *(f"oa-subj{k}" for k in range(9, OLDER_ADULTS + 1)),
    *(stem[:6].lower() for stem in IXI_FILES[3:]),
    "philips-elition", "siemens-skyra-child", "siemens-prisma-xa30", "siemens-avanto",
)
"""Real people for calibrating the verification thresholds, and the only real base heads a retraining may use.

Why: every real person not in :data:`REAL_TEST_HEADS` lands here, so calibration sees as many different real people
as possible. The four DICOM heads are already synthetic-training heads; MNI152 is in neither list because it is an
average of many brains, not one person.
"""

#: Heads of ``people/older-adults-2mm`` that show one person twice (the later scan -> the earlier one). The data's
#: README lists 23 different people, but the verification stage scores these three pairs of files 0.90-0.93 on
#: their simulated visits (the same person elsewhere: 0.79-0.99; different people: at most 0.39), and each pair has
#: the same sex, consecutive ids and ages 1.7-3.0 years apart (participants.csv): a baseline and a follow-up scan of
#: one participant. They are one person wherever people are counted (calibration, benchmark); their heads stay in
#: the cohorts (two visits of one person that far apart are the best same-person pairs the data has).
SAME_PERSON_HEADS: dict[str, str] = {"oa-subj10": "oa-subj9", "oa-subj16": "oa-subj15", "oa-subj20": "oa-subj19"}


def person_of(head: str) -> str:
    """The person a base head shows (:data:`SAME_PERSON_HEADS` folded together; every other head is its own)."""
    return SAME_PERSON_HEADS.get(head, head)


def cache_dir() -> Path:
    """Where prepared heads live; shared by every cohort run on this machine."""
    return Path(os.environ.get("DBP_COHORT_CACHE", Path.home() / ".cache" / "deepbrainprint" / "cohort-heads"))


@lru_cache(maxsize=1)
def reference_grid() -> sitk.Image:
    """The 1 mm reference box (nilearn's MNI152 grid, LPS physical coordinates as SimpleITK reads NIfTI)."""
    return load_mni152(resolution=1, pixel_type=sitk.sitkFloat32)


def _dicom_head(folder: Path) -> sitk.Image:
    """Read a real series with the pipeline's reader (float32)."""
    from fingerprint.imaging.dicom_read import read_series

    return sitk.Cast(read_series(folder).image, sitk.sitkFloat32)


def alignment_to_reference(image: sitk.Image) -> sitk.Transform:
    """Reference mm -> ``image`` mm: careful head-to-head start, then the pipeline's own brain alignment from there.

    The refinement makes a base head sit where the pipeline puts heads (its brain-masked metric decides the level of
    the canonical plane); the careful start keeps it from the wrong basins a fast aligner can fall into on a hard head
    (the 2 mm prisma series). A refinement that moves more than MAX_REFINEMENT_DEG is not trusted and not used.
    """
    from fingerprint.imaging.canonical import align, rotation_angle_deg

    careful = careful_rigid_alignment(image)
    start = sitk.Resample(image, reference_grid(), careful, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    try:
        refinement = align(start, search="rigid").transform  # rigid: the search head cache v3 was built with
    except Exception:  # the pipeline refused it: the careful alignment is the best we have
        return careful
    angle = rotation_angle_deg(refinement)
    return sitk.CompositeTransform([careful, refinement]) if angle <= MAX_REFINEMENT_DEG else careful


def _head_top_centroid(image: sitk.Image, depth_mm: float = 100.0) -> np.ndarray:
    """Centroid of the top ``depth_mm`` of the head (largest Otsu component): a start that ignores how much neck shows."""
    small = sitk.BinShrink(image, [max(1, int(round(2.0 / s))) for s in image.GetSpacing()])
    head = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.OtsuThreshold(small, 0, 1)), sortByObjectSize=True) == 1
    kji = np.argwhere(sitk.GetArrayViewFromImage(head) > 0)[:, ::-1].astype(np.float64)
    direction = np.asarray(head.GetDirection()).reshape(3, 3)
    points = np.asarray(head.GetOrigin()) + (kji * np.asarray(head.GetSpacing())) @ direction.T
    return points[points[:, 2] > points[:, 2].max() - depth_mm].mean(axis=0)


def careful_rigid_alignment(image: sitk.Image) -> sitk.Euler3DTransform:
    """Rigid (size-keeping) map Colin27 mm -> ``image`` mm, by full-head Mattes MI at 1 mm (~30 s, once per head).

    Slower and more thorough than the pipeline's 2 s alignment on purpose: it fixes each base head's place in
    reference space once for every subject built from it; the pipeline's own alignment error is modelled apart.
    """
    fixed = load_colin27(sitk.sitkFloat32)
    moving = sitk.BinShrink(image, [max(1, int(round(1.0 / s))) for s in image.GetSpacing()])
    fixed_top, moving_top = _head_top_centroid(fixed), _head_top_centroid(moving)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(v) for v in fixed_top))
    transform.SetTranslation(tuple(float(v) for v in moving_top - fixed_top))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(4.0, 0.01, 200, relaxationFactor=0.7)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.5])
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform


def _scaled_and_cropped(image: sitk.Image, margin_mm: int = 6) -> sitk.Image:
    """Scale intensities (99.5th head percentile -> 1) and crop the box to the head (+ margin), so caches stay small."""
    array = sitk.GetArrayFromImage(image)
    array = np.clip(array, 0, None)
    threshold = 0.12 * np.percentile(array[array > 0], 99.5) if np.any(array > 0) else 0.0
    head = array > threshold
    top = float(np.percentile(array[head], 99.5)) if head.any() else 1.0
    scaled = sitk.GetImageFromArray((array / max(top, 1e-6)).astype(np.float32))
    scaled.CopyInformation(image)
    zyx = np.argwhere(head)
    lo = np.maximum(zyx.min(axis=0) - margin_mm, 0)
    hi = np.minimum(zyx.max(axis=0) + margin_mm + 1, array.shape)
    return scaled[int(lo[2]) : int(hi[2]), int(lo[1]) : int(hi[1]), int(lo[0]) : int(hi[0])]


def source_path(name: str) -> Path | None:
    """The file or folder a head is read from (None for MNI152, which comes from nilearn)."""
    source = HEAD_SOURCES[name]
    if source.nifti is not None:
        return source.nifti
    if source.shared_nifti is not None:
        return SHARED_DATA / source.shared_nifti
    return SHARED_T1 / source.dicom_folder if source.dicom_folder else None


def cached_head_path(name: str) -> Path:
    """Where the prepared head ``name`` is cached (for this HEAD_CACHE_VERSION)."""
    return cache_dir() / f"{name}-{HEAD_CACHE_VERSION}.nii.gz"


def head_available(name: str) -> bool:
    """Whether ``name`` can be loaded here: already cached, or its source is on this machine."""
    path = source_path(name)
    return cached_head_path(name).exists() or path is None or path.exists()


def prepare_head(name: str) -> sitk.Image:
    """Build one base head in reference space (slow: reads DICOM, registers); use :func:`load_head` instead."""
    source = HEAD_SOURCES[name]
    grid = reference_grid()
    if name == "mni152":
        return _scaled_and_cropped(grid)
    if source.nifti is not None or source.shared_nifti is not None:
        image = sitk.ReadImage(str(source_path(name)), sitk.sitkFloat32)
    else:
        image = _dicom_head(SHARED_T1 / str(source.dicom_folder))
    aligned = sitk.Resample(image, grid, alignment_to_reference(image), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return _scaled_and_cropped(aligned)


def load_head(name: str, prepare: Callable[[str], sitk.Image] = prepare_head) -> sitk.Image:
    """A base head in reference space (float32, 1 mm, head ~[0, 1]), from the cache or prepared once and cached."""
    if name not in HEAD_SOURCES:
        raise KeyError(f"unknown base head {name!r}; known: {', '.join(HEAD_SOURCES)}")
    path = cached_head_path(name)
    if path.exists():
        return sitk.ReadImage(str(path), sitk.sitkFloat32)
    image = prepare(name)
    with replacing(path) as partial:  # one per process: two may prepare the same head at once
        sitk.WriteImage(image, str(partial), useCompression=True)
    return image
