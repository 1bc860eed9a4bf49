"""LARS (You et al. 2017), as Barlow Twins and the DeepBrainPrint code use it.

Why LARS: the paper's recipe (lr 0.2 for weights, 0.0048 for biases and BatchNorm, batch-scaled) depends on the
layer-wise trust ratio ‖w‖/‖∇w‖ that keeps every layer's step proportional to its size. torch has no LARS.
Biases and BatchNorm parameters (1-D tensors) get neither weight decay nor the trust ratio, as in the public code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum whose update of each multi-dimensional tensor is scaled by η‖w‖/‖∇w + wd·w‖."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        eta: float = 0.001,
    ) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(update)
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["eta"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def lars_for(model: nn.Module, weights_lr: float = 0.2, biases_lr: float = 0.0048, weight_decay: float = 1e-6) -> LARS:
    """The paper's two parameter groups: weights (lr 0.2) and biases/BatchNorm (lr 0.0048). ``base_lr`` is kept in
    each group so the schedule can scale it."""
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    biases = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = LARS(
        [{"params": weights, "lr": weights_lr}, {"params": biases, "lr": biases_lr}],
        lr=weights_lr,
        weight_decay=weight_decay,
    )
    for group, base in zip(optimizer.param_groups, (weights_lr, biases_lr)):
        group["base_lr"] = base
    return optimizer
