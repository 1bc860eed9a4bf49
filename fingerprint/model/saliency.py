"""What the fingerprint looked at: plain-gradient saliency of a match, drawn over the slice.

For a new slice and the fingerprint it was compared with, the saliency is the magnitude of the gradient of their
cosine similarity with respect to the new slice's pixels (Simonyan et al.'s plain gradients: no framework needed),
smoothed a little and scaled to its 99th percentile. Bright pixels are those whose change would move the similarity
most: in a working model, the ventricles and the cortex ribbon rather than the background.

Example::

    heat = saliency_map(fingerprinter, new_slice, matched_vector)   # (128, 128) in [0, 1]
    png = saliency_png(new_slice, heat)
"""

from __future__ import annotations

import io

import numpy as np
from scipy import ndimage

from fingerprint.model.fingerprinter import Fingerprinter, _torch_threads

#: Gaussian smoothing of the gradient magnitude (pixels): single-pixel gradient noise is not what a reader needs.
SMOOTHING_PX = 1.5


def saliency_map(fingerprinter: Fingerprinter, pixels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """|d cos(f(pixels), target) / d pixels|, smoothed and scaled to [0, 1] (the 99th percentile maps to 1)."""
    import torch

    image = torch.tensor(np.asarray(pixels, dtype=np.float32)[None, None], requires_grad=True)
    goal = torch.tensor(np.asarray(target, dtype=np.float32).reshape(1, -1))
    with fingerprinter._lock, _torch_threads(fingerprinter.num_threads):
        features = torch.nn.functional.normalize(fingerprinter.encoder(image.to(fingerprinter.device)).float(), dim=1)
        similarity = (features * torch.nn.functional.normalize(goal, dim=1).to(features.device)).sum()
        (gradient,) = torch.autograd.grad(similarity, image)
    heat = ndimage.gaussian_filter(np.abs(gradient[0, 0].numpy()), SMOOTHING_PX)
    top = float(np.percentile(heat, 99))
    return np.clip(heat / top, 0.0, 1.0) if top > 0 else np.zeros_like(heat)


def saliency_png(pixels: np.ndarray, heat: np.ndarray, scale: int = 2) -> bytes:
    """The slice in grey with the saliency laid over it in red-yellow (PNG)."""
    from matplotlib import colormaps
    from PIL import Image

    grey = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    colour = colormaps["hot"](heat)[..., :3]
    weight = (0.75 * heat)[..., None]
    blended = (1.0 - weight) * grey[..., None] + weight * colour
    picture = Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
