"""The canonical axial slice: a fixed plane of the reference brain, pulled out of any aligned head volume.

The plane is the reference's axial plane at ``DEFAULT_LEVEL_MM`` (MNI z = +18 mm). Why there: it cuts the bodies of
the lateral ventricles, the caudate heads and thalami and a full ring of cortex, the anatomy the paper's central
slice of ADNI volumes shows and the part of the brain with the most individual shape (ventricles, sulci), while
staying clear of the skull base where field-of-view cuts and susceptibility artefacts live.

Grid: SLICE_SIZE x SLICE_SIZE pixels of SLICE_SPACING_MM, centred on the reference brain in the plane, with rows
running anterior -> posterior and columns patient right -> left (radiological display). In LPS coordinates that is
simply x (right->left) along columns and y (anterior->posterior) along rows, so the output grid has an identity
direction.

Interpolation is linear: for thick-sliced acquisitions this blurs across slices, which is the honest thing to show.
Pixels outside the reference brain mask dilated by MASK_DILATION_MM are set to 0 so scalp, neck and field-of-view
edges never reach the encoder. Intensities are normalised by robust percentiles inside the mask (P1 -> 0, P99 -> 1),
which makes scanners, sequences and rescale slopes comparable.

A field of view that cuts off part of one hemisphere in the plane (a series planned off-centre, a patient lying on
one side) leaves a hole where the other scans of that person have brain. The hole is filled with its mirror image
across the midline (MNI x = 0), where that lies inside the field of view: brains are nearly symmetric at this level,
and mirrored tissue is much closer to the truth than the black that would otherwise dominate the fingerprint. The
filled fraction is reported (``mirrored_fraction``); pixels whose mirror is outside the field of view too stay 0.

The outermost layer of voxels of a series is not trusted (:func:`trusted_interior`): the edge slices of a 2D
multi-slice stack come out brighter than their neighbours (no saturation from a neighbouring slice's excitation),
and linear interpolation stretches that edge slice half a voxel beyond its centre; where the field of view cuts the
brain, that bright band would sit right at the seam of the mirror fill.

:func:`sample_canonical_slice` is pure and fast: the cohort generator calls it with its own composed transforms
(deformations, perturbations). The measurements behind these choices are in the model card.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from fingerprint.imaging.reference import (
    DEFAULT_LEVEL_MM,
    load_reference,
    plane_centre_xy,
)
from fingerprint.types import SLICE_SIZE, SLICE_SPACING_MM

#: Dilation of the brain mask applied to the slice (mm): keeps the cortex border, drops the scalp.
MASK_DILATION_MM = 4.0
#: Percentiles inside the mask mapped to 0 and 1.
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0
#: Voxel layers dropped from every side of a series before its plane is cut (see :func:`trusted_interior`).
EDGE_LAYERS_DROPPED = 1
#: Offsets (mm along the reference's z axis) of the axial levels of the multi-level input (an experiment of issue 13,
#: bench/experiment_richer_input.py; the shipped model sees the canonical level alone): 12 mm below the canonical
#: plane (thalami, third ventricle, insula) and 12 mm above it (tops of the lateral ventricles, corona radiata).
LEVEL_OFFSETS_MM: tuple[float, ...] = (-12.0, 0.0, 12.0)


def slice_grid(level_mm: float | None = None) -> sitk.Image:
    """An empty 2D-in-3D image (SLICE_SIZE x SLICE_SIZE x 1) that is the canonical plane in reference space."""
    level = DEFAULT_LEVEL_MM if level_mm is None else float(level_mm)
    centre_x, centre_y = plane_centre_xy()
    half = (SLICE_SIZE - 1) / 2.0 * SLICE_SPACING_MM
    grid = sitk.Image(SLICE_SIZE, SLICE_SIZE, 1, sitk.sitkFloat32)
    grid.SetSpacing((SLICE_SPACING_MM, SLICE_SPACING_MM, SLICE_SPACING_MM))
    grid.SetOrigin((centre_x - half, centre_y - half, level))
    return grid


@dataclass(frozen=True)
class SampledPlane:
    """The canonical slice, the fraction of its brain mask inside the volume's field of view (0..1), and the fraction
    filled from the other hemisphere (0..1)."""

    pixels: np.ndarray
    coverage: float
    mirrored_fraction: float


def sample_canonical_slice(image: sitk.Image, transform: sitk.Transform, level_mm: float | None = None) -> np.ndarray:
    """The canonical slice of ``image`` as float32 (SLICE_SIZE, SLICE_SIZE), masked and normalised to about [0, 1].

    ``transform`` maps reference (MNI, LPS mm) points to ``image`` points, as :func:`align_to_reference` returns.
    """
    return sample_plane(image, transform, level_mm).pixels


def sample_plane(image: sitk.Image, transform: sitk.Transform, level_mm: float | None = None) -> SampledPlane:
    """:func:`sample_canonical_slice`, with brain cut off by the field of view filled from its mirror image (see the
    module docstring), and the covered and filled fractions reported."""
    grid = slice_grid(level_mm)
    # NaN marks grid points outside the volume: one resample gives the pixels and the field of view.
    sampled = sitk.Resample(image, grid, transform, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    pixels = sitk.GetArrayFromImage(sampled)[0]
    inside = np.isfinite(pixels)
    mask = canonical_mask(DEFAULT_LEVEL_MM if level_mm is None else float(level_mm))
    pixels, filled = fill_from_mirror(pixels, inside, mask, mirror_columns(grid))
    covered = float(inside[mask].mean()) if mask.any() else 0.0
    return SampledPlane(normalise(pixels, mask), covered, filled)


def level_mm(offset_mm: float) -> float | None:
    """The reference z (mm) of the axial level ``offset_mm`` from the canonical plane; None for offset 0, so the
    canonical level is cut exactly as the single-slice path cuts it."""
    return None if float(offset_mm) == 0.0 else DEFAULT_LEVEL_MM + float(offset_mm)


def sample_levels(
    image: sitk.Image, transform: sitk.Transform, offsets_mm: tuple[float, ...] = LEVEL_OFFSETS_MM
) -> list[SampledPlane]:
    """:func:`sample_plane` at several axial levels (offsets from the canonical plane, in mm), each masked and
    normalised on its own plane; the plane at offset 0 is the canonical slice bit for bit."""
    return [sample_plane(image, transform, level_mm(offset)) for offset in offsets_mm]


def trusted_interior(image: sitk.Image, layers: int = EDGE_LAYERS_DROPPED) -> sitk.Image:
    """``image`` without its outermost ``layers`` voxels on every side (axes too short to lose them are kept whole).

    Why: see the module docstring (bright edge slices of 2D stacks, extrapolated half voxel). Costs one copy of the
    volume (about 20 ms for 256 x 256 x 176 float32), and nothing in a series whose brain lies inside the field of
    view. Example: a 256 x 256 x 35 sagittal stack comes back 254 x 254 x 33, with the same voxel positions.
    """
    if layers <= 0:
        return image
    size = image.GetSize()
    start = [layers if n > 2 * layers + 1 else 0 for n in size]
    extent = [n - 2 * s for n, s in zip(size, start)]
    return sitk.RegionOfInterest(image, extent, start)


def mirror_columns(grid: sitk.Image) -> np.ndarray:
    """For each column of ``grid``, the column at the mirror position across the midline x = 0 (-1 off the grid)."""
    x = grid.GetOrigin()[0] + np.arange(grid.GetSize()[0]) * grid.GetSpacing()[0]
    mirrored = np.rint((-x - grid.GetOrigin()[0]) / grid.GetSpacing()[0]).astype(int)
    return np.where((mirrored >= 0) & (mirrored < grid.GetSize()[0]), mirrored, -1)


def fill_from_mirror(
    pixels: np.ndarray, inside: np.ndarray, mask: np.ndarray, mirror: np.ndarray
) -> tuple[np.ndarray, float]:
    """Pixels of ``mask`` outside the field of view (``inside`` False) take the value at their mirror column when
    that one is inside; the rest of the outside is 0. Returns the filled pixels and the filled fraction of ``mask``.

    Example: a plane whose patient-right 20 columns are cut off gets them back from the 20 patient-left columns.
    """
    source = np.maximum(mirror, 0)  # -1 (off the grid) indexes a real column; has_mirror excludes it
    has_mirror = (mirror >= 0)[np.newaxis, :] & inside[:, source]
    hole = mask & ~inside & has_mirror
    filled = np.where(inside, pixels, 0.0).astype(np.float32)
    filled[hole] = pixels[:, source][hole]
    return filled, float(hole.sum() / max(int(mask.sum()), 1))


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


def canonical_mask(level_mm: float | None = None) -> np.ndarray:
    """The (read-only) boolean brain mask of the canonical plane at ``level_mm``, cached per level."""
    return _canonical_mask_cached(round(DEFAULT_LEVEL_MM if level_mm is None else float(level_mm), 3))
