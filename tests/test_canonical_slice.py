"""Canonical orientation and anatomical level: same slice whatever the plane, position or patient posture."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fingerprint.imaging.canonical import (
    PLAUSIBLE_SCALE,
    align,
    align_to_reference,
    correct_bias,
    coverage,
    head_proportions,
    rigid_part,
)
from fingerprint.imaging.dicom_write import write_series
from fingerprint.imaging.pipeline import slice_series, slice_volume
from fingerprint.imaging.reference import load_reference, plane_centre
from fingerprint.imaging.slicing import (
    DEFAULT_LEVEL_MM,
    canonical_mask,
    fill_from_mirror,
    mirror_columns,
    sample_canonical_slice,
    slice_grid,
    trusted_interior,
)
from fingerprint.types import SLICE_SIZE

sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two canonical slices inside the canonical brain mask."""
    mask = canonical_mask()
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


@pytest.fixture(scope="module")
def colin_2mm(colin27: sitk.Image) -> sitk.Image:
    return sitk.BinShrink(colin27, [2, 2, 2])


def test_slice_array_orientation_is_radiological_anterior_up() -> None:
    """A marker put at the patient's left-anterior side of the reference lands top-right in the array."""
    reference = load_reference().image
    marked = sitk.Image(reference)
    index = marked.TransformPhysicalPointToIndex((30.0, -40.0, DEFAULT_LEVEL_MM))  # LPS: left, anterior
    for dx, dy in itertools.product(range(-2, 3), repeat=2):
        marked[index[0] + dx, index[1] + dy, index[2]] = 1000.0
    pixels = sample_canonical_slice(marked, sitk.Transform())
    assert pixels.shape == (SLICE_SIZE, SLICE_SIZE) and pixels.dtype == np.float32
    change = pixels - sample_canonical_slice(reference, sitk.Transform())
    row, column = np.unravel_index(np.argmax(change), change.shape)
    assert change[row, column] > 0.05
    assert row < SLICE_SIZE // 2 - 10  # anterior -> top
    assert column > SLICE_SIZE // 2 + 10  # patient left -> right of the image (radiological)


def test_slice_is_masked_and_normalised() -> None:
    pixels = sample_canonical_slice(load_reference().image, sitk.Transform())
    mask = canonical_mask()
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert not pixels[~mask].any()
    assert 0.2 < mask.mean() < 0.8
    assert slice_grid().GetOrigin()[2] == DEFAULT_LEVEL_MM


@pytest.mark.slow
def test_every_acquisition_plane_gives_the_same_slice(colin27: sitk.Image, tmp_path: Path) -> None:
    """Axial, sagittal, coronal and a 15/10-degree oblique acquisition of one head: NCC >= 0.95 with the axial."""
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.radians(15), np.radians(10), 0.0)
    planes = {"axial": "axial", "sagittal": "sagittal", "coronal": "coronal", "oblique": rotation.GetMatrix()}
    slices = {}
    for name, orientation in planes.items():
        folder = tmp_path / name
        write_series(colin27, folder, patient_id="PLANES", orientation=orientation, pixel_spacing_mm=2.0)
        result = slice_series(folder)
        assert result.geometry["input"]["acquisition_plane"].endswith(name if name != "oblique" else "axial") or name == "oblique"
        slices[name] = result.pixels
    for name in ("sagittal", "coronal", "oblique"):
        assert ncc(slices["axial"], slices[name]) >= 0.95, name


@pytest.mark.slow
def test_thick_sagittal_slices_still_match(colin27: sitk.Image, tmp_path: Path) -> None:
    write_series(colin27, tmp_path / "axial", patient_id="THICK", pixel_spacing_mm=2.0)
    write_series(colin27, tmp_path / "sag", patient_id="THICK", orientation="sagittal", slice_thickness_mm=4.0,
                 pixel_spacing_mm=1.0)
    assert ncc(slice_series(tmp_path / "axial").pixels, slice_series(tmp_path / "sag").pixels) >= 0.95


