"""Anatomy of a synthetic subject and its change over the years, as transforms from subject space to a base head.

Conventions: all points are SimpleITK physical points (LPS mm) of the reference (MNI) space. A *subject* is a base
head seen through a smooth map ``subject space -> base head``; the subject's own space is reference-like (the brain
sits where MNI's does), so the slice pipeline's canonical plane through subject space is what the subject "is".

Why these deformations (the owner asked for subjects as different from their siblings as real people are):

- global anisotropic scale (each axis +-8 %, about the brain centre): head size and shape differ between people, and
  the pipeline's rigid alignment keeps size, so size is a real identity cue;
- a smooth random displacement field at three scales (Gaussian-smoothed white noise: ~30 mm / 3.5 mm RMS for lobe
  and head shape, ~15 mm / 2 mm for gyral position, ~7 mm / 0.8 mm for sulcal detail). The amplitudes are of the
  order of the residual landmark scatter between people after affine registration (a few mm); the ratio
  amplitude/scale stays < 0.15 per scale so the map does not fold (checked by :func:`min_jacobian`);
- a local expansion or shrinkage around the lateral ventricles (linear factor -15 % .. +25 %): ventricle size is one
  of the most variable structures between adults.

Ageing/disease over a visit's years (:class:`AgeingRates`), on top of the subject's own anatomy: the ventricles grow
(0.5-2.5 %/year linear, i.e. ~1.5-7.5 %/year in volume, healthy ageing to Alzheimer-like) and the brain shrinks
inside the skull (0.1-0.4 %/year linear), which widens the peripheral CSF as cortical atrophy does.

Real people (:func:`real_person_anatomy`): the subject *is* the base head, with no scale, displacement or ventricle
offset, only a mild ageing between visits; warping a real person would make them someone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

#: Field grid: the reference box at 3 mm (fine enough for the 7 mm scale, small enough to build per subject fast).
FIELD_SPACING_MM = 3.0
FIELD_ORIGIN_LPS = (100.0, 136.0, -75.0)  # the corner of the MNI box (x and y decrease along the grid: LPS vs RAS)
FIELD_SIZE = (68, 80, 66)  # 204 x 240 x 198 mm
FIELD_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)

#: Landmarks in LPS mm (MNI RAS with x and y negated).
BRAIN_CENTRE = (0.0, 18.0, 12.0)
BRAIN_SEMI_AXES = (68.0, 88.0, 66.0)
VENTRICLE_CENTRE = (0.0, 14.0, 16.0)
VENTRICLE_SIGMA = (16.0, 30.0, 14.0)

#: (smoothing sigma mm, RMS amplitude mm per component) for the subject's random displacement field.
NOISE_SCALES: tuple[tuple[float, float], ...] = ((30.0, 3.5), (15.0, 2.0), (7.0, 0.8))


@dataclass(frozen=True)
class AgeingRates:
    """How fast one subject's brain changes (linear fractions per year)."""

    ventricle_per_year: float
    atrophy_per_year: float


@dataclass
class SubjectAnatomy:
    """One synthetic subject: the base head and the maps that make it someone else. Build with :func:`random_subject`."""

    base_head: str
    scale: tuple[float, float, float]
    displacement: np.ndarray  # (z, y, x, 3) float64 on the field grid, mm
    ventricle_factor: float
    ageing: AgeingRates

    def to_base(self, years: float = 0.0) -> sitk.Transform:
        """Map subject-space points (after ``years`` of ageing since baseline) to base-head points."""
        field = self.displacement + ventricle_field() * (self.ventricle_factor + self.ageing.ventricle_per_year * years)
        field = field + atrophy_field() * (self.ageing.atrophy_per_year * years)
        return sitk.CompositeTransform([displacement_transform(field), scale_transform(self.scale)])


@lru_cache(maxsize=1)
def field_points() -> np.ndarray:
    """Physical (LPS mm) coordinates of the field grid, (z, y, x, 3) ordered like the arrays SimpleITK returns."""
    nx, ny, nz = FIELD_SIZE
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    direction = np.asarray(FIELD_DIRECTION).reshape(3, 3)
    index = np.stack([i, j, k], axis=-1) * FIELD_SPACING_MM
    return index @ direction.T + np.asarray(FIELD_ORIGIN_LPS)


@lru_cache(maxsize=1)
def ventricle_field() -> np.ndarray:
    """Unit ventricle expansion: displacement ``-(p - c) w(p)``; sampling pulled toward c makes the ventricles grow."""
    offset = field_points() - np.asarray(VENTRICLE_CENTRE)
    weight = np.exp(-0.5 * np.sum((offset / np.asarray(VENTRICLE_SIGMA)) ** 2, axis=-1))
    return -offset * weight[..., None]


