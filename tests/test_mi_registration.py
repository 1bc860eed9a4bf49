"""The vectorised Mattes registration (fingerprint.imaging.mi_registration): its derivative is the derivative of its
value, its value is ITK's Mattes metric, and it finds a known pose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from fingerprint.imaging import canonical
from fingerprint.imaging import mi_registration as mi
from fingerprint.imaging.reference import load_reference


@pytest.fixture(scope="module")
def colin_2mm(colin27: sitk.Image) -> sitk.Image:
    return sitk.Cast(sitk.BinShrink(colin27, [2, 2, 2]), sitk.sitkFloat32)


@pytest.fixture(scope="module")
def pose_near(colin_2mm: sitk.Image) -> mi.Pose:
    """A scaled pose a little off Colin27's own alignment (turned 3 degrees, moved 2 mm, proportions 0.95)."""
    aligned = canonical.align(colin_2mm).transform
    pose = mi.Pose.from_rigid(aligned, 0.95)
    pose.rotation = mi._rotation(np.radians([3.0, -2.0, 1.0])) @ pose.rotation
    pose.translation = pose.translation + np.array([2.0, -1.0, 1.5])
    return pose


def _moved(pose: mi.Pose, parameter: int, delta: float) -> mi.Pose:
    moved = pose.copy()
    if parameter < 3:
        vector = np.zeros(3)
        vector[parameter] = delta
        moved.rotation = mi._rotation(vector) @ moved.rotation
    elif parameter < 6:
        moved.translation[parameter - 3] += delta
    else:
        moved.scales[parameter - 6] += delta
    return moved


def test_the_derivative_is_the_slope_of_the_metric(colin_2mm: sitk.Image, pose_near: mi.Pose) -> None:
    """Central differences of the value against the analytic derivative, for each of the nine parameters."""
    level = mi.fixed_level(load_reference(), "brain", shrink=1, sigma_mm=0.0, fraction=0.3, seed=canonical.RANDOM_SEED)
    moving = mi.moving_volume(colin_2mm, sigma_mm=2.0)  # smoothed: the trilinear slope is then close to the true one
    _value, derivative = mi.metric_and_gradient(level, moving, pose_near, nine_dof=True)
    assert derivative is not None
    steps = [1e-3] * 3 + [0.05] * 3 + [1e-3] * 3  # radians, mm, proportion
    numeric = np.array([
        (mi.metric_value(level, moving, _moved(pose_near, p, h)) - mi.metric_value(level, moving, _moved(pose_near, p, -h))) / (2 * h)
        for p, h in enumerate(steps)
    ])
    scale = np.abs(numeric).max()
    assert np.abs(derivative - numeric).max() < 0.05 * scale, (derivative, numeric)
    assert np.all(np.sign(derivative[np.abs(numeric) > 0.2 * scale]) == np.sign(numeric[np.abs(numeric) > 0.2 * scale]))


def test_the_value_is_itks_mattes_metric(colin_2mm: sitk.Image, pose_near: mi.Pose) -> None:
    """Same points in the brain mask, same 32 bins: the value agrees with SimpleITK's Mattes MI, so the retry and
    refusal thresholds measured with ITK keep their meaning."""
    reference = load_reference()
    ours = mi.metric_value(
        mi.fixed_level(reference, "metric", shrink=1, sigma_mm=0.0, fraction=canonical.METRIC_CHECK_FRACTION, seed=canonical.RANDOM_SEED),
        mi.moving_volume(colin_2mm),
        pose_near,
    )
    method = canonical._mattes_method(reference.metric_mask, canonical.METRIC_CHECK_FRACTION, learning_rate=1.0, min_step=1.0,
                                      iterations=1, nine_dof=False)
    method.SetInitialTransform(pose_near.as_sitk(scaled=True), inPlace=False)
    itk = float(method.MetricEvaluate(reference.image, colin_2mm))
    assert ours < canonical.RETRY_METRIC and itk < canonical.RETRY_METRIC
    assert abs(ours - itk) < 0.01, (ours, itk)


def test_a_known_pose_is_found_from_a_nearby_start(colin_2mm: sitk.Image, pose_near: mi.Pose) -> None:
    """Colin27 turned by a known rotation and shift: the descent from its unmoved pose lands on the moved one."""
    reference = load_reference()
    aligned = canonical.align(colin_2mm).transform
    truth = mi.Pose.from_rigid(aligned)
    turn = mi._rotation(np.radians([4.0, -3.0, 5.0]))
    centre = np.asarray(colin_2mm.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in colin_2mm.GetSize()]))
    move = sitk.Euler3DTransform()
    move.SetCenter(tuple(centre))
    move.SetMatrix(tuple(turn.ravel()))
    move.SetTranslation((5.0, -4.0, 3.0))
    moved_image = sitk.Resample(colin_2mm, colin_2mm, move, sitk.sitkLinear, 0.0)
    inverse = move.GetInverse()
    expected = inverse.TransformPoint(aligned.TransformPoint(tuple(truth.centre)))
    level = mi.fixed_level(reference, "brain", shrink=1, sigma_mm=0.0, fraction=0.3, seed=canonical.RANDOM_SEED)
    found, _metric, steps = mi.register(level, mi.moving_volume(moved_image), truth, nine_dof=False, learning_rate=1.0,
                                        min_step=0.01, iterations=200, rotation_scale=canonical.ROTATION_SCALE)
    rotation_error = turn @ found.rotation @ np.asarray(aligned.GetMatrix()).reshape(3, 3).T
    angle = math.degrees(math.acos(min(1.0, (np.trace(rotation_error) - 1) / 2)))
    shift = np.linalg.norm(np.asarray(found.as_sitk(scaled=False).TransformPoint(tuple(truth.centre))) - expected)
    assert angle < 0.5 and shift < 0.5, (angle, shift, steps)


def test_too_few_points_inside_the_volume_is_an_error(colin_2mm: sitk.Image, pose_near: mi.Pose) -> None:
    slab = colin_2mm[:, :, 0:2]
    level = mi.fixed_level(load_reference(), "metric", shrink=2, sigma_mm=2.0, fraction=0.3, seed=canonical.RANDOM_SEED)
    with pytest.raises(RuntimeError, match="map inside the moving volume"):
        mi.metric_and_gradient(level, mi.moving_volume(slab), pose_near, nine_dof=True)


def test_the_same_volume_gives_the_same_pose_bit_for_bit(colin_2mm: sitk.Image, pose_near: mi.Pose) -> None:
    level = mi.fixed_level(load_reference(), "metric", shrink=2, sigma_mm=2.0, fraction=0.3, seed=canonical.RANDOM_SEED)
    runs = [
        mi.register(level, mi.moving_volume(colin_2mm, 2.0), pose_near, nine_dof=True, learning_rate=2.0, min_step=0.05,
                    iterations=50, rotation_scale=canonical.ROTATION_SCALE)[0].as_sitk(scaled=True).GetParameters()
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
