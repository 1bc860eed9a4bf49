"""DICOM series -> the one axial slice the encoder sees, with a JSON-ready account of how it was found.

Two methods:

- ``anatomical`` (default): rigid alignment to the reference brain (:mod:`fingerprint.imaging.canonical`), then the fixed
  reference plane MNI z = +18 mm (:mod:`fingerprint.imaging.slicing`). Same anatomy whatever the field of view, head position
  or acquisition plane.
- ``middle``: the paper's protocol and our baseline: reorient the array to axial, take its middle slice, resample it
  to the same 128 x 1.5 mm grid (centred on the middle of the slice) and normalise it the same way (percentiles
  inside the head). On raw series the middle of the array lands on different anatomy from scan to scan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from fingerprint.errors import RejectReason, SeriesRejected
from fingerprint.imaging.brain import METHOD_VERSION as BRAIN_VERSION
from fingerprint.imaging.brain import brain_grid, extract_brain
from fingerprint.imaging.canonical import align
from fingerprint.imaging.face import face_check
from fingerprint.imaging.dicom_read import read_series
from fingerprint.imaging.slicing import (
    DEFAULT_LEVEL_MM,
    LEVEL_OFFSETS_MM,
    normalise,
    sample_levels,
    sample_plane,
    trusted_interior,
)
from fingerprint.types import SLICE_SIZE, SLICE_SPACING_MM, SliceResult

METHODS = ("anatomical", "middle")
#: Fraction of the canonical plane's brain mask that must lie inside the field of view (a cut hemisphere is kept,
#: with its coverage reported; a plane mostly outside the volume is refused).
MIN_PLANE_COVERAGE = 0.7


def slice_series(
    source: Path | str | Sequence[Dataset], method: str = "anatomical", with_brain: bool = True, with_face: bool = False
) -> SliceResult:
    """Read one series (folder, file or datasets) and return its canonical slice and, for the anatomical method, its
    canonical brain (what :mod:`fingerprint.identity.verification` compares) and, ``with_face``, whether the face is
    still in the pixels (``geometry["face"]``, :mod:`fingerprint.imaging.face`). Raises ``SeriesRejected``."""
    started = time.perf_counter()
    loaded = read_series(source)
    read_s = time.perf_counter() - started
    try:
        pixels, geometry, brain = canonical_views(loaded.image, method=method, with_brain=with_brain, with_face=with_face)
    except SeriesRejected as rejection:  # a volume, but not a usable brain: still say whose it was
        rejection.identifiers = rejection.identifiers or loaded.identifiers
        raise
    geometry["input"].update(loaded.info)
    geometry["timings_s"]["read"] = round(read_s, 3)
    return SliceResult(pixels=pixels, identifiers=loaded.identifiers, geometry=geometry, method=method, brain=brain)


def slice_volume(image: sitk.Image, method: str = "anatomical") -> tuple[np.ndarray, dict[str, Any]]:
    """The canonical slice of a volume and the geometry dict (input, alignment, level, output, timings)."""
    pixels, geometry, _brain = canonical_views(image, method=method, with_brain=False)
    return pixels, geometry


def canonical_views(
    image: sitk.Image, method: str = "anatomical", with_brain: bool = True, with_face: bool = False
) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None]:
    """The canonical slice, the geometry dict and (anatomical method, ``with_brain``) the canonical brain, from one
    alignment: the brain costs one extra resample of the volume into the reference's 2 mm brain box. ``with_face``
    adds the face check (``geometry["face"]``) from the same alignment."""
    if method not in METHODS:
        raise ValueError(f"unknown slice method {method!r}; use one of {', '.join(METHODS)}")
    geometry: dict[str, Any] = {"input": describe_volume(image), "timings_s": {}}
    brain: np.ndarray | None = None
    started = time.perf_counter()
    if method == "anatomical":
        alignment = align(image)
        aligned = time.perf_counter()
        interior = trusted_interior(image)
        plane = sample_plane(interior, alignment.transform)
        pixels, plane_covered = plane.pixels, plane.coverage
        _refuse_uncovered(plane_covered)
        geometry["alignment"] = alignment.as_json()
        geometry["level"] = {
            "how": "fixed plane of the reference brain after rigid alignment",
            "reference_z_mm": DEFAULT_LEVEL_MM,
            "anatomy": "bodies of the lateral ventricles (MNI152 z = +18 mm)",
            "plane_coverage": round(plane_covered, 3),
            "mirrored_fraction": round(plane.mirrored_fraction, 3),
        }
        geometry["timings_s"]["align"] = round(aligned - started, 3)
        geometry["timings_s"]["slice"] = round(time.perf_counter() - aligned, 3)
        if with_brain:
            sliced = time.perf_counter()
            brain = extract_brain(interior, alignment.transform)
            geometry["brain"] = {
                "method_version": BRAIN_VERSION,
                "seen_fraction": round(float((brain > 0).sum() / brain_grid().stored.sum()), 3),
            }
            geometry["timings_s"]["brain"] = round(time.perf_counter() - sliced, 3)
        if with_face:
            geometry["face"] = face_check(image, alignment.transform)
    else:
        pixels, level = middle_slice(image)
        geometry["level"] = level
        geometry["timings_s"]["slice"] = round(time.perf_counter() - started, 3)
    geometry["output"] = {
        "size": [SLICE_SIZE, SLICE_SIZE],
        "spacing_mm": [SLICE_SPACING_MM, SLICE_SPACING_MM],
        "rows": "anterior -> posterior",
        "columns": "patient right -> left (radiological)",
        "intensity": "P1..P99 inside the brain/head mask -> 0..1",
        "interpolation": "linear",
    }
    return pixels, geometry, brain


def canonical_levels(image: sitk.Image, offsets_mm: tuple[float, ...] = LEVEL_OFFSETS_MM) -> tuple[np.ndarray, list[float]]:
    """Several axial levels of one volume from one alignment (the multi-level input of bench/experiment_richer_input.py):
    float32 (L, SLICE_SIZE, SLICE_SIZE), offset 0 being the canonical slice of :func:`canonical_views` bit for bit, and
    each level's coverage. Refused as :func:`canonical_views` refuses, on the canonical plane's coverage, so both
    inputs are made of the same scans."""
    alignment = align(image)
    planes = sample_levels(trusted_interior(image), alignment.transform, offsets_mm)
    canonical = planes[list(offsets_mm).index(0.0)] if 0.0 in offsets_mm else min(planes, key=lambda p: p.coverage)
    _refuse_uncovered(canonical.coverage)
    return np.stack([p.pixels for p in planes]), [p.coverage for p in planes]


def _refuse_uncovered(plane_coverage: float) -> None:
    """Refuse a series whose field of view holds too little of the canonical plane's brain to fingerprint."""
    if plane_coverage < MIN_PLANE_COVERAGE:
        raise SeriesRejected(
            RejectReason.NOT_T1_BRAIN,
            f"the field of view holds only {100 * plane_coverage:.0f}% of the canonical plane's brain "
            f"(needs {100 * MIN_PLANE_COVERAGE:.0f}%)",
        )