@pytest.mark.slow
def test_shifted_and_rotated_head_gives_the_same_level_within_2mm(colin_2mm: sitk.Image) -> None:
    """Move the head 30 mm and turn it 10 degrees in a larger field of view; the reference plane must land on the
    same anatomy: map it into the original head through both recovered transforms and compare."""
    motion = sitk.Euler3DTransform()
    motion.SetCenter((0.0, -20.0, 10.0))
    motion.SetRotation(np.radians(7), np.radians(5), np.radians(5))
    motion.SetTranslation((18.0, -18.0, 15.0))
    angle = np.degrees(np.arccos((np.trace(np.array(motion.GetMatrix()).reshape(3, 3)) - 1) / 2))
    assert angle == pytest.approx(10.0, abs=0.2) and np.linalg.norm(motion.GetTranslation()) == pytest.approx(30, abs=1)
    field = sitk.ConstantPad(colin_2mm, [25] * 3, [25] * 3, 0.0)
    moved = sitk.Resample(colin_2mm, field, motion.GetInverse(), sitk.sitkLinear, 0.0)
    original_fit, moved_fit = align_to_reference(colin_2mm), align_to_reference(moved)
    grid, mask = slice_grid(), canonical_mask()
    plane = [grid.TransformIndexToPhysicalPoint((int(i), int(j), 0)) for j, i in zip(*np.nonzero(mask))]
    back = motion.GetInverse()
    in_original = np.array([original_fit.TransformPoint(p) for p in plane])
    via_moved = np.array([back.TransformPoint(moved_fit.TransformPoint(p)) for p in plane])
    normal = np.array(original_fit.GetMatrix()).reshape(3, 3)[:, 2]
    assert np.abs((via_moved - in_original) @ normal).max() < 2.0
    assert np.linalg.norm(via_moved - in_original, axis=1).max() < 3.0
    assert ncc(sample_canonical_slice(colin_2mm, original_fit), sample_canonical_slice(moved, moved_fit)) >= 0.95


def rotation_between(a: sitk.Transform, b: np.ndarray) -> float:
    """Angle (degrees) of the rotation taking transform ``a``'s matrix to the 3x3 matrix ``b``."""
    m = np.asarray(a.GetMatrix()).reshape(3, 3).T @ b
    return float(np.degrees(np.arccos(np.clip((np.trace(m) - 1.0) / 2.0, -1.0, 1.0))))


def test_rigid_part_keeps_the_rotation_and_the_anchor_and_drops_the_stretch() -> None:
    """A scaled fit becomes a rigid transform with the same rotation that puts the plane centre at the same place."""
    turn = sitk.VersorRigid3DTransform()
    turn.SetRotation((1.0, 0.5, 0.2), np.radians(12))
    rotation = np.asarray(turn.GetMatrix()).reshape(3, 3)
    fitted = sitk.AffineTransform(3)
    fitted.SetCenter((0.0, -20.0, 10.0))
    fitted.SetMatrix(tuple((rotation @ np.diag([0.95, 0.9, 0.85])).ravel()))
    fitted.SetTranslation((4.0, -7.0, 11.0))
    anchor = plane_centre()
    rigid = rigid_part(fitted, anchor)
    assert rotation_between(rigid, rotation) < 1e-6
    assert np.allclose(rigid.TransformPoint(anchor), fitted.TransformPoint(anchor), atol=1e-9)
    assert head_proportions(fitted) == pytest.approx((0.95, 0.9, 0.85), abs=1e-9)
    assert head_proportions(rigid) == pytest.approx((1.0, 1.0, 1.0), abs=1e-9)  # sizes stay what they are


