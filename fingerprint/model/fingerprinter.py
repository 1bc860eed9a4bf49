"""The library entry points for fingerprints: load the encoder once, embed slices, fingerprint a series.

Why a small wrapper class: the rest of the product (archive, worker, CLI) must not care how the network was trained
or stored. It needs one object with a ``model_version`` (stored beside every vector so that an index never mixes
vectors of two models) and an ``embed`` that turns canonical slices into unit vectors, deterministically, on CPU.

Two ways to run the same float32 network: ONNX Runtime (``runtime="onnx"``, :mod:`fingerprint.model.runtime`: the
graph exported from the loaded weights, checked against torch before use) where it is installed, and the torch
encoder itself (``runtime="torch"``), which is also what ``"auto"`` falls back to. Both give the same fingerprints
up to :data:`fingerprint.model.runtime.FINGERPRINT_TOLERANCE`. A third, ``runtime="int8"``, runs the 8-bit graph
shipped beside the weights (:mod:`fingerprint.model.quantize`): faster, but its fingerprints differ slightly, so they
carry a model version of their own (``<version>+int8``) and have their own thresholds; it never falls back.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from fingerprint.locations import SHIPPED_WEIGHTS_DIR, weights_folder
from fingerprint.types import SLICE_SIZE, FingerprintResult

if TYPE_CHECKING:
    import pydicom
    import torch
    from torch import nn

DEFAULT_BATCH_SIZE = 64
RUNTIMES = ("auto", "onnx", "torch", "int8")

_cache: dict[str, "Fingerprinter"] = {}
_cache_lock = threading.Lock()


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` intra-op threads inside the block (a worker process should not grab every core)."""
    import torch

    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Fingerprinter:
    """A loaded encoder: ``embed`` maps (N,128,128) float32 slices to (N,512) float32 L2-normalised fingerprints."""

    def __init__(
        self,
        encoder: "nn.Module",
        model_version: str,
        metadata: dict[str, Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_threads: int | None = 1,
        device: str = "cpu",
        runtime: str = "torch",
        weights_dir: Path | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if runtime == "int8" and (device != "cpu" or weights_dir is None):
            raise ValueError("runtime='int8' runs on the CPU and needs the weights folder its graph is shipped in")
        self.encoder = encoder.to(device).eval()
        self.weights_dir = weights_dir
        if runtime == "int8":
            from fingerprint.model.quantize import int8_version

            model_version = int8_version(model_version)
        self.model_version = model_version
        self.metadata = dict(metadata or {})
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device = device
        self.runtime = runtime if device == "cpu" else "torch"
        self._lock = threading.Lock()  # one forward pass at a time: BatchNorm buffers and thread settings are shared
        self._sessions: dict[int | None, Any] = {}  # ONNX Runtime sessions by thread count (None: unavailable)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Fingerprints of a stack of canonical slices: (N,128,128) -> (N,512) float32, each row of unit length."""

        stack = np.asarray(pixels, dtype=np.float32)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3 or stack.shape[1:] != (SLICE_SIZE, SLICE_SIZE):
            raise ValueError(f"expected slices of shape (N, {SLICE_SIZE}, {SLICE_SIZE}), got {stack.shape}")
        if not np.isfinite(stack).all():
            raise ValueError("slices contain NaN or infinite values")
        with self._lock:
            session = self._session() if self.runtime != "torch" else None
            if session is not None:
                return _embed_onnx(session, stack, self.batch_size)
            with _torch_threads(self.num_threads):
                return embed_batches(self.encoder, stack, batch_size=self.batch_size, device=self.device)

    @property
    def active_runtime(self) -> str:
        """The path ``embed`` takes now: ``"int8"``, ``"onnx"`` or ``"torch"`` (creates the ONNX session if not yet
        tried)."""
        with self._lock:
            if self.runtime == "int8":
                self._session()
                return "int8"
            return "onnx" if self.runtime != "torch" and self._session() is not None else "torch"

    def _session(self) -> Any:
        """The ONNX Runtime session for the current thread count, made once; None where only torch can run."""
        if self.num_threads not in self._sessions:
            from fingerprint.model.quantize import int8_encoder
            from fingerprint.model.runtime import onnx_encoder

            if self.runtime == "int8":  # raises Int8Unavailable with its reason: no silent change of model version
                self._sessions[self.num_threads] = int8_encoder(self.encoder, self.num_threads, self.weights_dir)
                return self._sessions[self.num_threads]
            session = onnx_encoder(self.encoder, self.num_threads)
            if session is None and self.runtime == "onnx":
                raise RuntimeError("runtime='onnx' was asked for but ONNX Runtime cannot run this encoder")
            self._sessions[self.num_threads] = session
        return self._sessions[self.num_threads]


def _embed_onnx(session: Any, slices: np.ndarray, batch_size: int) -> np.ndarray:
    """:func:`embed_batches` on an ONNX Runtime session: (N,128,128) float32 -> (N,512) unit rows, in batches."""
    from fingerprint.model.encoder import EMBEDDING_DIM
    from fingerprint.model.runtime import normalise

    out = np.empty((len(slices), EMBEDDING_DIM), dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        batch = slices[start : start + batch_size]
        out[start : start + len(batch)] = normalise(session(batch[:, None]))
    return out


def embed_batches(
    encoder: "nn.Module",
    slices: np.ndarray,
    *,
    batch_size: int,
    device: "str | torch.device" = "cpu",
    autocast_dtype: "torch.dtype | None" = None,
) -> np.ndarray:
    """The encoder's forward pass over slices, the one every fingerprint goes through (:meth:`Fingerprinter.embed`
    and the validation during training): (N,128,128) (or (N,L,128,128) for an encoder with L input channels) ->
    (N,512) float32 rows of unit length, in batches, with the
    encoder in eval mode (its mode restored afterwards). Slices may be float16 (converted a batch at a time);
    ``autocast_dtype`` (e.g. bfloat16, training only) runs the network under autocast, else in float32."""
    import torch

    from fingerprint.model.encoder import EMBEDDING_DIM

    device = torch.device(device)
    out = np.empty((len(slices), EMBEDDING_DIM), dtype=np.float32)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode(), autocast:
            for start in range(0, len(slices), batch_size):
                batch = torch.from_numpy(np.asarray(slices[start : start + batch_size], dtype=np.float32))
                batch = batch.unsqueeze(1) if batch.ndim == 3 else batch  # (N,L,128,128): levels as channels
                features = torch.nn.functional.normalize(encoder(batch.to(device)).float(), dim=1)
                out[start : start + len(batch)] = features.cpu().numpy()
    finally:
        encoder.train(was_training)
    return out


def _resolve(path: Path | None) -> Path | None:
    """The weights to load: the given path, else the shipped weights if present, else None (untrained)."""
    if path is not None:
        return Path(path).expanduser().resolve()
    from fingerprint.model.encoder import WEIGHTS_FILE

    return SHIPPED_WEIGHTS_DIR if (SHIPPED_WEIGHTS_DIR / WEIGHTS_FILE).exists() else None


def load_model(path: Path | None = None, runtime: str = "auto") -> Fingerprinter:
    """The encoder at ``path`` (a weights folder or ``.safetensors`` file), cached per path and runtime.

    ``path=None`` means the weights shipped in ``fingerprint/weights/``; when none are shipped, a deterministic
    randomly initialised encoder with model_version ``"untrained-0"`` so the product works end to end regardless.
    ``runtime``: ``"auto"`` (ONNX Runtime where it runs, else torch), ``"onnx"``, ``"torch"`` or ``"int8"`` (the 8-bit
    graph shipped beside the weights; model version ``<version>+int8``; not for the untrained encoder).
    """
    from fingerprint.model.encoder import (
        UNTRAINED_VERSION,
        load_encoder,
        seeded_encoder,
    )

    resolved = _resolve(path)
    key = f"{resolved if resolved is not None else UNTRAINED_VERSION}|{runtime}"
    with _cache_lock:
        if key not in _cache:
            if resolved is None:
                if runtime == "int8":
                    raise ValueError("runtime='int8' needs trained weights with their int8 graph; none are shipped")
                _cache[key] = Fingerprinter(
                    seeded_encoder(), UNTRAINED_VERSION, {"model_version": UNTRAINED_VERSION}, runtime=runtime
                )
            else:
                if not resolved.exists():
                    raise FileNotFoundError(f"model weights not found: {resolved}")
                encoder, metadata = load_encoder(resolved)
                _cache[key] = Fingerprinter(
                    encoder, str(metadata["model_version"]), metadata, runtime=runtime,
                    weights_dir=weights_folder(resolved),
                )
        return _cache[key]


def fingerprint_series(
    source: "Path | Sequence[pydicom.Dataset]",
    method: str = "anatomical",
    model: Fingerprinter | None = None,
) -> FingerprintResult:
    """One series (a folder or its datasets) to its fingerprint. Raises ``SeriesRejected`` unchanged for bad input."""
    from fingerprint.imaging.pipeline import slice_series

    slice_result = slice_series(source, method=method)
    fingerprinter = model if model is not None else load_model()
    vector = fingerprinter.embed(slice_result.pixels[None])[0]
    return FingerprintResult(vector=vector, model_version=fingerprinter.model_version, slice=slice_result)
