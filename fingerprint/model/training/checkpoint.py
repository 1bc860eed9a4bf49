"""Resumable training state, written atomically so a run killed mid-write (wall-time cap, OOM) can resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fingerprint.files import replacing

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (model/optimiser state dicts, step, history, RNG states, config) to ``run_dir``."""
    target = Path(run_dir) / CHECKPOINT_FILE
    with replacing(target) as partial:
        torch.save(state, partial)
    return target


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last checkpoint of ``run_dir``, or None when there is none."""
    target = Path(run_dir) / CHECKPOINT_FILE
    if not target.exists():
        return None
    return torch.load(target, map_location="cpu", weights_only=False)