def test_a_shorter_narrower_head_is_fitted_by_its_scales_not_by_a_tilt(colin_2mm: sitk.Image) -> None:
    """Make the head 15 % shorter and 10 % shallower, then turn it: the scaled search must report those proportions,
    recover the turn to within half a degree (measured: scaled 0.23, rigid 0.78) and cut the plane at the same
    anatomical level; the slice itself stays rigid (head size is kept)."""
    centre = (0.0, -20.0, 10.0)
    shape = sitk.AffineTransform(3)
    shape.SetCenter(centre)
    shape.SetMatrix((1.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.85))
    motion = sitk.Euler3DTransform()
    motion.SetCenter(centre)
    motion.SetRotation(np.radians(8), np.radians(-4), np.radians(3))
    field = sitk.ConstantPad(colin_2mm, [20] * 3, [20] * 3, 0.0)
    moved = sitk.Resample(colin_2mm, field, sitk.CompositeTransform([motion, shape]).GetInverse(), sitk.sitkLinear, 0.0)
    original, fitted = align(colin_2mm), align(moved)
    assert fitted.head_scale == pytest.approx(np.array(original.head_scale) * (1.0, 0.9, 0.85), abs=0.03)
    assert fitted.as_json()["head_scale_vs_reference"] == [round(v, 3) for v in fitted.head_scale]
    expected = np.asarray(motion.GetMatrix()).reshape(3, 3) @ np.asarray(original.transform.GetMatrix()).reshape(3, 3)
    assert rotation_between(fitted.transform, expected) < 0.5
    anchor = plane_centre()
    where = motion.TransformPoint(shape.TransformPoint(original.transform.TransformPoint(anchor)))
    assert np.linalg.norm(np.subtract(fitted.transform.TransformPoint(anchor), where)) < 2.0


@pytest.mark.parametrize(
    ("subject_index", "visit_index"),
    [
        (59, 2),  # from the template's size alone the fit left the plausible range: 30 degrees off after the fallback
        (95, 2),  # a short head (vertical proportion 0.73): refused by the former bound 0.75, 41 degrees off
    ],
)
def test_held_out_heads_that_fell_back_to_the_rigid_search_keep_their_scaled_fit(
    shared_data: Path, subject_index: int, visit_index: int
) -> None:
    """Two held-out Siemens-Trio benchmark volumes (DICOM heads from the shared data) whose scaled fit was once
    refused, after which the rigid fallback pitched them 30-41 degrees off the truth. Started at the typical
    proportion 0.9 and judged against PLAUSIBLE_SCALE, both keep the scaled fit (measured 2.8 and 3.6 degrees on one
    machine, 3.6 and 5.0 on another: most of it the head's own shape against the template's)."""
    from fingerprint.cohort.alignment_check import residual_of
    from fingerprint.cohort.benchmark import scan_volume
    from fingerprint.cohort.visits import plan_subjects, plan_visits

    subject = plan_subjects("benchmark", subject_index + 1, 20230227)[subject_index]
    visit = plan_visits(subject, 3)[visit_index]
    assert subject.base_head == "siemens-trio"
    alignment = align(scan_volume(subject.anatomy(), visit))
    assert alignment.attempts[0]["search"].startswith("scaled"), alignment.attempts
    # The fallback's failure was 30-41 degrees; what is left is mostly the head's own shape against the template's, and
    # the fitted optimum moved by up to 1.4 degrees between two machines with the same packages (floating point).
    assert residual_of(visit, alignment.transform)["rotation_deg"] < 7.0


@pytest.mark.slow
def test_a_coil_shaded_series_is_aligned_near_its_careful_placement(shared_data: Path) -> None:
    """The 2 mm Prisma series (dark centre, bright back of the head: no intensity normalisation) once sent every
    scaled fit out of range and the rigid fallback tilted it 13.5 degrees from its careful full-head placement (the
    cohort's ``alignment_to_reference``), with the slice 10 mm above the ventricles; retried on the N4-corrected
    series the scaled fit was kept. The coarse search on a 4 mm copy of the series finds a plausible scaled fit
    without the retry; either way the pose must stay near the careful placement, with plausible proportions."""
    from fingerprint.cohort.heads import alignment_to_reference
    from fingerprint.imaging.dicom_read import read_series

    image = sitk.Cast(read_series(shared_data / "t1" / "siemens-prisma-xa30-enhanced-2mm").image, sitk.sitkFloat32)
    careful = alignment_to_reference(image)
    alignment = align(image)
    assert alignment.as_json()["bias_field_corrected"] is alignment.bias_corrected
    low, high = PLAUSIBLE_SCALE
    assert all(low <= v <= high for v in alignment.head_scale)
    anchor = plane_centre()
    # Where the found pose puts reference points, seen from the careful placement: rotation and level error.
    probes = np.asarray(anchor) + np.array([[0, 0, 0], [50, 0, 0], [0, 50, 0], [0, 0, 50]], dtype=float)
    back = np.array([careful.GetInverse().TransformPoint(alignment.transform.TransformPoint(tuple(p))) for p in probes])
    axes = (back[1:] - back[0]) / 50.0  # rows: where the reference axes went (a rotation matrix, transposed)
    assert rotation_between(sitk.Euler3DTransform(), axes.T) < 4.0
    assert abs(back[0][2] - anchor[2]) < 3.0


