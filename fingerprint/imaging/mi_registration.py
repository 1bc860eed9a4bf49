"""Mattes mutual information registration of a volume to the reference, vectorised with numpy.

Why not SimpleITK's ImageRegistrationMethod here: on one thread its Mattes metric costs about a microsecond per sample
point and iteration (a transform Jacobian, six interpolations for the central-difference gradient and the Parzen
derivative accumulation, point by point), and the pose search evaluates tens of thousands of points tens of times.
The same metric, vectorised over all points at once, costs a fraction of that. Everything fixed-side (the reference
smoothed and shrunk per level, its mask, the sampled points and their histogram bins) depends only on the shipped
reference, so it is computed once per process (:func:`fixed_level`).

The metric is ITK's Mattes MI (Mattes et al. 2003, as ``itk::MattesMutualInformationImageToImageMetricv4`` defines it):
32 bins spanning the sampled fixed intensities and the moving image's range, two padding bins at each end, a
zero-order Parzen window on the fixed intensities and a cubic B-spline window on the moving ones, value ``-MI`` (lower
is better), so the thresholds measured with ITK keep their meaning (tests/test_mi_registration.py compares the two).
The moving image is interpolated trilinearly and its gradient taken from the same eight voxels (ITK takes central
differences, six more interpolations). The optimiser is ITK's regular
step gradient descent: steps of ``learning_rate`` along the scaled gradient, shortened by ``relaxation`` each time the
gradient turns back, stopping below ``min_step``.

The pose: ``y = R S (x - c) + c + t`` for a reference point ``x`` (LPS mm) and centre ``c``; R a rotation updated by
small rotations (rotation vector, radians), S the diagonal of the three head proportions along the reference axes
(fixed at 1 for a rigid search). The result is handed back as a SimpleITK transform (:meth:`Pose.as_sitk`).

Repeatable: sums run in a fixed order (``np.bincount``, numpy's pairwise sums), 3x3 products and inverses in plain
float arithmetic (BLAS and LAPACK kernels differ between CPUs in their last bits), logarithms through ``math.log``,
and nothing runs on several threads, so a volume gives the same pose bit for bit whatever the host's core count.

Example::

    level = fixed_level(reference, "metric", shrink=2, sigma_mm=2.0, fraction=0.3, seed=1)
    pose, value, iterations = register(level, moving_volume(image, sigma_mm=2.0), Pose.from_rigid(start, 0.9),
                                       nine_dof=True, learning_rate=4.0, min_step=0.05, iterations=150,
                                       rotation_scale=80.0**2)
    transform = pose.as_sitk(scaled=True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import SimpleITK as sitk

from fingerprint.imaging.reference import Reference, load_reference

#: Histogram bins of the metric, and ITK's padding bins at each end (the cubic window reaches two bins out).
BINS = 32
PADDING = 2
#: Fewer valid samples than this fraction of a level's points (the rest map outside the moving volume) is a failed
#: registration, as ITK refuses one whose samples all fall outside the moving image. A thin slab keeps far more than
#: this and is aligned; the brain-coverage check of ``canonical`` then refuses it with its reason.
MIN_VALID_FRACTION = 0.01


@dataclass(frozen=True)
class FixedLevel:
    """The reference side of one level: the sample points (LPS mm) and the fixed-intensity bin of each."""

    points: tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, z (LPS mm), float32
    bins: np.ndarray  # (N,) intp, fixed-intensity bin of each point

    def __len__(self) -> int:
        return len(self.bins)


@dataclass(frozen=True)
class MovingVolume:
    """The moving image as an array with its index geometry, and its intensity range for the histogram."""

    array: np.ndarray  # (k, j, i) float32, C order
    origin: np.ndarray
    to_index: np.ndarray  # 3x3: LPS mm offset from origin -> continuous (i, j, k)
    low: float
    bin_size: float


@dataclass
class Pose:
    """``y = rotation @ diag(scales) @ (x - centre) + centre + translation``."""

    rotation: np.ndarray
    translation: np.ndarray
    centre: np.ndarray
    scales: np.ndarray = field(default_factory=lambda: np.ones(3))

    @classmethod
    def from_rigid(cls, transform: sitk.Transform, proportions: float = 1.0) -> "Pose":
        """A rigid SimpleITK transform (Euler3D, VersorRigid3D) as a pose whose three scales start at ``proportions``."""
        return cls(
            rotation=np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3),
            translation=np.asarray(transform.GetTranslation(), dtype=np.float64),
            centre=np.asarray(transform.GetCenter(), dtype=np.float64),
            scales=np.full(3, float(proportions)),
        )

    @classmethod
    def from_affine(cls, transform: sitk.AffineTransform) -> "Pose":
        """An affine transform made by :meth:`as_sitk` back as a pose: its matrix is rotation times the diagonal of
        the scales, so each column's length is a scale and the column divided by it a column of the rotation."""
        matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
        scales = np.array([math.sqrt(sum(float(v) * float(v) for v in matrix[:, j])) for j in range(3)])
        return cls(
            rotation=matrix / scales[np.newaxis, :],
            translation=np.asarray(transform.GetTranslation(), dtype=np.float64),
            centre=np.asarray(transform.GetCenter(), dtype=np.float64),
            scales=scales,
        )

    def matrix(self) -> np.ndarray:
        return self.rotation * self.scales[np.newaxis, :]

    def as_sitk(self, *, scaled: bool) -> sitk.AffineTransform | sitk.Euler3DTransform:
        """The pose as a SimpleITK transform: affine (rotation times scales) when ``scaled``, else Euler3D."""
        if not scaled:
            transform = sitk.Euler3DTransform()
            transform.SetCenter(tuple(float(v) for v in self.centre))
            transform.SetMatrix(tuple(float(v) for v in self.rotation.ravel()))
        else:
            transform = sitk.AffineTransform(3)
            transform.SetCenter(tuple(float(v) for v in self.centre))
            transform.SetMatrix(tuple(float(v) for v in self.matrix().ravel()))
        transform.SetTranslation(tuple(float(v) for v in self.translation))
        return transform

    def copy(self) -> "Pose":
        return Pose(self.rotation.copy(), self.translation.copy(), self.centre.copy(), self.scales.copy())


