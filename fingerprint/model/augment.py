"""The paper's domain-specific augmentations, batched in torch.

The public DeepBrainPrint code draws, per image: negative (p 0.4), rotation ±3° (always), intensity shift ±0.25
(p 0.4), bias field (degree 3, coefficients 0..0.1, p 0.3), three 10x10 patches of random values (p 0.4) and an
elastic deformation (control points every 30 px, magnitude 1-2 px, p 0.3). Same list, same probabilities here.

Why not TorchIO per sample: per-image transforms on the CPU cost about half a training step again for the views of
one batch (measured in the model card); the batched versions below do one ``grid_sample`` for rotation + elastic
together and vectorised polynomials for the bias field. Each keeps the TorchIO/MONAI semantics (see each function).

Identity must not leak through the background: the slices are zero outside the head, and a network could learn
"which augmentation left which background" only if the background changed with the image content. So intensity
augmentations (negative, shift, bias field) act on the foreground only and keep the background exactly zero;
geometric ones pad with zero. The random patches are pure noise and may fall anywhere, as in the public code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FOREGROUND_THRESHOLD = 1e-3  # slice intensities are ~[0, 1]; below this counts as background


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges (the public code's values). ``p_*=1`` forces an augmentation (tests)."""

    p_negative: float = 0.4
    rotation_degrees: float = 3.0  # always applied, uniform in ±degrees
    p_shift: float = 0.4
    shift_offset: float = 0.25  # in units of the image's foreground standard deviation (public code: z-scored input)
    p_bias: float = 0.3
    bias_order: int = 3
    bias_max_coefficient: float = 0.1
    p_patches: float = 0.4
    patch_count: int = 3
    patch_size: int = 10
    p_elastic: float = 0.3
    elastic_spacing_px: int = 30
    elastic_magnitude_px: tuple[float, float] = (1.0, 2.0)


NO_AUGMENTATION = AugmentConfig(
    p_negative=0.0, rotation_degrees=0.0, p_shift=0.0, p_bias=0.0, p_patches=0.0, p_elastic=0.0
)


