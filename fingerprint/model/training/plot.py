"""The training-curve figure: losses, β and learning rate per step; validation retrieval per evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_history(history: list[dict[str, Any]], validations: list[dict[str, Any]], out_png: Path) -> Path:
    """Three panels: loss terms (log scale), β and lr, validation recall@1 / mAP@3. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [h["step"] for h in history]
    for key, label in (("loss", "total"), ("bt", "Barlow Twins"), ("nce", "NT-Xent (unweighted)")):
        points = [(h["step"], h[key]) for h in history if key in h and h[key] > 0]
        if points:
            axes[0].plot(*zip(*points), label=label, linewidth=0.8)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss")
    axes[0].legend()
    axes[1].plot(steps, [h["beta"] for h in history], label="β (self-supervised weight)")
    lr_axis = axes[1].twinx()
    lr_axis.plot(steps, [h["lr"] for h in history], color="tab:orange", label="lr (weights)")
    axes[1].set_xlabel("step")
    axes[1].set_title("β and learning rate")
    axes[1].legend(loc="upper left")
    lr_axis.legend(loc="upper right")
    if validations:
        val_steps = [v["step"] for v in validations]
        for key in ("recall@1", "mAP@3", "tpr@fpr0.001"):
            axes[2].plot(val_steps, [v[key] for v in validations], marker="o", label=key)
    axes[2].set_ylim(0, 1.02)
    axes[2].set_xlabel("step")
    axes[2].set_title("validation (patient-disjoint)")
    axes[2].legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
