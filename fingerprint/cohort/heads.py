"""The real heads every synthetic subject is built from, brought once into the reference (MNI) space and cached.

Why real heads: the model must learn anatomy that generalises to real scans, so every synthetic subject is a smooth
deformation of a real person's head (or of the MNI152 average), never a drawing.

The split (the model card quotes it):

- TRAINING heads: ``mni152`` (nilearn's MNI152 2009 average), ``philips-elition`` (man, 41 y),
  ``siemens-skyra-child`` (child, 3 y), ``siemens-prisma-xa30`` (man, 31 y, 2 mm) and ``siemens-avanto`` (man, 60 y,
  post-contrast, axial). Training and validation subjects and the calibration split come from these.
- HELD-OUT heads: ``colin27`` (one real man, the MNI Colin27 average of 27 scans of him) and ``siemens-trio``
  (man, 39 y). Only the benchmark's subjects come from them; no training subject ever does.

Each head is read from its DICOM series with the slice pipeline's reader (``fingerprint.dicom_series.read_series``),
rigidly aligned (6 dof: head size is identity, it must not be normalised away) to Colin27, which is a whole head in
MNI space (skull and scalp included, unlike the brain-only MNI152 average, so head-to-head mutual information has far
more to hold on to), resampled on the 1 mm MNI152 grid, cropped to the head, intensity-scaled so that the 99.5th
percentile of the head is 1, and cached as NIfTI under ``~/.cache/deepbrainprint/cohort-heads`` (or
``$DBP_COHORT_CACHE``). Colin27 only gives the *pose* (6 numbers) of the training heads: none of its anatomy enters
them. MNI152 and Colin27 are NIfTI files already in MNI space: they are used as they are. This one-off alignment is
slower and more careful than the pipeline's (~30 s per head instead of 2 s); the pipeline's own residual alignment
error is modelled separately (see :mod:`fingerprint.cohort.visits`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: Bump when the way heads are prepared changes: old caches are then ignored, not reused.
HEAD_CACHE_VERSION = "v1"
COLIN27_PATH = Path("/usr/share/mricron/templates/ch2.nii.gz")
SHARED_T1 = Path(os.environ.get("DBP_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "t1"


@dataclass(frozen=True)
class HeadSource:
    """Where one base head comes from: a NIfTI already in MNI space, or a DICOM folder under shared/data/t1."""

    name: str
    nifti: Path | None = None
    dicom_folder: str | None = None
    description: str = ""


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


def cache_dir() -> Path:
    """Where prepared heads live; shared by every cohort run on this machine."""
    return Path(os.environ.get("DBP_COHORT_CACHE", Path.home() / ".cache" / "deepbrainprint" / "cohort-heads"))


@lru_cache(maxsize=1)
def reference_grid() -> sitk.Image:
    """The 1 mm reference box (nilearn's MNI152 grid, LPS physical coordinates as SimpleITK reads NIfTI)."""
    return sitk.Cast(_mni152_image(), sitk.sitkFloat32)


def _mni152_image() -> sitk.Image:
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mni152.nii.gz"
        template.to_filename(path)
        return sitk.ReadImage(str(path), sitk.sitkFloat32)


def _dicom_head(folder: Path) -> tuple[sitk.Image, sitk.Transform]:
    """Read a real series with the pipeline's reader and align it, head to head, to Colin27 (see module docstring)."""
    from fingerprint.dicom_series import read_series

    image = sitk.Cast(read_series(folder).image, sitk.sitkFloat32)
    return image, careful_rigid_alignment(image)


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
    fixed = sitk.ReadImage(str(COLIN27_PATH), sitk.sitkFloat32)
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


def prepare_head(name: str) -> sitk.Image:
    """Build one base head in reference space (slow: reads DICOM, registers); use :func:`load_head` instead."""
    source = HEAD_SOURCES[name]
    grid = reference_grid()
    if name == "mni152":
        return _scaled_and_cropped(grid)
    if source.nifti is not None:
        image, to_head = sitk.ReadImage(str(source.nifti), sitk.sitkFloat32), sitk.Transform(3, sitk.sitkIdentity)
    else:
        image, to_head = _dicom_head(SHARED_T1 / str(source.dicom_folder))
    aligned = sitk.Resample(image, grid, to_head, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return _scaled_and_cropped(aligned)


def load_head(name: str, prepare: Callable[[str], sitk.Image] = prepare_head) -> sitk.Image:
    """A base head in reference space (float32, 1 mm, head ~[0, 1]), from the cache or prepared once and cached."""
    if name not in HEAD_SOURCES:
        raise KeyError(f"unknown base head {name!r}; known: {', '.join(HEAD_SOURCES)}")
    path = cache_dir() / f"{name}-{HEAD_CACHE_VERSION}.nii.gz"
    if path.exists():
        return sitk.ReadImage(str(path), sitk.sitkFloat32)
    image = prepare(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.nii.gz")
    sitk.WriteImage(image, str(tmp), useCompression=True)
    tmp.replace(path)
    return image
