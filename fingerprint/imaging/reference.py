"""The reference head: the shipped 2 mm template and brain mask, its landmarks, and the canonical plane's place; and
the two other template heads, each read by one loader: Colin27 (:func:`load_colin27`) and nilearn's MNI152
(:func:`load_mni152`).

Alignment (``canonical``), slicing (``slicing``) and the canonical brain (``brain``) all work in this reference's
space; keeping it in its own module lets each of them import it without importing one another.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fingerprint.locations import ASSETS_DIR, COLIN27_PATH

REFERENCE_T1 = ASSETS_DIR / "reference_t1_2mm.nii.gz"
REFERENCE_MASK = ASSETS_DIR / "reference_brain_mask_2mm.nii.gz"

#: Measured on the real series: 0 mm lets poorly contrasted scans drift (one turned 96 degrees); 6-10 mm pulls the
#: brain towards the vertex by 5-8 mm (the template's zero band prefers air over scalp); 3 mm is stable and unbiased
#: by eye (ventricle bodies at MNI z = +18 on every adult series).
METRIC_MASK_DILATION_MM = 3.0
#: Skull + scalp thickness assumed above the top of the brain when placing the start (mm, adult average).
SCALP_MM = 12.0
#: Depth of the "top of the head" chunk whose centroid gives the start (mm below the vertex).
HEAD_TOP_DEPTH_MM = 100.0
#: MNI z (mm) of the canonical axial plane: through the bodies of the lateral ventricles (see fingerprint.imaging.slicing).
DEFAULT_LEVEL_MM = 18.0


@dataclass(frozen=True)
class Reference:
    """The reference head: float image, brain mask, dilated metric mask and a few landmarks (LPS mm)."""

    image: sitk.Image
    mask: sitk.Image
    metric_mask: sitk.Image
    mask_points: np.ndarray  # (N, 3) LPS mm of the brain mask's voxels
    brain_centre: tuple[float, float, float]
    brain_top_z: float
    brain_top_centroid: tuple[float, float, float]


@lru_cache(maxsize=1)
def load_reference() -> Reference:
    """Read the shipped reference once per process."""
    image = sitk.ReadImage(str(REFERENCE_T1), sitk.sitkFloat32)
    mask = sitk.ReadImage(str(REFERENCE_MASK), sitk.sitkUInt8)
    radius = int(round(METRIC_MASK_DILATION_MM / mask.GetSpacing()[0]))
    metric_mask = sitk.BinaryDilate(mask, [radius] * 3, sitk.sitkBall)
    points = foreground_points(mask, threshold=0.5)
    top_z = float(points[:, 2].max())
    top = points[points[:, 2] > top_z + SCALP_MM - HEAD_TOP_DEPTH_MM]
    return Reference(
        image=image,
        mask=mask,
        metric_mask=metric_mask,
        mask_points=points,
        brain_centre=tuple(float(v) for v in points.mean(axis=0)),
        brain_top_z=top_z,
        brain_top_centroid=tuple(float(v) for v in top.mean(axis=0)),
    )


def load_colin27(pixel_type: int = sitk.sitkUnknown) -> sitk.Image:
    """Colin27 (one real man, the MNI average of 27 scans of him) at its native 1 mm, in its stored pixel type unless
    ``pixel_type`` is given. FileNotFoundError, saying what to install, where it is missing."""
    if not COLIN27_PATH.exists():
        raise FileNotFoundError(f"{COLIN27_PATH} is missing: install the mricron-data package (deploy/install-system.sh)")
    return sitk.ReadImage(str(COLIN27_PATH), pixel_type)


def load_mni152(resolution: int = 1, pixel_type: int = sitk.sitkUnknown) -> sitk.Image:
    """nilearn's MNI152 2009 template at ``resolution`` mm, as SimpleITK reads its NIfTI (LPS physical coordinates),
    in its stored pixel type unless ``pixel_type`` is given. ImportError where nilearn is not installed."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=resolution)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mni152.nii.gz"
        template.to_filename(path)
        return sitk.ReadImage(str(path), pixel_type)


def foreground_points(mask: sitk.Image, threshold: float) -> np.ndarray:
    """Physical (LPS mm) coordinates of the voxels of ``mask`` above ``threshold``, as an (N, 3) array."""
    array = sitk.GetArrayViewFromImage(mask)
    kji = np.argwhere(array > threshold)
    if len(kji) == 0:
        return np.zeros((0, 3))
    ijk = kji[:, ::-1].astype(np.float64)
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    return np.array(mask.GetOrigin()) + (ijk * np.array(mask.GetSpacing())) @ direction.T


def plane_centre() -> tuple[float, float, float]:
    """Centre of the canonical plane (reference LPS mm): where alignment errors of the level are read, and the point
    whose place a scaled pose fit decides (:func:`fingerprint.imaging.canonical.rigid_part`)."""
    centre_x, centre_y = plane_centre_xy()
    return float(centre_x), float(centre_y), float(DEFAULT_LEVEL_MM)


@lru_cache(maxsize=1)
def plane_centre_xy() -> tuple[float, float]:
    """In-plane centre of the grid: the middle of the reference brain's bounding box in x and y (LPS mm)."""
    reference = load_reference()
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(reference.mask)
    box = stats.GetBoundingBox(1)  # (x, y, z, size_x, size_y, size_z) in index units
    low = reference.mask.TransformIndexToPhysicalPoint(box[:3])
    high = reference.mask.TransformIndexToPhysicalPoint([box[i] + box[i + 3] - 1 for i in range(3)])
    return (low[0] + high[0]) / 2.0, (low[1] + high[1]) / 2.0
