"""The canonical axial slice: a fixed plane of the reference brain, pulled out of any aligned head volume.

The plane is the reference's axial plane at ``DEFAULT_LEVEL_MM`` (MNI z = +18 mm). Why there: it cuts the bodies of
the lateral ventricles, the caudate heads and thalami and a full ring of cortex, the anatomy the paper's central
slice of ADNI volumes shows and the part of the brain with the most individual shape (ventricles, sulci), while
staying clear of the skull base where field-of-view cuts and susceptibility artefacts live.

Grid: SLICE_SIZE x SLICE_SIZE pixels of SLICE_SPACING_MM (128 x 1.5 mm = 192 mm), centred on the reference brain in
the plane, with rows running anterior -> posterior and columns patient right -> left (radiological display). In LPS
coordinates that is simply x (right->left) along columns and y (anterior->posterior) along rows, so the output grid
has an identity direction.

Interpolation is linear: for thick-sliced acquisitions (4-5 mm sagittal) this blurs across slices, which is the
honest thing to show; no detail is invented. Pixels outside the reference brain mask dilated by MASK_DILATION_MM are
set to 0 so scalp, neck and field-of-view edges never reach the encoder. Intensities are normalised by robust
percentiles inside the mask (P1 -> 0, P99 -> 1), which makes scanners, sequences and rescale slopes comparable.

:func:`sample_canonical_slice` is pure and fast (about 10 ms): the cohort generator calls it with its own composed
transforms (deformations, perturbations).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from fingerprint.canonical import load_reference
from fingerprint.types import SLICE_SIZE, SLICE_SPACING_MM

#: MNI z (mm) of the canonical axial plane: through the bodies of the lateral ventricles (see module docstring).
DEFAULT_LEVEL_MM = 18.0
#: Dilation of the brain mask applied to the slice (mm): keeps the cortex border, drops the scalp.
MASK_DILATION_MM = 4.0
#: Percentiles inside the mask mapped to 0 and 1.
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0


def slice_grid(level_mm: float | None = None) -> sitk.Image:
    """An empty 2D-in-3D image (SLICE_SIZE x SLICE_SIZE x 1) that is the canonical plane in reference space."""
    level = DEFAULT_LEVEL_MM if level_mm is None else float(level_mm)
    centre_x, centre_y = _plane_centre()
    half = (SLICE_SIZE - 1) / 2.0 * SLICE_SPACING_MM
    grid = sitk.Image(SLICE_SIZE, SLICE_SIZE, 1, sitk.sitkFloat32)
    grid.SetSpacing((SLICE_SPACING_MM, SLICE_SPACING_MM, SLICE_SPACING_MM))
    grid.SetOrigin((centre_x - half, centre_y - half, level))
    return grid


def sample_canonical_slice(image: sitk.Image, transform: sitk.Transform, level_mm: float | None = None) -> np.ndarray:
    """The canonical slice of ``image`` as float32 (SLICE_SIZE, SLICE_SIZE), masked and normalised to about [0, 1].

    ``transform`` maps reference (MNI, LPS mm) points to ``image`` points, as :func:`align_to_reference` returns.
    """
    grid = slice_grid(level_mm)
    sampled = sitk.Resample(image, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    pixels = sitk.GetArrayFromImage(sampled)[0]
    mask = canonical_mask(DEFAULT_LEVEL_MM if level_mm is None else float(level_mm))
    return normalise(pixels, mask)


def normalise(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Map P1..P99 of ``pixels`` inside ``mask`` to 0..1 (clipped) and zero everything outside the mask."""
    inside = pixels[mask]
    if inside.size == 0:
        return np.zeros_like(pixels, dtype=np.float32)
    low, high = np.percentile(inside, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scaled = (pixels - low) / max(float(high - low), 1e-6)
    return np.where(mask, np.clip(scaled, 0.0, 1.0), 0.0).astype(np.float32)


@lru_cache(maxsize=64)
def _canonical_mask_cached(level_mm: float) -> np.ndarray:
    reference = load_reference()
    radius = max(1, int(round(MASK_DILATION_MM / reference.mask.GetSpacing()[0])))
    dilated = sitk.BinaryDilate(reference.mask, [radius] * 3, sitk.sitkBall)
    sampled = sitk.Resample(dilated, slice_grid(level_mm), sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mask = sitk.GetArrayFromImage(sampled)[0] > 0
    mask.setflags(write=False)
    return mask


def canonical_mask_image(level_mm: float | None = None) -> sitk.Image:
    """The canonical plane's brain mask as a SimpleITK image on :func:`slice_grid` (uint8 0/1)."""
    mask = sitk.GetImageFromArray(canonical_mask(level_mm)[np.newaxis].astype(np.uint8))
    mask.CopyInformation(slice_grid(level_mm))
    return mask


def canonical_mask(level_mm: float | None = None) -> np.ndarray:
    """The (read-only) boolean brain mask of the canonical plane at ``level_mm``, cached per level."""
    return _canonical_mask_cached(round(DEFAULT_LEVEL_MM if level_mm is None else float(level_mm), 3))


def plane_centre() -> tuple[float, float, float]:
    """Centre of the canonical plane (reference LPS mm): where alignment errors of the level are read, and the point
    whose place a scaled pose fit decides (:func:`fingerprint.canonical.rigid_part`)."""
    centre_x, centre_y = _plane_centre()
    return float(centre_x), float(centre_y), float(DEFAULT_LEVEL_MM)


@lru_cache(maxsize=1)
def _plane_centre() -> tuple[float, float]:
    """In-plane centre of the grid: the middle of the reference brain's bounding box in x and y (LPS mm)."""
    reference = load_reference()
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(reference.mask)
    box = stats.GetBoundingBox(1)  # (x, y, z, size_x, size_y, size_z) in index units
    low = reference.mask.TransformIndexToPhysicalPoint(box[:3])
    high = reference.mask.TransformIndexToPhysicalPoint([box[i] + box[i + 3] - 1 for i in range(3)])
    return (low[0] + high[0]) / 2.0, (low[1] + high[1]) / 2.0
