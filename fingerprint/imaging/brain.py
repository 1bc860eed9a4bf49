"""The canonical brain of a series: the brain alone, resampled into the reference box, as the store keeps it.

The series is resampled at 2 mm with the pipeline's own rigid alignment, inside the reference's brain mask (dilated a
little) only, quantised to ``BRAIN_LEVELS`` grey levels, 0 where the field of view saw nothing. It holds no face:
every voxel outside the brain mask is dropped before it is stored (:func:`brain_to_bytes`). The verification stage
(:mod:`fingerprint.identity.verification`) compares two of them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from fingerprint.imaging.reference import load_reference

#: Bump when anything below changes what a canonical brain holds or how a pair is scored: brains and thresholds are
#: stored per version, and brains of two versions are never compared.
METHOD_VERSION = "dbp-verify-v1"
#: The stored brain region: the reference brain mask (2 mm) dilated by this much (the cortex border, not the face).
BRAIN_DILATION_MM = 2.0
#: Grey levels kept per voxel (6 bits): coarser than the noise, a third smaller than 8 bits, same scores.
BRAIN_LEVELS = 63
#: The verification score is read inside the brain eroded by this much: the border depends on the field of view.
SCORE_EROSION_MM = 4.0


@dataclass(frozen=True)
class BrainGrid:
    """The reference box canonical brains live in, the voxels a brain keeps and the voxels the score reads."""

    image: sitk.Image  # float32 zeros: origin, spacing, size and direction of the box
    stored: np.ndarray  # bool (z, y, x)
    scored: np.ndarray  # bool (z, y, x), inside ``stored``


@lru_cache(maxsize=1)
def brain_grid() -> BrainGrid:
    """The reference grid cropped to the dilated brain mask (plus one voxel), with its two masks."""
    mask = load_reference().mask
    spacing = mask.GetSpacing()[0]
    dilated = sitk.BinaryDilate(mask, [max(1, round(BRAIN_DILATION_MM / spacing))] * 3, sitk.sitkBall)
    eroded = sitk.BinaryErode(mask, [max(1, round(SCORE_EROSION_MM / spacing))] * 3, sitk.sitkBall)
    kept = sitk.GetArrayFromImage(dilated) > 0
    zyx = np.argwhere(kept)
    low = np.maximum(zyx.min(axis=0) - 1, 0)
    high = np.minimum(zyx.max(axis=0) + 2, kept.shape)
    size_xyz = [int(h - l) for h, l in zip(high[::-1], low[::-1])]
    box = sitk.RegionOfInterest(sitk.Cast(mask, sitk.sitkFloat32) * 0.0, size_xyz, [int(v) for v in low[::-1]])
    crop = tuple(slice(int(l), int(h)) for l, h in zip(low, high))
    stored = kept[crop].copy()
    scored = (sitk.GetArrayFromImage(eroded) > 0)[crop] & stored
    stored.setflags(write=False)
    scored.setflags(write=False)
    return BrainGrid(box, stored, scored)


def extract_brain(image: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """The canonical brain of a series: uint8 (z, y, x) on :func:`brain_grid`; 0 outside the stored region or the
    field of view, 1..BRAIN_LEVELS inside (the brain's 1st..99th percentile mapped linearly, clipped).

    ``transform`` maps reference (MNI, LPS mm) points to ``image`` points, as :func:`fingerprint.imaging.canonical.align`
    returns.
    """
    grid = brain_grid()
    sampled = sitk.Resample(image, grid.image, transform, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(sampled)
    seen = np.isfinite(values) & grid.stored
    brain = np.zeros(values.shape, dtype=np.uint8)
    if seen.any():
        low, high = np.percentile(values[seen], [1.0, 99.0])
        scaled = np.clip((values[seen] - low) / max(float(high - low), 1e-6), 0.0, 1.0)
        brain[seen] = (1 + np.round(scaled * (BRAIN_LEVELS - 1))).astype(np.uint8)
    return brain


def brain_to_bytes(brain: np.ndarray) -> bytes:
    """The stored region's voxels only, zlib-compressed: what the store keeps per series."""
    grid = brain_grid()
    if brain.shape != grid.stored.shape:
        raise ValueError(f"a canonical brain is {grid.stored.shape}, not {brain.shape}")
    return zlib.compress(np.ascontiguousarray(brain[grid.stored], dtype=np.uint8).tobytes(), 6)


def brain_from_bytes(data: bytes) -> np.ndarray:
    """The inverse of :func:`brain_to_bytes`."""
    grid = brain_grid()
    brain = np.zeros(grid.stored.shape, dtype=np.uint8)
    brain[grid.stored] = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    return brain
