"""Learning-rate schedule: linear warm-up then cosine decay, with the public code's batch scaling.

The paper's learning rates are quoted for batch 256 and scaled linearly to the batch used (64 -> ×0.25). The public
code warms up for 10 of 180 epochs (5.6 % of training) and decays to 0.1 % of the peak. Here the schedule is a
function of training *progress* in [0, 1] (steps done / planned, or wall time used / budget, whichever is further)
because our runs are bounded by wall time: the cosine then ends when the time does, whatever the machine's speed.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

REFERENCE_BATCH = 256
WARMUP_FRACTION = 10 / 180
FINAL_FRACTION = 0.001


def lr_factor(progress: float, batch_size: int, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Multiplier of the base learning rates at ``progress`` (0 = start, 1 = end of training)."""
    scale = batch_size / REFERENCE_BATCH
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return scale * max(progress / warmup_fraction, 1e-3)
    cosine_progress = (progress - warmup_fraction) / max(1e-9, 1.0 - warmup_fraction)
    q = 0.5 * (1 + math.cos(math.pi * cosine_progress))
    return scale * (q + FINAL_FRACTION * (1 - q))


def apply_lr(optimizer: Optimizer, factor: float) -> float:
    """Set every group's lr to base_lr × factor; returns the weights' lr (for the log)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