def test_correct_bias_removes_a_smooth_coil_shading(colin27: sitk.Image) -> None:
    """A shading like a head coil's (the back of the head 2x brighter than the front, smoothly) is taken out: inside
    the head, the corrected shaded image is proportional to the corrected original far more closely than the shaded
    one is to the original (compared corrected to corrected, so Colin27's own slight field does not count). On Colin27
    at 4 mm: the field is smooth, so the coarse head shows the same correction at a fifth of the cost of 2 mm."""
    colin_4mm = sitk.BinShrink(colin27, [4, 4, 4])
    head = sitk.GetArrayFromImage(colin_4mm) > 0.15 * float(np.percentile(sitk.GetArrayFromImage(colin_4mm), 99))
    y = np.linspace(-1.0, 1.0, colin_4mm.GetSize()[1])[np.newaxis, :, np.newaxis]
    shading = np.exp(0.35 * np.log(2.0) * 2 * y) * np.ones(head.shape)  # 2x from front to back
    shaded = sitk.GetImageFromArray((sitk.GetArrayFromImage(colin_4mm) * shading).astype(np.float32))
    shaded.CopyInformation(colin_4mm)
    corrected = sitk.GetArrayFromImage(correct_bias(shaded))
    original = sitk.GetArrayFromImage(correct_bias(colin_4mm))
    spread_before = np.std(np.log(shading[head]))
    spread_after = np.std(np.log(corrected[head] / original[head]))
    assert spread_after < 0.4 * spread_before, (spread_before, spread_after)


def test_a_hemisphere_cut_off_by_the_field_of_view_is_filled_from_its_mirror(colin_2mm: sitk.Image) -> None:
    """A field of view that stops 30 mm right of the midline (planned off-centre, or a patient lying on one side):
    the hole in the plane is filled from the other hemisphere and reported, and the slice stays close to the whole
    head's (measured NCC 0.97; left black, the same slice scored 0.52)."""
    full_pixels, full_geometry = slice_volume(colin_2mm)
    assert full_geometry["level"]["mirrored_fraction"] == 0.0
    centre = load_reference().brain_centre
    ends = [colin_2mm.TransformPhysicalPointToIndex((centre[0] + dx, centre[1], centre[2]))[0] for dx in (-30.0, 30.0)]
    size = colin_2mm.GetSize()[0]
    cut = sitk.Crop(colin_2mm, [ends[0], 0, 0], [0, 0, 0]) if ends[0] < ends[1] else sitk.Crop(colin_2mm, [0, 0, 0], [size - 1 - ends[0], 0, 0])
    cut_pixels, cut_geometry = slice_volume(cut)
    filled = cut_geometry["level"]["mirrored_fraction"]
    assert 0.1 < filled < 0.4
    assert cut_geometry["level"]["plane_coverage"] == pytest.approx(1.0 - filled, abs=0.03)
    assert ncc(cut_pixels, full_pixels) > 0.9


