"""The encoder's fast CPU path: the loaded weights exported once to ONNX and run by ONNX Runtime.

Why: at batch 1 PyTorch's eager mode spends much of a slice's time dispatching operators one by one; ONNX Runtime
fuses the graph (convolution + batch norm + ReLU) and runs it with less overhead, in float32, so the fingerprints are
those of the torch encoder up to float rounding. Nothing is shipped besides the safetensors weights: the graph is
exported from the weights actually loaded, at first use, and cached on disk under a key made of the weights' bytes and
the versions that shape the file (torch, the opset), so a new model or a new torch gives a new file and a stale one is
never read. Each session is checked against the torch encoder on a fixed probe before it is used; a session that
disagrees, a missing ``onnxruntime``/``onnx`` or a failed export all leave the caller on the torch path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fingerprint.files import replacing
from fingerprint.types import SLICE_SIZE

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

ONNX_OPSET = 17
#: Largest difference allowed between a fingerprint (unit vector) of ONNX Runtime and of the torch encoder.
FINGERPRINT_TOLERANCE = 1e-4
_PROBE_SEED = 20230227


def cache_dir() -> Path:
    """``$DBP_MODEL_CACHE``, else ``~/.cache/deepbrainprint/onnx``: where exported graphs are kept."""
    return Path(os.environ.get("DBP_MODEL_CACHE", Path.home() / ".cache" / "deepbrainprint" / "onnx"))


def runtime_available() -> bool:
    """True when ONNX Runtime and the exporter's ``onnx`` package are importable."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def weights_key(encoder: "nn.Module") -> str:
    """A digest of the encoder's parameters and buffers and of the torch version and opset: the cache file's name."""
    import torch

    digest = hashlib.sha256(f"torch={torch.__version__};opset={ONNX_OPSET}".encode())
    return hash_state(digest, encoder).hexdigest()[:32]


def hash_state(digest: "hashlib._Hash", encoder: "nn.Module", *, as_float32: bool = False) -> "hashlib._Hash":
    """Feed ``digest`` the encoder's tensors in order, each as its name then its bytes (``as_float32``: converted to
    float32 first, so the digest does not depend on the dtype torch stored them in); returns ``digest``."""
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        tensor = tensor.detach().to("cpu")
        digest.update((tensor.float() if as_float32 else tensor).contiguous().numpy().tobytes())
    return digest


def export_onnx(encoder: "nn.Module", path: Path) -> Path:
    """Export ``encoder`` (eval mode, float32, any batch size) to ``path``, atomically (a temporary file renamed)."""
    import torch

    was_training = encoder.training
    encoder.eval()
    try:
        with replacing(path) as temporary, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
            torch.onnx.export(
                encoder,
                (torch.zeros(1, 1, SLICE_SIZE, SLICE_SIZE),),
                str(temporary),
                input_names=["slices"],
                output_names=["features"],
                dynamic_axes={"slices": {0: "n"}, "features": {0: "n"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    finally:
        encoder.train(was_training)
    return path


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as ``torch.nn.functional.normalize`` does (norms floored at 1e-12)."""
    norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return (features / norms).astype(np.float32, copy=False)


class OnnxEncoder:
    """An ONNX Runtime session of the encoder: ``(N,1,128,128)`` float32 in, ``(N,512)`` float32 features out."""

    def __init__(self, path: Path, num_threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = num_threads or 0  # 0: ONNX Runtime's default (all cores)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {"slices": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def probe_slices() -> np.ndarray:
    """Two fixed slices, the check every new session must pass against the torch encoder."""
    return np.random.default_rng(_PROBE_SEED).random((2, 1, SLICE_SIZE, SLICE_SIZE), dtype=np.float32)


def torch_features(encoder: "nn.Module", batch: np.ndarray) -> np.ndarray:
    """The torch encoder's features of ``batch`` (eval mode, float32, no autograd), for the probe."""
    import torch

    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            return encoder(torch.from_numpy(batch)).float().numpy()
    finally:
        encoder.train(was_training)


def onnx_encoder(encoder: "nn.Module", num_threads: int | None, directory: Path | None = None) -> OnnxEncoder | None:
    """An ONNX Runtime session of ``encoder`` (exported on first use, cached in ``directory``) that agrees with it on
    the probe within :data:`FINGERPRINT_TOLERANCE`; ``None`` (with a log line) wherever that cannot be had."""
    if not runtime_available():
        log.info("onnxruntime or onnx not installed: fingerprints use the torch path")
        return None
    path = (directory or cache_dir()) / f"encoder-{weights_key(encoder)}.onnx"
    try:
        if not path.exists():
            export_onnx(encoder, path)
        session = OnnxEncoder(path, num_threads)
        probe = probe_slices()
        difference = float(np.abs(normalise(session(probe)) - normalise(torch_features(encoder, probe))).max())
    except Exception as error:  # noqa: BLE001 - any failure of the fast path leaves the torch path in place
        log.warning("ONNX Runtime path unavailable (%s): fingerprints use the torch path", type(error).__name__)
        path.unlink(missing_ok=True)  # a damaged cache file is exported afresh by the next process
        return None
    if difference > FINGERPRINT_TOLERANCE:
        log.warning("ONNX Runtime disagrees with torch on the probe (%.2e): using the torch path", difference)
        path.unlink(missing_ok=True)
        return None
    return session