def describe_volume(image: sitk.Image) -> dict[str, Any]:
    """Size, spacing, direction and the acquisition plane (from the slice normal) of a volume, JSON-ready."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    normal = direction[:, 2]
    axis = int(np.argmax(np.abs(normal)))
    obliquity = math.degrees(math.acos(min(1.0, float(np.abs(normal[axis])))))
    plane = ("sagittal", "coronal", "axial")[axis]
    extent = [float(n * s) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return {
        "size": list(image.GetSize()),
        "spacing_mm": [round(float(v), 4) for v in image.GetSpacing()],
        "origin_mm": [round(float(v), 2) for v in image.GetOrigin()],
        "direction": [round(float(v), 5) for v in image.GetDirection()],
        "extent_mm": [round(v, 1) for v in extent],
        "acquisition_plane": plane if obliquity < 1.0 else f"oblique {plane}",
        "obliquity_deg": round(obliquity, 1),
    }


def middle_slice(image: sitk.Image) -> tuple[np.ndarray, dict[str, Any]]:
    """The paper's slice: the middle axial slice of the array after reorientation to axial (no anatomy involved)."""
    axial = sitk.DICOMOrient(image, "LPS")  # index axes ~ (right->left, anterior->posterior, inferior->superior)
    size = axial.GetSize()
    middle = size[2] // 2
    centre = axial.TransformContinuousIndexToPhysicalPoint(((size[0] - 1) / 2.0, (size[1] - 1) / 2.0, float(middle)))
    direction = np.array(axial.GetDirection()).reshape(3, 3)
    half = (SLICE_SIZE - 1) / 2.0 * SLICE_SPACING_MM
    origin = np.array(centre) - half * direction[:, 0] - half * direction[:, 1]
    grid = sitk.Image(SLICE_SIZE, SLICE_SIZE, 1, sitk.sitkFloat32)
    grid.SetSpacing((SLICE_SPACING_MM,) * 3)
    grid.SetDirection(axial.GetDirection())
    grid.SetOrigin(tuple(float(v) for v in origin))
    pixels = sitk.GetArrayFromImage(sitk.Resample(axial, grid, sitk.Transform(), sitk.sitkLinear, 0.0))[0]
    head = pixels > 0.1 * float(np.percentile(pixels, 99.5)) if pixels.any() else np.zeros_like(pixels, bool)
    level = {
        "how": "middle slice of the array after reorientation to axial (paper protocol, no anatomy)",
        "slice_index": middle,
        "slices": size[2],
        "z_mm": round(float(centre[2]), 2),
    }
    return normalise(pixels, head), level