def test_fill_from_mirror_takes_the_mirror_column_only_where_it_was_seen() -> None:
    grid = slice_grid()
    mirror = mirror_columns(grid)
    seen = mirror[mirror >= 0]
    assert np.array_equal(mirror[seen], np.flatnonzero(mirror >= 0))  # mirroring twice gives the column back
    pixels = np.tile(np.arange(SLICE_SIZE, dtype=np.float32), (SLICE_SIZE, 1))
    inside = np.ones_like(pixels, dtype=bool)
    inside[:, :20] = False  # patient right cut off
    inside[:5, -20:] = False  # and, in five rows, the mirror side too
    mask = np.ones_like(inside)
    filled, fraction = fill_from_mirror(np.where(inside, pixels, np.nan), inside, mask, mirror)
    hole = ~inside[:, :20] & (mirror[:20] >= 0)[np.newaxis, :] & inside[:, mirror[:20].clip(0)]
    assert fraction == pytest.approx(hole.sum() / mask.size)
    assert np.array_equal(filled[:, :20][hole], pixels[:, mirror[:20].clip(0)][hole])
    assert (filled[:5, :20][~hole[:5]] == 0).all() and np.isfinite(filled).all()


def test_trusted_interior_drops_the_outer_voxel_layer_and_keeps_voxel_positions() -> None:
    """The bright edge slice of a 2D stack must not be sampled; every voxel kept stays where it was in space."""
    image = sitk.GetImageFromArray(np.arange(35 * 6 * 5, dtype=np.float32).reshape(35, 6, 5))
    image.SetSpacing((1.0, 1.0, 4.8))
    image.SetOrigin((10.0, -20.0, 30.0))
    inner = trusted_interior(image)
    assert inner.GetSize() == (3, 4, 33)
    assert inner.TransformIndexToPhysicalPoint((0, 0, 0)) == image.TransformIndexToPhysicalPoint((1, 1, 1))
    assert np.array_equal(sitk.GetArrayFromImage(inner), sitk.GetArrayFromImage(image)[1:-1, 1:-1, 1:-1])
    thin = sitk.GetImageFromArray(np.zeros((3, 6, 6), dtype=np.float32))
    assert trusted_interior(thin).GetSize() == (4, 4, 3)  # an axis of 3 voxels would be left with 1: kept whole