@lru_cache(maxsize=16)
def _fixed_level_cached(kind: str, shrink: int, sigma_mm: float, fraction: float, seed: int) -> FixedLevel:
    return _build_fixed_level(load_reference(), kind, shrink, sigma_mm, fraction, seed)


def fixed_level(reference: Reference, kind: str, *, shrink: int, sigma_mm: float, fraction: float, seed: int) -> FixedLevel:
    """The sample points of one level: the reference smoothed by ``sigma_mm`` and shrunk ``shrink`` times, its ``kind``
    mask ("metric": the dilated one, "brain": the brain itself) shrunk alike, ``fraction`` of the mask's voxels drawn
    with ``seed``. Cached per process for the shipped reference."""
    if reference is load_reference():
        return _fixed_level_cached(kind, shrink, sigma_mm, fraction, seed)
    return _build_fixed_level(reference, kind, shrink, sigma_mm, fraction, seed)


def _build_fixed_level(reference: Reference, kind: str, shrink: int, sigma_mm: float, fraction: float, seed: int) -> FixedLevel:
    image = reference.image
    if sigma_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
    mask = reference.metric_mask if kind == "metric" else reference.mask
    if shrink > 1:
        image = sitk.Shrink(image, [shrink] * 3)
        mask = sitk.Shrink(mask, [shrink] * 3)
    values = sitk.GetArrayViewFromImage(image).astype(np.float64)
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    rng = np.random.default_rng(seed)
    count = max(1, int(round(fraction * len(kji))))
    if count < len(kji):
        kji = kji[np.sort(rng.choice(len(kji), size=count, replace=False))]
    fixed = values[kji[:, 0], kji[:, 1], kji[:, 2]]
    ijk = kji[:, ::-1].astype(np.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (ijk * np.asarray(image.GetSpacing())) @ direction.T
    low, high = float(fixed.min()), float(fixed.max())
    bin_size = (high - low) / (BINS - 2 * PADDING) or 1.0
    bins = np.clip(np.floor((fixed - low) / bin_size).astype(np.intp) + PADDING, PADDING, BINS - PADDING - 1)
    return FixedLevel(points=tuple(np.ascontiguousarray(points[:, a], dtype=np.float32) for a in range(3)), bins=bins)


def moving_volume(image: sitk.Image, sigma_mm: float = 0.0) -> MovingVolume:
    """``image`` (smoothed by ``sigma_mm`` first, as each registration level smooths its moving image) ready to sample."""
    if sigma_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)  # one copy, owned here
    index_to_mm = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    low, high = float(array.min()), float(array.max())
    return MovingVolume(
        array=np.ascontiguousarray(array),
        origin=np.asarray(image.GetOrigin(), dtype=np.float64),
        to_index=_inverse3(index_to_mm),
        low=low,
        bin_size=(high - low) / (BINS - 2 * PADDING) or 1.0,
    )


