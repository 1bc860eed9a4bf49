"""Is the face still in the pixels? A check for de-identified exports: skin in front of the face, after alignment.

MRI faces can be re-identified by face recognition on a surface rendering, which is why defacing tools remove them.
After the pipeline's alignment the face sits in a known box of the reference (MNI) space: in front of the frontal
lobes and below them, where the eyes, nose and mouth are. For each line of sight through that box from the front
(each left-right, up-down position), the check asks whether any voxel along it holds tissue (T1: skin and fat are
bright) rather than air. A face keeps most lines of sight filled; a defaced volume (the face zeroed or cut away)
leaves them empty. Lines of sight the field of view does not reach are not counted; where too few are left, the
face is "not in the field of view", which for de-identification is as good as removed.

Example::

    alignment = align(volume)
    face_check(volume, alignment.transform)   # {"face_present": True, "covered_fraction": 0.93, ...}
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import SimpleITK as sitk

#: The face box in MNI RAS millimetres: left-right, front (y) and height (z) ranges, sampled every GRID_MM.
FACE_X_MM = (-40.0, 40.0)
FACE_Y_MM = (70.0, 130.0)
FACE_Z_MM = (-60.0, -5.0)
GRID_MM = 2.0
#: Tissue: brighter than this share of the volume's 99th percentile (air and background stay well below).
TISSUE_SHARE_OF_P99 = 0.15
#: A face is present when more than this share of the lines of sight in the field of view meet tissue (real adult
#: heads with faces: 0.57-0.99; defaced: 0; the box is fixed in millimetres, so smaller faces fill less of it).
PRESENT_FRACTION = 0.3
#: Below this share of lines of sight inside the field of view, the face is not in the field of view.
MIN_VISIBLE_FRACTION = 0.3


@lru_cache(maxsize=1)
def face_grid() -> sitk.Image:
    """The face box as an empty image in the reference's LPS space (x right->left, y anterior->posterior)."""
    size = [int(round((high - low) / GRID_MM)) + 1 for low, high in (FACE_X_MM, FACE_Y_MM, FACE_Z_MM)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing((GRID_MM, GRID_MM, GRID_MM))
    # RAS -> LPS: x and y change sign; the grid runs from the box's LPS minimum corner.
    grid.SetOrigin((-FACE_X_MM[1], -FACE_Y_MM[1], FACE_Z_MM[0]))
    return grid


def face_check(image: sitk.Image, transform: sitk.Transform) -> dict[str, Any]:
    """Whether ``image`` still shows a face; ``transform`` maps reference points to image points (the alignment)."""
    values = sitk.GetArrayFromImage(
        sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), face_grid(), transform, sitk.sitkLinear, float("nan"),
                      sitk.sitkFloat32)
    )  # (z, y, x)
    volume = sitk.GetArrayViewFromImage(image)
    threshold = TISSUE_SHARE_OF_P99 * float(np.percentile(volume[::2, ::2, ::2], 99))
    seen = np.isfinite(values)
    columns_seen = seen.mean(axis=1) > 0.5  # (z, x): most of the line of sight is inside the field of view
    tissue = np.where(seen, values, 0.0) > threshold
    columns_with_tissue = tissue.any(axis=1) & columns_seen
    visible = float(columns_seen.mean())
    covered = float(columns_with_tissue.sum() / max(1, columns_seen.sum()))
    in_view = visible >= MIN_VISIBLE_FRACTION
    return {
        "face_present": bool(in_view and covered > PRESENT_FRACTION),
        "in_field_of_view": bool(in_view),
        "covered_fraction": round(covered, 3),
        "visible_fraction": round(visible, 3),
        "how": "lines of sight through the MNI face box that meet tissue (> 15 % of P99)",
    }


def remove_face(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """A defaced copy of ``image``: every voxel in front of the forehead and below it set to 0 (MNI RAS y > 65 mm,
    z < 25 mm: a cut like quickshear's, wider than the box :func:`face_check` reads). ``transform`` is the
    alignment (reference -> image). For making test data and the demo's de-identified export; not a defacing tool
    to release data with."""
    box = sitk.Image([90, 40, 70], sitk.sitkUInt8) + 1
    box.SetSpacing((2.0, 2.0, 2.0))
    box.SetOrigin((-90.0, -145.0, -115.0))  # LPS: x -90..90, y -145..-65 (RAS 65..145), z -115..25
    mask = sitk.Resample(box, image, transform.GetInverse(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    pixels = sitk.GetArrayFromImage(image)
    pixels[sitk.GetArrayFromImage(mask) > 0] = 0
    defaced = sitk.GetImageFromArray(pixels)
    defaced.CopyInformation(image)
    return defaced
