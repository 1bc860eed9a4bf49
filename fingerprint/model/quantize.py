"""The encoder in 8-bit integers: an ONNX Runtime graph quantized once from the weights, shipped beside them.

Why: on two CPU cores the float32 graph is bounded by its arithmetic; integer convolutions do about three times as
much per cycle. The price is a slightly different fingerprint, so int8 is a model version of its own
(``<version>+int8``, :func:`int8_version`) with its own calibrated thresholds: an index never mixes its vectors with
float32 ones, and the "same computation again" check of the archive never compares across the two.

How the graph is made (:func:`quantize_encoder`): the float32 export of :mod:`fingerprint.model.runtime`, then ONNX
Runtime's static quantization in QDQ form, with

* per-channel 8-bit weights and 8-bit activations whose ranges are the min/max seen on real canonical slices of the
  calibration people (never the held-out test people);
* ``reduce_range``: weights use 7 bits. On CPUs without VNNI, ONNX Runtime multiplies unsigned activations by signed
  weights with an instruction that adds two products into 16 bits and saturates; 255 x 64 x 2 fits, 255 x 127 x 2
  does not. With 7-bit weights no sum can saturate, so the integer arithmetic is exact on every x86 CPU and the
  fingerprint does not depend on which one runs it.

Quantization is deterministic (min/max calibration), so the shipped file can be made again from the weights and the
calibration cohort (``deepbrainprint quantize``). A sidecar JSON names the float32 weights it was made from (a digest of
their tensors); :func:`int8_encoder` refuses a graph made from other weights.

Example::

    from fingerprint.model.fingerprinter import load_model
    model = load_model(runtime="int8")            # the shipped graph, checked against the weights it came from
    model.model_version                           # 'dbp-r18-synth-v2+int8'
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fingerprint.files import write_text

if TYPE_CHECKING:
    from torch import nn

    from fingerprint.model.runtime import OnnxEncoder

#: Model-version suffix of fingerprints made by the int8 graph.
INT8_SUFFIX = "+int8"
INT8_FILE = "encoder-int8.onnx"
INT8_MANIFEST = "encoder-int8.json"


def int8_version(model_version: str) -> str:
    """The model version of the int8 graph of ``model_version``'s weights."""
    return model_version if model_version.endswith(INT8_SUFFIX) else model_version + INT8_SUFFIX


def base_version(model_version: str) -> str:
    """The float32 model a version's fingerprints approximate (itself unless it is an int8 version): the int8
    fingerprints live in the same space, so they share the float32 model's search transform."""
    return model_version.removesuffix(INT8_SUFFIX)


def state_digest(encoder: "nn.Module") -> str:
    """SHA-256 of the encoder's tensors (names and float32 bytes), whatever torch wrote them: which weights a graph
    was made from."""
    from fingerprint.model.runtime import hash_state

    return hash_state(hashlib.sha256(), encoder, as_float32=True).hexdigest()


