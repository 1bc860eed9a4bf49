"""The int8 runtime: the shipped 8-bit graph of the shipped weights, its own model version and thresholds, and the
checks that refuse a graph that does not belong to the weights or computes differently on this CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fingerprint.locations import SHIPPED_WEIGHTS_DIR
from fingerprint.model.encoder import load_encoder
from fingerprint.model.fingerprinter import Fingerprinter, load_model
from fingerprint.model.quantize import (
    INT8_FILE,
    INT8_MANIFEST,
    INT8_PROBE_TOLERANCE,
    Int8Unavailable,
    base_version,
    int8_version,
    read_manifest,
)

pytestmark = pytest.mark.skipif(
    read_manifest(SHIPPED_WEIGHTS_DIR) is None, reason="no int8 graph shipped in fingerprint/weights"
)

REAL_SERIES = ["t1/siemens-trio-3t-sag", "repeats/decubitus-HFS-t1-2d", "t1/philips-elition-3t-sag-gz"]


@pytest.fixture(scope="module")
def weights_copy(tmp_path_factory) -> Path:
    """The shipped weights, model card metadata and int8 graph in a folder the tests may spoil."""
    folder = tmp_path_factory.mktemp("weights")
    for name in ("encoder.safetensors", "model.json", INT8_FILE, INT8_MANIFEST):
        shutil.copy(SHIPPED_WEIGHTS_DIR / name, folder / name)
    return folder


def _fingerprinter(folder: Path, runtime: str) -> Fingerprinter:
    encoder, metadata = load_encoder(folder)
    return Fingerprinter(encoder, str(metadata["model_version"]), metadata, num_threads=1, runtime=runtime,
                         weights_dir=folder)


def test_versions_name_the_int8_graph_and_lead_back_to_the_float32_model() -> None:
    assert int8_version("dbp-r18-synth-v2") == "dbp-r18-synth-v2+int8"
    assert int8_version("dbp-r18-synth-v2+int8") == "dbp-r18-synth-v2+int8"
    assert base_version("dbp-r18-synth-v2+int8") == "dbp-r18-synth-v2"
    assert base_version("dbp-r18-synth-v2") == "dbp-r18-synth-v2"


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


@pytest.fixture(scope="module")
def int8_model() -> Fingerprinter:
    """The shipped int8 runtime. The graph was made on a CPU with VNNI; on one without, ONNX Runtime's other int8
    kernels may round the rescaling between layers apart, and then the runtime must refuse (tested here) rather than
    compute other fingerprints: such a CPU skips the tests that need int8 to run, saying so."""
    model = load_model(runtime="int8")
    try:
        assert model.active_runtime == "int8"
    except Int8Unavailable as refusal:
        if "computes differently" in str(refusal) and not _cpu_flags() & {"avx512_vnni", "avx_vnni"}:
            pytest.skip(f"int8 refused on this CPU without VNNI, as designed: {refusal}")
        raise
    return model


def test_int8_fingerprints_of_real_series_stay_close_to_float32_but_carry_their_own_version(
    shared_data: Path, real_slice, int8_model: Fingerprinter
) -> None:
    int8 = int8_model
    fp32 = load_model(runtime="onnx")
    assert int8.model_version == fp32.model_version + "+int8"
    assert int8.active_runtime == "int8"
    slices = np.stack([real_slice(shared_data / s).pixels for s in REAL_SERIES if (shared_data / s).is_dir()])
    assert len(slices) >= 2
    a, b = int8.embed(slices), fp32.embed(slices)
    cosine = (a * b).sum(axis=1)
    assert cosine.min() > 0.999, cosine  # measured 0.9995-0.9997 on held-out real heads (model card)
    assert cosine.max() < 1 - 1e-5  # not the float32 computation: why it is a model version of its own
    np.testing.assert_array_equal(int8.embed(slices), a)  # deterministic run to run


def test_the_int8_version_has_calibrated_thresholds_and_shares_the_float32_search_transform() -> None:
    from fingerprint.identity.calibration import resolve_thresholds
    from fingerprint.identity.whitening import resolve_search_transform

    version = int8_version(load_model().model_version)
    thresholds = resolve_thresholds(version)
    assert thresholds.source == "calibrated" and thresholds.model_version == version
    assert thresholds.mismatch < thresholds.match < 1.0
    transform = resolve_search_transform(version)
    assert transform is not None and transform.model_version == base_version(version)


def test_a_graph_made_from_other_weights_is_refused(weights_copy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    shutil.copytree(weights_copy, folder)
    manifest = json.loads((folder / INT8_MANIFEST).read_text())
    manifest["weights_sha256"] = "0" * 64
    (folder / INT8_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Int8Unavailable, match="other weights"):
        _fingerprinter(folder, "int8").embed(np.zeros((1, 128, 128), np.float32))


def test_a_graph_that_computes_differently_here_is_refused_at_the_probe_tolerance(
    weights_copy: Path, tmp_path: Path, int8_model: Fingerprinter
) -> None:
    recorded = np.asarray(json.loads((weights_copy / INT8_MANIFEST).read_text())["probe_fingerprints"])
    for shift, accepted in ((INT8_PROBE_TOLERANCE * 0.5, True), (INT8_PROBE_TOLERANCE * 2, False)):
        folder = tmp_path / f"shift-{shift}"
        shutil.copytree(weights_copy, folder)
        manifest = json.loads((folder / INT8_MANIFEST).read_text())
        moved = recorded.copy()
        moved[0, 0] += shift
        manifest["probe_fingerprints"] = moved.tolist()
        (folder / INT8_MANIFEST).write_text(json.dumps(manifest))
        model = _fingerprinter(folder, "int8")
        if accepted:
            assert model.active_runtime == "int8"
        else:
            with pytest.raises(Int8Unavailable, match="computes differently"):
                model.embed(np.zeros((1, 128, 128), np.float32))


def test_without_a_graph_int8_is_refused_not_silently_float32(weights_copy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("encoder.safetensors", "model.json"):
        shutil.copy(weights_copy / name, folder / name)
    with pytest.raises(Int8Unavailable, match="no int8 graph"):
        _fingerprinter(folder, "int8").embed(np.zeros((1, 128, 128), np.float32))
    with pytest.raises(ValueError, match="weights folder"):
        Fingerprinter(load_encoder(folder)[0], "v", runtime="int8")


def test_an_archive_set_to_int8_decides_with_the_int8_thresholds(
    tmp_path: Path, shared_data: Path, int8_model: Fingerprinter
) -> None:
    from fingerprint.identity.archive import Archive, ArchiveConfig

    first, second = shared_data / "repeats/decubitus-HFS-t1-2d", shared_data / "repeats/decubitus-HFP-t1-2d"
    with Archive(ArchiveConfig.at(tmp_path / "index", model_runtime="int8", verification=False)) as archive:
        assert archive.model_version.endswith("+int8")
        archive.process(first)
        verdict = archive.process(second)  # the same man, the same PatientID, a later position
    thresholds = verdict["evidence"]["thresholds"]
    assert thresholds["model_version"] == archive.model_version and thresholds["source"] == "calibrated"
    assert verdict["verdict"] == "consistent", verdict["verdict"]


def test_fingerprint_only_calibration_needs_real_heads(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepbrainprint.cli.app import app

    (tmp_path / "cohort.csv").write_text("scan_id,subject_id\n")
    result = CliRunner().invoke(app, ["calibrate", "--cohort", str(tmp_path), "--fingerprint-only",
                                      "--index", str(tmp_path / "index")])
    assert result.exit_code == 2
    assert "--fingerprint-only goes with --real-heads" in result.output


def test_quantizing_the_same_weights_on_the_same_slices_gives_the_same_graph(tmp_path: Path) -> None:
    """The shipped graph can be made again (`deepbrainprint quantize`): min/max calibration and the quantizer are
    deterministic, so the same weights and slices give the same bytes."""
    from fingerprint.model.quantize import quantize_encoder

    encoder, metadata = load_encoder(SHIPPED_WEIGHTS_DIR)
    slices = np.random.default_rng(3).random((6, 128, 128), dtype=np.float32)
    made = [quantize_encoder(encoder, slices, tmp_path / name, "test", str(metadata["model_version"]))
            for name in ("a", "b")]
    assert made[0]["file_sha256"] == made[1]["file_sha256"]
    assert (tmp_path / "a" / INT8_FILE).read_bytes() == (tmp_path / "b" / INT8_FILE).read_bytes()
    assert made[0]["weights_sha256"] == read_manifest(SHIPPED_WEIGHTS_DIR)["weights_sha256"]