def test_alignment_is_the_same_whatever_the_thread_count(colin_2mm: sitk.Image) -> None:
    """Bit-for-bit repeatable: a worker on a 2-core host and one on a 64-core host must cut the same slice (the
    archive compares fingerprints across hosts and years). Registrations run on one thread whatever the default."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        results = []
        for threads in (1, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            results.append(align_to_reference(colin_2mm).GetParameters())
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert results[0] == results[1]


@pytest.mark.slow
def test_four_decubitus_positions_land_in_the_same_canonical_orientation(shared_data: Path, real_slice) -> None:
    """One man scanned supine, prone, on his left and right side: after alignment the slices agree, far better than
    the array-middle slices do. (HFDL's field of view cuts part of one hemisphere, so it agrees less.)"""
    folders = {p.name.split("-")[1]: p for p in sorted((shared_data / "repeats").iterdir())}
    anatomical, middle = {}, {}
    for position, folder in folders.items():
        result = real_slice(folder)
        rotation = np.array(result.geometry["alignment"]["rotation_deg"])
        assert np.abs(rotation).max() < 30, position  # the patient frame was right: no flipped pose
        anatomical[position] = result.pixels
        middle[position] = slice_series(folder, method="middle").pixels
    pairs = list(itertools.combinations(sorted(folders), 2))
    full_fov = [pair for pair in pairs if "HFDL" not in pair]
    assert min(ncc(anatomical[a], anatomical[b]) for a, b in full_fov) >= 0.75
    assert min(ncc(anatomical[a], anatomical[b]) for a, b in pairs) >= 0.2
    mean_anatomical = np.mean([ncc(anatomical[a], anatomical[b]) for a, b in pairs])
    mean_middle = np.mean([ncc(middle[a], middle[b]) for a, b in pairs])
    assert mean_anatomical > mean_middle + 0.3


@pytest.mark.slow
def test_every_real_t1_series_gives_a_ventricle_level_slice(shared_data: Path, real_slice) -> None:
    """Each real T1 series: a full brain slice; on average the slices resemble the reference's plane more than the
    paper's array-middle slices do.

    Not per series: NCC with the (average-brain) template does not rank levels within one person. Measured on these
    five series, the same head's slice 15-40 mm higher or tilted 15-20 degrees often scores as high as the aligned
    one, and the 2 mm Prisma scan's dark-centre bias field puts its aligned slice near 0. Whether the level is the
    same for one person is what the decubitus, acquisition-plane and moved-head tests check.

    The 2 mm Prisma series is left out of the NCC comparison (not of the fill check): its coil shading, dark centre
    and bright rim, anticorrelates with the template's bright white matter once its slice is at the right level
    (NCC -0.50 after its bias-corrected alignment; near 0 before, when it sliced above the ventricles). Its level is
    checked against its careful placement in ``test_a_coil_shaded_series_is_aligned_near_its_careful_placement``."""
    reference_slice = sample_canonical_slice(load_reference().image, sitk.Transform())
    mask = canonical_mask()
    scores, baseline = [], []
    for folder in sorted((shared_data / "t1").iterdir()):
        result = real_slice(folder)
        json.dumps(result.geometry)  # JSON-ready
        assert (result.pixels[mask] > 0.05).mean() > 0.8, folder.name  # brain fills the mask
        if folder.name == "siemens-prisma-xa30-enhanced-2mm":
            continue
        scores.append(ncc(result.pixels, reference_slice))
        baseline.append(ncc(slice_series(folder, method="middle").pixels, reference_slice))
    assert np.mean(scores) > np.mean(baseline) + 0.15, (scores, baseline)


def test_alignment_report_and_slice_volume_geometry(colin_2mm: sitk.Image) -> None:
    alignment = align(colin_2mm)
    report = alignment.as_json()
    assert report["metric_value"] < -0.04 and len(report["rotation_deg"]) == 3
    pixels, geometry = slice_volume(colin_2mm)
    assert pixels.shape == (SLICE_SIZE, SLICE_SIZE)
    assert geometry["level"]["reference_z_mm"] == DEFAULT_LEVEL_MM
    assert geometry["output"]["spacing_mm"] == [1.5, 1.5]
    json.dumps(geometry)
    with pytest.raises(ValueError):
        slice_volume(colin_2mm, method="random")


def test_brain_coverage_is_what_a_nearest_neighbour_resample_would_see() -> None:
    """The coverage check maps the reference brain's voxels through the pose instead of resampling the volume: it
    must agree with the resample it replaced. Planted: an oblique 2 mm slab that holds part of the brain, turned and
    moved, so that a wrong axis order, spacing or direction in the index arithmetic would change the fraction."""
    reference = load_reference()
    slab = sitk.Image([90, 30, 100], sitk.sitkUInt8) + 1
    slab.SetSpacing((2.0, 2.0, 1.5))
    slab.SetOrigin((-90.0, -60.0, -40.0))
    turn = sitk.Euler3DTransform()
    turn.SetRotation(0.2, -0.1, 0.3)
    slab.SetDirection(turn.GetMatrix())
    pose = sitk.Euler3DTransform()
    pose.SetCenter(plane_centre())
    pose.SetRotation(0.1, 0.05, -0.2)
    pose.SetTranslation((5.0, -12.0, 8.0))
    resampled = sitk.Resample(slab, reference.mask, pose, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    expected = float(sitk.GetArrayViewFromImage(resampled)[sitk.GetArrayViewFromImage(reference.mask) > 0].mean())
    found = coverage(slab, pose, reference.mask_points)
    assert 0.1 < expected < 0.9  # partly covered: the fraction can come out wrong either way
    assert found == pytest.approx(expected, abs=0.002)


def test_a_thin_slab_is_refused_not_aligned_anywhere(colin27: sitk.Image) -> None:
    """MI only counts the overlap, so a 20 mm slab scores well anywhere; the brain-coverage check refuses it."""
    from fingerprint.errors import RejectReason, SeriesRejected

    with pytest.raises(SeriesRejected) as caught:
        slice_volume(colin27[:, :, 80:100])
    assert caught.value.reason is RejectReason.NOT_T1_BRAIN and "% of the brain" in caught.value.detail
    _, geometry = slice_volume(sitk.BinShrink(colin27, [2, 2, 2]))
    assert geometry["alignment"]["brain_coverage"] > 0.95 and geometry["level"]["plane_coverage"] > 0.95
