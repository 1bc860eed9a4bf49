"""The encoder wrapper: deterministic untrained model, unit-length embeddings, float16 weight files round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fingerprint.model import fingerprinter as api
from fingerprint.model.encoder import (
    UNTRAINED_VERSION,
    load_encoder,
    save_encoder,
    seeded_encoder,
)

torch.set_num_threads(1)


def _slices(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((count, 128, 128), dtype=np.float32)


def test_untrained_encoder_is_identical_across_builds_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = seeded_encoder()
    after = torch.rand(1)
    b = seeded_encoder()
    assert torch.equal(after, expected_next)
    for (name, ta), (_, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(ta, tb), name


def test_embed_returns_unit_float32_rows_and_is_batch_independent(tmp_path) -> None:
    model = api.Fingerprinter(seeded_encoder(), UNTRAINED_VERSION, batch_size=2)
    pixels = _slices(3)
    vectors = model.embed(pixels)
    assert vectors.shape == (3, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    single = model.embed(pixels[1])
    np.testing.assert_allclose(single[0], vectors[1], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_embed_refuses_wrong_shapes_and_nan() -> None:
    model = api.Fingerprinter(seeded_encoder(), UNTRAINED_VERSION)
    with pytest.raises(ValueError, match="shape"):
        model.embed(np.zeros((1, 64, 64), np.float32))
    bad = _slices(1)
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.embed(bad)


def test_float16_weights_round_trip_keeps_fingerprints(tmp_path) -> None:
    encoder = seeded_encoder(seed=7)
    save_encoder(encoder, tmp_path / "w", {"model_version": "test-7"})
    assert json.loads((tmp_path / "w" / "model.json").read_text())["model_version"] == "test-7"
    loaded, meta = load_encoder(tmp_path / "w")
    assert meta["model_version"] == "test-7"
    pixels = _slices(4, seed=1)
    original = api.Fingerprinter(encoder, "a").embed(pixels)
    reloaded = api.Fingerprinter(loaded, "b").embed(pixels)
    cosine = np.sum(original * reloaded, axis=1)
    assert cosine.min() > 0.999


def test_load_model_caches_per_path(tmp_path) -> None:
    save_encoder(seeded_encoder(seed=3), tmp_path, {"model_version": "test-3"})
    first = api.load_model(tmp_path)
    assert first.model_version == "test-3"
    assert api.load_model(tmp_path) is first
    with pytest.raises(FileNotFoundError):
        api.load_model(tmp_path / "missing")


def test_default_model_is_shipped_weights_or_untrained() -> None:
    model = api.load_model()
    shipped = api.SHIPPED_WEIGHTS_DIR / "model.json"
    if shipped.exists():
        assert model.model_version == json.loads(shipped.read_text())["model_version"]
        assert model.model_version != UNTRAINED_VERSION
    else:
        assert model.model_version == UNTRAINED_VERSION


@pytest.mark.slow
def test_every_real_repeat_retrieves_its_own_scans_first(shared_data, real_slice) -> None:
    """Issue 3's real target: each of the decubitus man's four scans, queried against all nine real series (his four
    and the five people of ``t1/``), ranks his other three scans above everyone else.

    Measured history: 0 of 4 queries with the zero-filled cut hemisphere, 1 of 4 with the mirror fill (the Siemens
    Trio man, 0.988, outranked the left-side series, 0.986-0.988), 4 of 4 once the outer voxel layer of a series (a
    bright edge slice of the 2D stack at the seam of the fill) is no longer sampled (left side 0.990-0.992). With
    ``dbp-r18-synth-v2``: 4 of 4, lowest own scan 0.9897, then his own 2010 Trio series at 0.9853 (the same man under
    another PatientID, not in this query's own group; v1: 0.9899 and 0.9884)."""
    model = api.load_model()
    if model.model_version.startswith("untrained"):
        pytest.skip("no shipped weights: identity cannot be asked of an untrained encoder")
    repeats = sorted((shared_data / "repeats").iterdir())
    people = sorted((shared_data / "t1").iterdir())
    folders = [*repeats, *people]
    vectors = model.embed(np.stack([real_slice(folder).pixels for folder in folders]))  # = fingerprint_series
    similarity = vectors @ vectors.T
    own = len(repeats)
    for query in range(own):
        others = [i for i in range(len(vectors)) if i != query]
        ranked = sorted(others, key=lambda i: -similarity[query, i])
        scores = {folders[i].name: round(float(similarity[query, i]), 4) for i in ranked}
        assert set(ranked[: own - 1]) == set(range(own)) - {query}, (repeats[query].name, scores)
