"""DeepBrainPrint's semi-self-supervised loss: β(t)·L_BT + (1 − β(t))·w·L_NCE.

- L_BT, Barlow Twins (Zbontar et al. 2021) on the projections of two augmented views of the same scans: makes the
  fingerprint invariant to the augmentations without labels (batch-normalised without affine, λ = 0.0051).
- L_NCE, supervised NT-Xent (temperature 0.07) over patient labels: other scans of the same patient are positives.
  As in the public code (pytorch-metric-learning ``BatchEasyHardMiner(neg_strategy=SEMIHARD)`` + ``NTXentLoss``),
  each anchor gets its easiest positive and its semi-hard negative (the most similar negative that is still less
  similar than that positive); anchors without such a pair are left out. Written in torch here (the library is not
  installed) and computed on each view's projections, then averaged (the public code uses view 1 only: using both
  doubles the supervised signal per step at no cost).
- w = 1e4 (public code): NT-Xent is ~0.1-1 while Barlow Twins on 2048 dimensions is ~10^2-10^3; the weight puts the
  supervised term on the same scale once β falls.
- β(t): ``linear`` 1 − t/H (paper default), ``constant`` 0.5, ``step`` 1 until a switch point then 0. ``t/H`` is the
  training progress in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BT_LAMBDA = 0.0051
NCE_TEMPERATURE = 0.07
NCE_WEIGHT = 1e4
BETA_SCHEDULES = ("linear", "constant", "step")
BRANCHES = ("both", "ssl", "supervised")


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = BT_LAMBDA) -> torch.Tensor:
    """Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², C the cross-correlation of the batch-normalised projections (float32)."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"views must be (N, D) of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        return z1.sum() * 0.0
    a = F.batch_norm(z1.float(), None, None, training=True, eps=1e-5)
    b = F.batch_norm(z2.float(), None, None, training=True, eps=1e-5)
    c = a.T @ b / n
    diagonal = torch.diagonal(c)
    on = (diagonal - 1).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + lambd * off


def semi_hard_pairs(similarity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each usable anchor: (anchor, easiest positive, semi-hard negative) indices.

    Easiest positive: the most similar other sample with the same label. Semi-hard negative: the most similar sample
    with another label among those strictly less similar than that positive. Anchors lacking either are dropped.
    """
    n = similarity.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=similarity.device)
    positive_mask = same & ~eye
    neg_inf = torch.finfo(similarity.dtype).min
    positive_sim, positive = torch.where(positive_mask, similarity, neg_inf).max(dim=1)
    has_positive = positive_mask.any(dim=1)
    negative_mask = ~same & (similarity < positive_sim[:, None])
    _, negative = torch.where(negative_mask, similarity, neg_inf).max(dim=1)
    usable = has_positive & negative_mask.any(dim=1)
    anchors = torch.nonzero(usable).flatten()
    return anchors, positive[anchors], negative[anchors]


def supervised_nt_xent(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = NCE_TEMPERATURE) -> torch.Tensor:
    """Supervised NT-Xent over cosine similarities, each usable anchor with its easiest positive and its semi-hard
    negative (:func:`semi_hard_pairs`, as the public code mines them)."""
    z = F.normalize(embeddings.float(), dim=1)
    similarity = z @ z.T
    logits = similarity / temperature
    anchors, positives, negatives = semi_hard_pairs(similarity.detach(), labels)
    if anchors.numel() == 0:
        return embeddings.sum() * 0.0
    pos = logits[anchors, positives]
    neg = logits[anchors, negatives]
    return (torch.logsumexp(torch.stack([pos, neg], dim=1), dim=1) - pos).mean()


def beta_at(progress: float, schedule: str = "linear", switch: float = 0.5, constant: float = 0.5) -> float:
    """β for training progress t/H in [0, 1]: the weight of the self-supervised term."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "constant":
        return constant
    if schedule == "step":
        return 1.0 if progress < switch else 0.0
    raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {BETA_SCHEDULES}")


def branch_beta(beta: float, branch: str) -> float:
    """The ablations: ``ssl`` trains with Barlow Twins only (β=1), ``supervised`` with NT-Xent only (β=0)."""
    if branch == "both":
        return beta
    if branch == "ssl":
        return 1.0
    if branch == "supervised":
        return 0.0
    raise ValueError(f"unknown branch {branch!r}; expected one of {BRANCHES}")


def deepbrainprint_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    nce_weight: float = NCE_WEIGHT,
    temperature: float = NCE_TEMPERATURE,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The combined loss for one batch of two views' projections, and its parts (for the log and the plot)."""
    parts: dict[str, float] = {"beta": beta}
    total = p1.new_zeros((), dtype=torch.float32)
    if beta > 0:
        bt = barlow_twins_loss(p1, p2)
        total = total + beta * bt
        parts["bt"] = float(bt.detach())
    if beta < 1:
        nce = 0.5 * (supervised_nt_xent(p1, labels, temperature) + supervised_nt_xent(p2, labels, temperature))
        total = total + (1 - beta) * nce_weight * nce
        parts["nce"] = float(nce.detach())
    parts["loss"] = float(total.detach())
    return total, parts