def _total(values: np.ndarray) -> float:
    """The sum in float64 (numpy's pairwise summation: a fixed order, whatever the host's SIMD width or core count)."""
    return float(np.add.reduce(values, dtype=np.float64))


@dataclass
class _Samples:
    """The moving image at the mapped points: values, index-space gradient, and which points were inside."""

    value: np.ndarray
    gradient: tuple[np.ndarray, np.ndarray, np.ndarray]
    inside: np.ndarray | None  # None: every point


def _sample(moving: MovingVolume, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> _Samples:
    """Trilinear values and index-space gradients of the moving image at continuous indices (i, j, k)."""
    nk, nj, ni = moving.array.shape
    inside = (i >= 0) & (i <= ni - 1) & (j >= 0) & (j <= nj - 1) & (k >= 0) & (k <= nk - 1)
    if inside.all():
        kept: np.ndarray | None = None
    else:
        kept = inside
        i, j, k = i[inside], j[inside], k[inside]
    fi, fj, fk = np.minimum(np.floor(i), ni - 2), np.minimum(np.floor(j), nj - 2), np.minimum(np.floor(k), nk - 2)
    fx, fy, fz = i - fi, j - fj, k - fk
    flat = moving.array.ravel()
    offset = ((fk.astype(np.intp) * nj + fj.astype(np.intp)) * ni) + fi.astype(np.intp)
    c000 = flat[offset]
    c100 = flat[offset + 1]
    c010 = flat[offset + ni]
    c110 = flat[offset + (ni + 1)]
    offset += nj * ni
    c001 = flat[offset]
    c101 = flat[offset + 1]
    c011 = flat[offset + ni]
    c111 = flat[offset + (ni + 1)]
    # Along x first, then y, then z; the gradient from the same eight voxels.
    e00, e10, e01, e11 = c100 - c000, c110 - c010, c101 - c001, c111 - c011
    x00 = c000 + fx * e00
    x10 = c010 + fx * e10
    x01 = c001 + fx * e01
    x11 = c011 + fx * e11
    d0 = x10 - x00
    d1 = x11 - x01
    y0 = x00 + fy * d0
    y1 = x01 + fy * d1
    dz = y1 - y0
    value = y0 + fz * dz
    dx0 = e00 + fy * (e10 - e00)
    dx = dx0 + fz * ((e01 + fy * (e11 - e01)) - dx0)
    dy = d0 + fz * (d1 - d0)
    return _Samples(value=value, gradient=(dx, dy, dz), inside=kept)


def metric_and_gradient(
    level: FixedLevel, moving: MovingVolume, pose: Pose, *, nine_dof: bool, gradient: bool = True
) -> tuple[float, np.ndarray | None]:
    """``-MI`` of the reference and the moving image under ``pose`` on the level's points, and its derivative with
    respect to (rotation vector, translation[, scales]) when ``gradient``. RuntimeError when too few points land
    inside the moving volume."""
    # Reference mm -> the moving image's continuous index in one affine map: index = A x + b.
    rotation_scaled = pose.matrix()
    to_index = moving.to_index
    linear = _product3(to_index, rotation_scaled)
    turned_centre = [sum(float(rotation_scaled[r, c]) * float(pose.centre[c]) for c in range(3)) for r in range(3)]
    shift = [float(pose.centre[r]) + float(pose.translation[r]) - float(moving.origin[r]) - turned_centre[r] for r in range(3)]
    offset = [sum(float(to_index[r, c]) * shift[c] for c in range(3)) for r in range(3)]
    x, y, z = level.points
    i, j, k = (float(linear[r, 0]) * x + float(linear[r, 1]) * y + float(linear[r, 2]) * z + offset[r] for r in range(3))
    samples = _sample(moving, i, j, k)
    value = samples.value
    count = len(value)
    if count < MIN_VALID_FRACTION * len(level) or count < 16:
        raise RuntimeError(f"too few sample points ({count} of {len(level)}) map inside the moving volume")
    fixed_row = level.bins * BINS
    if samples.inside is not None:
        fixed_row = fixed_row[samples.inside]
        x, y, z = x[samples.inside], y[samples.inside], z[samples.inside]
    position = np.clip((value - moving.low) * (1.0 / moving.bin_size) + PADDING, PADDING, BINS - PADDING - 1e-3)
    floor = np.floor(position)
    whole = floor.astype(np.intp)
    t = position - floor
    t2 = t * t
    t3 = t2 * t
    one_minus = 1.0 - t
    # Cubic B-spline weights of the four bins whole-1 .. whole+2 (they sum to 1).
    weights = (one_minus * one_minus * one_minus / 6.0, 0.5 * t3 - t2 + 2.0 / 3.0, -0.5 * t3 + 0.5 * t2 + 0.5 * t + 1.0 / 6.0, t3 / 6.0)
    cells = [fixed_row + (whole + (k - 1)) for k in range(4)]
    joint = np.zeros(BINS * BINS)
    for cell, weight in zip(cells, weights):
        joint += np.bincount(cell, weights=weight, minlength=BINS * BINS)
    total = _total(joint)
    joint = (joint / total).reshape(BINS, BINS)
    fixed_marginal = np.add.reduce(joint, axis=1)  # fixed-order sums, as in _total
    moving_marginal = np.add.reduce(joint, axis=0)
    positive = joint > 0
    # log(p(f, m) / p(m)) on the occupied cells (math.log: the same bits on every host), then MI subtracts log p(f).
    conditional = np.zeros_like(joint)
    conditional[positive] = [math.log(v) for v in (joint / np.where(moving_marginal > 0, moving_marginal, 1.0))[positive]]
    log_fixed = np.array([math.log(v) if v > 0 else 0.0 for v in fixed_marginal])
    mutual_information = _total((joint * (conditional - log_fixed[:, np.newaxis]))[positive])
    if not gradient:
        return -mutual_information, None
    # dMI/d(moving value) per point: the four weights' derivatives times log(p(f, m) / p(m)) (the p(f) term cancels).
    flat = conditional.ravel()
    slopes = (-0.5 * one_minus * one_minus, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2)
    per_point = slopes[0] * flat[cells[0]]
    for cell, slope in zip(cells[1:], slopes[1:]):
        per_point += slope * flat[cell]
    per_point *= float(1.0 / (moving.bin_size * total))
    # dMI/dy = T^T q per point, q = dMI/d(value) times the index-space gradient, T the mm -> index map. Every
    # derivative is linear in q and in x, so sums of q and of q x_j (then scalar algebra) give all nine.
    q = [per_point * g for g in samples.gradient]
    q_sum = [_total(v) for v in q]
    centre = [float(v) for v in pose.centre]
    # moments[k][j] = sum over points of q_k (x_j - c_j)
    moments = [[_total(v * axis) - centre[jj] * q_sum[kk] for jj, axis in enumerate((x, y, z))] for kk, v in enumerate(q)]
    index_map = [[float(v) for v in row] for row in to_index]
    b = [[float(v) for v in row] for row in rotation_scaled]
    # Translation: T^T sum q. Rotation vector (dy = omega x B l, B = R S, l = x - c): sum over j, k of
    # moments[k][j] (B e_j x T^T e_k). Scale j (dy = R e_j l_j): sum over k of moments[k][j] (T R)[k][j].
    translation = [sum(index_map[kk][r] * q_sum[kk] for kk in range(3)) for r in range(3)]
    rotation = [0.0, 0.0, 0.0]
    for jj in range(3):
        column = (b[0][jj], b[1][jj], b[2][jj])
        for kk in range(3):
            row = (index_map[kk][0], index_map[kk][1], index_map[kk][2])  # T^T e_k
            weight = moments[kk][jj]
            rotation[0] += weight * (column[1] * row[2] - column[2] * row[1])
            rotation[1] += weight * (column[2] * row[0] - column[0] * row[2])
            rotation[2] += weight * (column[0] * row[1] - column[1] * row[0])
    derivative = rotation + translation
    if nine_dof:
        turn = _product3(to_index, pose.rotation)
        derivative += [sum(moments[kk][jj] * float(turn[kk, jj]) for kk in range(3)) for jj in range(3)]
    return -mutual_information, -np.array(derivative)


def metric_value(level: FixedLevel, moving: MovingVolume, pose: Pose) -> float:
    """``-MI`` at ``pose`` (no derivative)."""
    value, _ = metric_and_gradient(level, moving, pose, nine_dof=False, gradient=False)
    return value


def _product3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 3x3 matrices in plain float arithmetic: BLAS kernels differ between CPUs in their last bits."""
    return np.array([[sum(float(a[r, k]) * float(b[k, c]) for k in range(3)) for c in range(3)] for r in range(3)])


def _inverse3(a: np.ndarray) -> np.ndarray:
    """The inverse of a 3x3 matrix by cofactors (no LAPACK, for the same reason as :func:`_product3`)."""
    m = [[float(v) for v in row] for row in a]
    cofactors = [
        [m[(r + 1) % 3][(c + 1) % 3] * m[(r + 2) % 3][(c + 2) % 3] - m[(r + 1) % 3][(c + 2) % 3] * m[(r + 2) % 3][(c + 1) % 3]
         for c in range(3)]
        for r in range(3)
    ]
    determinant = sum(m[0][c] * cofactors[0][c] for c in range(3))
    return np.array([[cofactors[c][r] / determinant for c in range(3)] for r in range(3)])


def _rotation(vector: np.ndarray) -> np.ndarray:
    """Rodrigues: the rotation by ``vector`` (axis times angle, radians)."""
    angle = math.sqrt(sum(float(v) * float(v) for v in vector))
    if angle == 0.0:
        return np.eye(3)
    axis = vector / angle
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * _product3(k, k)


def register(
    level: FixedLevel,
    moving: MovingVolume,
    start: Pose,
    *,
    nine_dof: bool,
    learning_rate: float,
    min_step: float,
    iterations: int,
    rotation_scale: float,
    relaxation: float = 0.6,
    gradient_tolerance: float = 1e-6,
) -> tuple[Pose, float, int]:
    """Regular-step gradient descent of ``-MI`` from ``start``: (pose, last metric value, iterations run).

    ``rotation_scale`` weighs the rotation and scale parameters against the translation's millimetres in the step
    (ITK's optimizer scales): one radian, or one unit of scale, moves the brain surface by tens of millimetres.
    """
    pose = start.copy()
    scales = np.array([rotation_scale] * 3 + [1.0] * 3 + ([rotation_scale] * 3 if nine_dof else []))
    step = learning_rate
    previous: np.ndarray | None = None
    value = math.inf
    done = 0
    for done in range(1, iterations + 1):
        value, derivative = metric_and_gradient(level, moving, pose, nine_dof=nine_dof)
        scaled = derivative / scales
        magnitude = math.sqrt(sum(float(v) * float(v) for v in scaled))
        if magnitude < gradient_tolerance:
            break
        if previous is not None and sum(float(a) * float(b) for a, b in zip(scaled, previous)) < 0.0:
            step *= relaxation
        if step < min_step:
            break
        previous = scaled
        update = -step * scaled / magnitude
        pose.rotation = _product3(_rotation(update[:3]), pose.rotation)
        pose.translation = pose.translation + update[3:6]
        if nine_dof:
            pose.scales = pose.scales + update[6:9]
    return pose, value, done
