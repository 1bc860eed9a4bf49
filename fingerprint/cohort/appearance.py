"""How one visit's scanner makes the same anatomy look different: contrast curve, bias field, noise, resolution.

Every parameter is drawn per *visit*, independently of the subject and of the base head, so image statistics carry no
identity: two visits of one person differ in contrast as much as two people scanned on two scanners do.

- contrast: a monotone non-linear curve on the head's ~[0, 1] intensities, a mix of a power law (gamma 0.6-1.6:
  grey/white contrast of different sequences and field strengths) and a sigmoid (a soft window);
- bias field: ``exp`` of a random polynomial of degree 3 in the scanner's coordinates (coil sensitivity), up to about
  +-25 % across the head;
- noise: Rician (magnitude of complex Gaussian noise), sigma 0.5-4 % of white matter;
- resolution: in-plane pixel 1-1.5 mm and slice thickness 1-2.5 mm (anti-aliasing blur, thick slices averaged);
- a global intensity scale (scanners store arbitrary units).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

#: Polynomial terms (i, j, k) with i + j + k <= 3 (20 terms) for the bias field.
BIAS_TERMS: tuple[tuple[int, int, int], ...] = tuple(t for t in product(range(4), repeat=3) if sum(t) <= 3)


@dataclass(frozen=True)
class Appearance:
    """One visit's scanner/contrast parameters. Draw with :func:`random_appearance`."""

    gamma: float
    sigmoid_mix: float
    sigmoid_centre: float
    sigmoid_width: float
    bias_coefficients: tuple[float, ...]
    noise_sigma: float
    intensity_scale: float
    pixel_mm: float
    thickness_mm: float


def random_appearance(rng: np.random.Generator) -> Appearance:
    """Draw a visit's scanner appearance (the ranges are in the module docstring)."""
    coefficients = rng.uniform(-1.0, 1.0, size=len(BIAS_TERMS)) * 0.25 / np.sqrt(len(BIAS_TERMS) / 4)
    coefficients[0] = 0.0  # constant term: covered by intensity_scale
    return Appearance(
        gamma=float(np.exp(rng.uniform(np.log(0.6), np.log(1.6)))),
        sigmoid_mix=float(rng.uniform(0.0, 0.5)),
        sigmoid_centre=float(rng.uniform(0.35, 0.65)),
        sigmoid_width=float(rng.uniform(0.08, 0.2)),
        bias_coefficients=tuple(float(c) for c in coefficients),
        noise_sigma=float(rng.uniform(0.005, 0.04)),
        intensity_scale=float(np.exp(rng.uniform(np.log(150.0), np.log(1500.0)))),
        pixel_mm=float(rng.uniform(1.0, 1.5)),
        thickness_mm=float(rng.choice([1.0, 1.2, 1.5, 2.0, 2.5])),
    )


def contrast_curve(values: np.ndarray, appearance: Appearance) -> np.ndarray:
    """The monotone intensity curve, on intensities where the head's bright end is ~1."""
    x = np.clip(values, 0.0, None).astype(np.float32, copy=False)
    power = x ** np.float32(appearance.gamma)
    lo, hi = (1.0 / (1.0 + np.exp(-(v - appearance.sigmoid_centre) / appearance.sigmoid_width)) for v in (0.0, 1.0))
    sigmoid = (1.0 / (1.0 + np.exp(-(x - appearance.sigmoid_centre) / appearance.sigmoid_width)) - lo) / (hi - lo)
    curve = (1.0 - appearance.sigmoid_mix) * power + appearance.sigmoid_mix * sigmoid
    return np.where(x > 0, curve, 0.0)


Coordinates = tuple[np.ndarray, np.ndarray, np.ndarray]


def bias_field(coords_mm: Coordinates, appearance: Appearance, half_extent_mm: float = 100.0) -> np.ndarray:
    """Multiplicative smooth field at points given as three broadcastable coordinate arrays (u, v, w) in mm of the
    acquisition frame centred on the head; scaled so the head spans about [-1, 1]. Broadcastable (sparse) axes keep
    a 3D volume's field cheap: no (N, 3) array of coordinates is ever built."""
    u, v, w = (np.asarray(c, dtype=np.float32) / half_extent_mm for c in coords_mm)
    log_field = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
    for (i, j, k), c in zip(BIAS_TERMS, appearance.bias_coefficients):
        if c:
            log_field += np.float32(c) * (u**i) * (v**j) * (w**k)
    return np.exp(log_field)


def rician_noise(values: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of (signal + complex Gaussian noise): the noise of magnitude MR images, positive in the background."""
    real = values + np.float32(sigma) * rng.standard_normal(size=values.shape, dtype=np.float32)
    imaginary = np.float32(sigma) * rng.standard_normal(size=values.shape, dtype=np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def apply_appearance(
    values: np.ndarray, coords_mm: Coordinates, appearance: Appearance, rng: np.random.Generator, noise_factor: float = 1.0
) -> np.ndarray:
    """Contrast curve, then bias field, then noise (``noise_factor`` < 1 where the grid is coarser than the scanner's)."""
    shaded = contrast_curve(values, appearance) * bias_field(coords_mm, appearance)
    return rician_noise(shaded, appearance.noise_sigma * noise_factor, rng).astype(np.float32)
