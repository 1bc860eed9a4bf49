"""The fingerprint network: ResNet-18 encoder (kept) plus a projection head (training only), and its weight files.

Why the split: the paper trains the encoder through a projection head (Barlow Twins needs a wide, batch-normalised
space) but fingerprints are the encoder's pooled 512-d output. Only the encoder is shipped.

Shipped format: ``encoder.safetensors`` (float16, ~22 MB) next to ``model.json`` (version, input spec, slice method,
training data, date). float16 halves the file; embeddings are computed in float32 after loading, and the loss of
precision moves cosine similarities by ~1e-4 (measured in tests/test_model.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fingerprint.model.backbone import resnet18_encoder

EMBEDDING_DIM = 512
PROJECTION_DIM = 2048  # the public code's head width
UNTRAINED_VERSION = "untrained-0"
UNTRAINED_SEED = 20230227  # fixed: every process builds the same untrained encoder
WEIGHTS_FILE = "encoder.safetensors"
METADATA_FILE = "model.json"


def projection_head(in_dim: int = EMBEDDING_DIM, out_dim: int = PROJECTION_DIM) -> nn.Sequential:
    """The public code's head: Linear without bias, BatchNorm1d, ReLU (one layer, unlike Barlow Twins' three)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True))


class TrainingNet(nn.Module):
    """Encoder + projection head. ``forward`` returns (embedding (N,512), projection (N,2048))."""

    def __init__(self, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else resnet18_encoder(in_channels=1)
        self.head = projection_head()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return features, self.head(features)


def seeded_encoder(seed: int = UNTRAINED_SEED) -> nn.Module:
    """A randomly initialised encoder that is identical in every process (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return resnet18_encoder(in_channels=1)


def spread_input_channels(encoder: nn.Module, channels: int) -> nn.Module:
    """A copy of a 1-channel ``encoder`` that takes ``channels`` input channels (axial levels of one scan): the first
    convolution's weights divided equally over them, everything else as it was. Why this start: on a stack of
    ``channels`` identical slices it gives the 1-channel encoder's output on that slice, so a multi-level model
    starts from the shipped one and training decides what the extra levels add."""
    weight = encoder.conv1.weight.detach()
    if weight.shape[1] != 1:
        raise ValueError(f"expected a 1-channel encoder, got {weight.shape[1]} input channels")
    widened = resnet18_encoder(in_channels=channels)
    state = {name: value.detach().clone() for name, value in encoder.state_dict().items()}
    state["conv1.weight"] = weight.repeat(1, channels, 1, 1) / channels
    widened.load_state_dict(state, strict=True)
    return widened.train(encoder.training)


def save_encoder(encoder: nn.Module, out_dir: Path, metadata: dict[str, Any]) -> Path:
    """Write the encoder as float16 safetensors plus ``model.json``; returns the folder."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        name: (t.detach().to("cpu").half() if t.is_floating_point() else t.detach().to("cpu")).contiguous()
        for name, t in encoder.state_dict().items()
    }
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"model_version": str(metadata.get("model_version", ""))})
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_encoder(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load an encoder saved by :func:`save_encoder` (a folder or the ``.safetensors`` file). Returns float32."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    meta_path = weights.parent / METADATA_FILE
    metadata: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    state = load_file(str(weights))
    encoder = resnet18_encoder(in_channels=int(state["conv1.weight"].shape[1]))  # 1, or L for a multi-level input
    template = encoder.state_dict()
    encoder.load_state_dict({k: v.to(template[k].dtype) for k, v in state.items()}, strict=True)
    metadata.setdefault("model_version", weights.stem)
    return encoder, metadata