def _chosen(count: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A boolean (count,) mask: which images of the batch get an augmentation applied with probability ``p``."""
    return torch.rand(count, generator=generator, device=device) < p


def _uniform(shape: tuple[int, ...], low: float, high: float, generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def foreground_mask(images: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Where the brain is: (N,1,H,W) boolean. ``region`` (H,W), when given, is the area the slicer keeps (its fixed
    canonical mask): inside it even pixels clipped to 0 (dark CSF) are foreground, so a negative turns them bright
    instead of leaving a speckled rim of zeros. Without it, non-zero pixels."""
    nonzero = images > FOREGROUND_THRESHOLD
    if region is None:
        return nonzero
    return nonzero | region.to(images.device).view(1, 1, *images.shape[-2:])


def slicer_region(slices) -> torch.Tensor:
    """The area any slice of a set is non-zero in (for slices of one slicer: its canonical mask), (H,W) boolean."""
    import numpy as np

    array = np.asarray(slices)
    return torch.from_numpy(np.asarray((array.reshape(-1, *array.shape[-2:]) > 0).any(axis=0)))


def random_negative(images: torch.Tensor, chosen: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Invert the foreground intensities between its own min and max (public code: whole image; see module doc)."""
    mask = foreground_mask(images, region)
    big = torch.finfo(images.dtype).max
    low = torch.where(mask, images, big).amin(dim=(1, 2, 3), keepdim=True)
    high = torch.where(mask, images, -big).amax(dim=(1, 2, 3), keepdim=True)
    inverted = torch.where(mask, low + high - images, images)
    return torch.where(chosen.view(-1, 1, 1, 1), inverted, images)


def random_shift(
    images: torch.Tensor, chosen: torch.Tensor, offset: float, generator=None, region: torch.Tensor | None = None
) -> torch.Tensor:
    """Add one random offset per image to its foreground (MONAI RandShiftIntensity on z-scored images).

    The offset is drawn in ±``offset`` standard deviations of the image's foreground, so it means what it means in
    the public code, where images were z-scored before augmenting; the result is clamped at a small positive value
    so the foreground stays foreground.
    """
    mask = foreground_mask(images, region)
    n = images.shape[0]
    weights = mask.float()
    count = weights.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1.0)
    mean = (images * weights).sum(dim=(1, 2, 3), keepdim=True) / count
    std = (((images - mean) ** 2) * weights).sum(dim=(1, 2, 3), keepdim=True).div(count).sqrt()
    delta = _uniform((n, 1, 1, 1), -offset, offset, generator, images.device) * std
    shifted = torch.where(mask, (images + delta).clamp_min(2 * FOREGROUND_THRESHOLD), images)
    return torch.where(chosen.view(-1, 1, 1, 1), shifted, images)


def _legendre_basis(size: int, order: int, device: torch.device) -> torch.Tensor:
    """Legendre polynomials P_0..P_order sampled on [-1, 1]: (order+1, size)."""
    x = torch.linspace(-1.0, 1.0, size, device=device)
    basis = [torch.ones_like(x), x]
    for k in range(1, order):
        basis.append(((2 * k + 1) * x * basis[k] - k * basis[k - 1]) / (k + 1))
    return torch.stack(basis[: order + 1])


def random_bias_field(
    images: torch.Tensor, chosen: torch.Tensor, order: int, max_coefficient: float, generator=None
) -> torch.Tensor:
    """Multiply by exp(sum c_ij P_i(y) P_j(x)), i + j <= order, c uniform in [0, max] (MONAI RandBiasField)."""
    n, _, h, w = images.shape
    py = _legendre_basis(h, order, images.device)
    px = _legendre_basis(w, order, images.device)
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    coefficients = _uniform((n, len(terms)), 0.0, max_coefficient, generator, images.device)
    products = torch.stack([py[i][:, None] * px[j][None, :] for i, j in terms])  # (T, H, W)
    field = torch.exp(torch.einsum("nt,thw->nhw", coefficients, products)).unsqueeze(1)
    return torch.where(chosen.view(-1, 1, 1, 1), images * field, images)


def random_patches(images: torch.Tensor, chosen: torch.Tensor, count: int, size: int, generator=None) -> torch.Tensor:
    """Fill ``count`` squares of ``size`` px with uniform noise between the image's min and max (MONAI
    RandCoarseDropout with fill_value=None)."""
    n, _, h, w = images.shape
    out = images.clone()
    low = images.amin(dim=(1, 2, 3))
    high = images.amax(dim=(1, 2, 3))
    rows = torch.randint(0, h - size + 1, (n, count), generator=generator, device=images.device)
    cols = torch.randint(0, w - size + 1, (n, count), generator=generator, device=images.device)
    noise = torch.rand((n, count, size, size), generator=generator, device=images.device)
    for index in torch.nonzero(chosen).flatten().tolist():
        for k in range(count):
            r, c = int(rows[index, k]), int(cols[index, k])
            out[index, :, r : r + size, c : c + size] = low[index] + (high[index] - low[index]) * noise[index, k]
    return out


def _elastic_displacement(n: int, h: int, w: int, spacing: int, magnitude: tuple[float, float], generator, device):
    """Smooth random displacement in pixels, (N,2,H,W): normal offsets at control points ``spacing`` px apart,
    scaled by a per-image magnitude, interpolated bicubically (MONAI Rand2DElastic's construction)."""
    grid_h = math.ceil(h / spacing) + 3
    grid_w = math.ceil(w / spacing) + 3
    offsets = torch.randn((n, 2, grid_h, grid_w), generator=generator, device=device)
    offsets = offsets * _uniform((n, 1, 1, 1), magnitude[0], magnitude[1], generator, device)
    dense = F.interpolate(offsets, scale_factor=spacing, mode="bicubic", align_corners=False)
    top = (dense.shape[2] - h) // 2
    left = (dense.shape[3] - w) // 2
    return dense[:, :, top : top + h, left : left + w]


def random_geometry(
    images: torch.Tensor,
    max_degrees: float,
    elastic_chosen: torch.Tensor,
    spacing: int,
    magnitude: tuple[float, float],
    generator=None,
) -> torch.Tensor:
    """Rotate every image by a uniform angle in ±``max_degrees`` and, where chosen, deform it elastically, in one
    bilinear ``grid_sample`` with zero padding (one resampling instead of two keeps the slice sharper)."""
    n, _, h, w = images.shape
    device = images.device
    angles = _uniform((n,), -max_degrees, max_degrees, generator, device) * (math.pi / 180.0)
    cos, sin = torch.cos(angles), torch.sin(angles)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)  # (N,H,W,2) in [-1,1], x then y
    if bool(elastic_chosen.any()):
        displacement = _elastic_displacement(n, h, w, spacing, magnitude, generator, device)
        displacement = displacement * elastic_chosen.view(-1, 1, 1, 1)
        scale = torch.tensor([2.0 / w, 2.0 / h], device=device)
        grid = grid + displacement.permute(0, 2, 3, 1) * scale
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(
    images: torch.Tensor,
    config: AugmentConfig = AugmentConfig(),
    generator: torch.Generator | None = None,
    region: torch.Tensor | None = None,
) -> torch.Tensor:
    """One random view of each image: (N,C,H,W) float -> same shape and dtype. Several channels (axial levels of one
    scan) get the same draws: one contrast, one geometry, the same patches through every channel.

    Same steps and probabilities as the public code; the order differs in one way: the intensity steps (negative,
    shift, bias field) come before the geometric ones, where the slicer's ``region`` (see :func:`foreground_mask`)
    still lines up with the image; rotation and elastic deformation are then one resampling; patches come last.
    """
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got {tuple(images.shape)}")
    n = images.shape[0]
    device = images.device
    out = images.float()
    out = random_negative(out, _chosen(n, config.p_negative, generator, device), region)
    out = random_shift(out, _chosen(n, config.p_shift, generator, device), config.shift_offset, generator, region)
    out = random_bias_field(
        out, _chosen(n, config.p_bias, generator, device), config.bias_order, config.bias_max_coefficient, generator
    )
    out = random_geometry(
        out,
        config.rotation_degrees,
        _chosen(n, config.p_elastic, generator, device),
        config.elastic_spacing_px,
        config.elastic_magnitude_px,
        generator,
    )
    out = random_patches(
        out, _chosen(n, config.p_patches, generator, device), config.patch_count, config.patch_size, generator
    )
    return out.to(images.dtype)