@lru_cache(maxsize=1)
def atrophy_field() -> np.ndarray:
    """Unit brain shrinkage inside the skull: sampling pushed outward within the brain, fading to zero at the skull."""
    offset = field_points() - np.asarray(BRAIN_CENTRE)
    rho = np.sqrt(np.sum((offset / np.asarray(BRAIN_SEMI_AXES)) ** 2, axis=-1))
    weight = np.clip((1.1 - rho) / 0.25, 0.0, 1.0)
    return offset * weight[..., None]


def smooth_noise_field(rng: np.random.Generator, scales: tuple[tuple[float, float], ...] = NOISE_SCALES) -> np.ndarray:
    """Sum over scales of white noise smoothed by a Gaussian and rescaled to the scale's RMS amplitude."""
    shape = (FIELD_SIZE[2], FIELD_SIZE[1], FIELD_SIZE[0], 3)
    total = np.zeros(shape)
    for sigma_mm, amplitude_mm in scales:
        noise = rng.standard_normal(shape)
        smooth = gaussian_filter(noise, sigma=(*(sigma_mm / FIELD_SPACING_MM,) * 3, 0), mode="reflect")
        total += smooth * (amplitude_mm / smooth.std())
    return total


def displacement_transform(field: np.ndarray) -> sitk.DisplacementFieldTransform:
    """A displacement field on the field grid as a SimpleITK transform (linear interpolation, zero outside)."""
    image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    image.SetOrigin(FIELD_ORIGIN_LPS)
    image.SetSpacing((FIELD_SPACING_MM,) * 3)
    image.SetDirection(FIELD_DIRECTION)
    return sitk.DisplacementFieldTransform(image)


def scale_transform(scale: tuple[float, float, float], centre: tuple[float, float, float] = BRAIN_CENTRE) -> sitk.Transform:
    """Make the head ``scale`` times larger along each axis about ``centre`` (sampling map: shrink by 1/scale)."""
    transform = sitk.ScaleTransform(3, tuple(1.0 / s for s in scale))
    transform.SetCenter(centre)
    return transform


def random_subject(base_head: str, rng: np.random.Generator) -> SubjectAnatomy:
    """Draw one subject's anatomy and ageing rates from ``rng`` (seed it per subject for reproducibility)."""
    scale = tuple(float(s) for s in 1.0 + rng.uniform(-0.08, 0.08, size=3))
    displacement = smooth_noise_field(rng)
    ventricle_factor = float(rng.uniform(-0.15, 0.25))
    ageing = AgeingRates(float(rng.uniform(0.005, 0.025)), float(rng.uniform(0.001, 0.004)))
    return SubjectAnatomy(base_head, scale, displacement, ventricle_factor, ageing)  # type: ignore[arg-type]


#: The ageing of a real person's visits: the low end of the synthetic subjects' ranges (healthy, slow change).
REAL_VENTRICLE_PER_YEAR = (0.005, 0.01)
REAL_ATROPHY_PER_YEAR = (0.001, 0.002)


def real_person_anatomy(base_head: str, rng: np.random.Generator) -> SubjectAnatomy:
    """A real person as they are (identity anatomy) with a mild ageing drawn from ``rng`` (seeded per subject)."""
    displacement = np.zeros((FIELD_SIZE[2], FIELD_SIZE[1], FIELD_SIZE[0], 3))
    ageing = AgeingRates(float(rng.uniform(*REAL_VENTRICLE_PER_YEAR)), float(rng.uniform(*REAL_ATROPHY_PER_YEAR)))
    return SubjectAnatomy(base_head, (1.0, 1.0, 1.0), displacement, 0.0, ageing)


def rigid_transform(
    angles_deg: tuple[float, float, float],
    translation_mm: tuple[float, float, float],
    centre: tuple[float, float, float] = BRAIN_CENTRE,
) -> sitk.Euler3DTransform:
    """A rotation (about ``centre``) plus a shift: repositioning in the scanner, or the pipeline's alignment error."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetRotation(*(np.deg2rad(a) for a in angles_deg))
    transform.SetTranslation(translation_mm)
    return transform


def min_jacobian(field: np.ndarray) -> float:
    """Smallest Jacobian determinant of ``p -> p + field(p)`` on the grid: > 0 means the map does not fold."""
    grads = [np.gradient(field[..., c], FIELD_SPACING_MM) for c in range(3)]  # d(component)/d(z,y,x index axes)
    # grid axes (z, y, x) run along LPS (+z, -y, -x): convert index derivatives to physical ones.
    sign = {0: 1.0, 1: -1.0, 2: -1.0}
    jac = np.empty(field.shape[:3] + (3, 3))
    for c in range(3):  # component x, y, z
        for axis, physical in ((2, 0), (1, 1), (0, 2)):
            jac[..., c, physical] = grads[c][axis] * sign[axis] + (1.0 if c == physical else 0.0)
    return float(np.linalg.det(jac).min())
