"""The ResNet-18 encoder, taken from torchvision.

Why the import dance: the only torchvision 0.28.0 wheel is a CUDA build. Next to the CPU build of torch 2.13.0 its
C++ extension (``torchvision._C``) cannot load, and ``import torchvision`` then fails in
``torchvision/_meta_registrations.py``, which registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
unconditionally - on operators that only the missing extension would have defined. We declare those two operator
schemas ourselves (no kernels) before importing, so the pure-Python parts (models, transforms) import normally. The
detection ops are then present but unusable, which is fine: we only need ``torchvision.models.resnet18``. Where the
extension does load (a CUDA machine), nothing is declared and torchvision is used as shipped.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch
from torch import nn

_OPS_WITHOUT_GUARD = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_declared_library: torch.library.Library | None = None


def _torchvision_extension_loads() -> bool:
    """True when torchvision's compiled ops load with this torch (checked without importing torchvision)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed")
    try:
        from pathlib import Path

        so_files = list(Path(spec.submodule_search_locations[0]).glob("_C*.so"))
        if not so_files:
            return False
        torch.ops.load_library(str(so_files[0]))
        return True
    except (OSError, RuntimeError):
        return False


def import_torchvision() -> ModuleType:
    """Import torchvision, declaring the operator schemas its CUDA-only extension would have provided if needed."""
    global _declared_library
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if not _torchvision_extension_loads() and _declared_library is None:
        _declared_library = torch.library.Library("torchvision", "DEF")
        for schema in _OPS_WITHOUT_GUARD.values():
            _declared_library.define(schema)
    return importlib.import_module("torchvision")


def resnet18_encoder(in_channels: int = 1) -> nn.Module:
    """A randomly initialised torchvision ResNet-18 whose head returns the global-pooled 512-d feature.

    ``in_channels=1`` replaces the first convolution (MRI slices are single-channel; no ImageNet weights exist here to
    justify three channels). The classification layer is replaced by the identity, so ``model(x)`` is ``(N, 512)``.
    """
    tv = import_torchvision()
    model = tv.models.resnet18(weights=None)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model