def quantize_encoder(
    encoder: "nn.Module", calibration: np.ndarray, out_dir: Path, description: str = "", model_version: str = ""
) -> dict[str, Any]:
    """Write ``out_dir/encoder-int8.onnx`` and its manifest: ``encoder`` quantized with activation ranges from
    ``calibration`` ((N,128,128) float32 canonical slices). Returns the manifest."""
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fingerprint.model.runtime import OnnxEncoder, export_onnx

    slices = np.asarray(calibration, dtype=np.float32)
    if slices.ndim != 3 or len(slices) == 0:
        raise ValueError(f"calibration must be (N,128,128) slices, got {slices.shape}")

    class _Slices(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"slices": s[None, None]} for s in slices])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as work:
        fp32 = export_onnx(encoder, Path(work) / "fp32.onnx")
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantized = Path(work) / INT8_FILE
        quantize_static(
            str(prepared), str(quantized), _Slices(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        os.replace(quantized, out_dir / INT8_FILE)
    probe = probe_fingerprints(OnnxEncoder(out_dir / INT8_FILE, 1))
    manifest = {
        "file": INT8_FILE,
        "model_version": int8_version(model_version) if model_version else "",
        "weights_sha256": state_digest(encoder),
        "file_sha256": hashlib.sha256((out_dir / INT8_FILE).read_bytes()).hexdigest(),
        "quantization": "ONNX Runtime static, QDQ, per-channel int8 weights (reduce_range: 7 bits), uint8 "
                        "activations, min/max calibration",
        "calibration_slices": int(len(slices)),
        "calibration": description,
        "onnxruntime": ort_version,
        "probe_fingerprints": np.round(probe, 6).tolist(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text(out_dir / INT8_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def probe_fingerprints(session: Any) -> np.ndarray:
    """The graph's fingerprints of the fixed probe slices (:func:`fingerprint.model.runtime.probe_slices`): recorded
    when the graph is made, compared on every machine that loads it."""
    from fingerprint.model.runtime import normalise, probe_slices

    return normalise(session(probe_slices()))


def read_manifest(weights_dir: Path) -> dict[str, Any] | None:
    """The int8 manifest beside the weights in ``weights_dir``, or None when no int8 graph is shipped there."""
    path = Path(weights_dir) / INT8_MANIFEST
    if not path.is_file() or not (Path(weights_dir) / INT8_FILE).is_file():
        return None
    return json.loads(path.read_text())


#: Largest difference allowed between the int8 graph's probe fingerprints here and those recorded when it was made:
#: its integer arithmetic is exact on every x86 CPU (7-bit weights), only the float rescaling between layers may
#: round an activation apart; saturating arithmetic (8-bit weights without VNNI) moved fingerprints by 0.036.
INT8_PROBE_TOLERANCE = 2e-3
#: Lowest cosine allowed between the int8 graph's and the float32 encoder's fingerprints of the probe.
INT8_MIN_COSINE = 0.99


class Int8Unavailable(RuntimeError):
    """The int8 graph cannot be used for these weights here; the message says why."""


def int8_encoder(encoder: "nn.Module", num_threads: int | None, weights_dir: Path) -> OnnxEncoder:
    """The ONNX Runtime session of the int8 graph shipped in ``weights_dir`` (:mod:`fingerprint.model.quantize`),
    after three checks: it was made from ``encoder``'s very weights (their digest), it gives here the probe
    fingerprints it gave where it was made, and those stay close to the float32 encoder's. Raises
    :class:`Int8Unavailable` otherwise: int8 fingerprints have a model version of their own, so there is no silent
    fallback to float32."""
    from fingerprint.model.runtime import OnnxEncoder, normalise, probe_slices, runtime_available, torch_features

    if not runtime_available():
        raise Int8Unavailable("onnxruntime is not installed")
    manifest = read_manifest(weights_dir)
    if manifest is None:
        raise Int8Unavailable(f"no int8 graph ({INT8_FILE}) beside the weights in {weights_dir}")
    if manifest.get("weights_sha256") != state_digest(encoder):
        raise Int8Unavailable(f"{INT8_FILE} in {weights_dir} was made from other weights than those loaded")
    session = OnnxEncoder(Path(weights_dir) / INT8_FILE, num_threads)
    here = probe_fingerprints(session)
    recorded = np.asarray(manifest["probe_fingerprints"], dtype=np.float32)
    drift = float(np.abs(here - recorded).max())
    if drift > INT8_PROBE_TOLERANCE:
        raise Int8Unavailable(f"the int8 graph computes differently on this CPU (probe drift {drift:.1e})")
    cosine = float((here * normalise(torch_features(encoder, probe_slices()))).sum(axis=1).min())
    if cosine < INT8_MIN_COSINE:
        raise Int8Unavailable(f"the int8 graph strays from the float32 weights (probe cosine {cosine:.4f})")
    return session
