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


# --- the ONNX Runtime path (issue 16) --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A private cache folder for exported graphs (``DBP_MODEL_CACHE``), so each run exports afresh."""
    import os

    folder = tmp_path_factory.mktemp("onnx-cache")
    previous = os.environ.get("DBP_MODEL_CACHE")
    os.environ["DBP_MODEL_CACHE"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["DBP_MODEL_CACHE"]
    else:
        os.environ["DBP_MODEL_CACHE"] = previous


def test_onnx_runtime_gives_the_torch_fingerprints_within_the_stated_tolerance(onnx_cache) -> None:
    """The shipped fast path against fp32 torch on slices with anatomy-like structure and on noise, batch 1 and 5,
    1 and 2 threads; the graph is exported once into the cache and read back from there by a second model."""
    from fingerprint.model.runtime import FINGERPRINT_TOLERANCE

    encoder = seeded_encoder()
    fast = api.Fingerprinter(encoder, UNTRAINED_VERSION, batch_size=4, runtime="onnx")
    slow = api.Fingerprinter(encoder, UNTRAINED_VERSION, batch_size=4, runtime="torch")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
    blobs = np.stack([np.exp(-((xx - c) ** 2 + yy**2) / 0.2) * 2 + 0.05 * rng.random((128, 128)) for c in (-0.3, 0.3)])
    pixels = np.concatenate([_slices(3, seed=4), blobs.astype(np.float32)])
    assert fast.active_runtime == "onnx" and slow.active_runtime == "torch"
    for threads in (1, 2):
        fast.num_threads = slow.num_threads = threads
        a, b = fast.embed(pixels), slow.embed(pixels)
        assert a.dtype == np.float32 and a.shape == (5, 512)
        assert np.abs(a - b).max() <= FINGERPRINT_TOLERANCE
        assert np.abs(fast.embed(pixels[3])[0] - b[3]).max() <= FINGERPRINT_TOLERANCE
    assert len(list(onnx_cache.glob("encoder-*.onnx"))) == 1
    again = api.Fingerprinter(seeded_encoder(), UNTRAINED_VERSION, runtime="onnx")
    assert np.abs(again.embed(pixels) - b).max() <= FINGERPRINT_TOLERANCE
    assert len(list(onnx_cache.glob("encoder-*.onnx"))) == 1  # same weights, same file


def test_a_cached_graph_of_other_weights_is_caught_and_torch_is_used(onnx_cache) -> None:
    """A cache file that holds another encoder's graph (planted under this encoder's name) disagrees on the probe:
    the fast path refuses it, deletes it, and the fingerprints come from torch."""
    from fingerprint.model.runtime import export_onnx, onnx_encoder, weights_key

    mine, other = seeded_encoder(seed=11), seeded_encoder(seed=12)
    assert weights_key(mine) != weights_key(other)
    planted = onnx_cache / f"encoder-{weights_key(mine)}.onnx"
    export_onnx(other, planted)
    assert onnx_encoder(mine, 1, onnx_cache) is None
    assert not planted.exists()
    model = api.Fingerprinter(mine, "mine", runtime="auto")
    export_onnx(other, planted)
    pixels = _slices(2, seed=6)
    expected = api.Fingerprinter(mine, "mine", runtime="torch").embed(pixels)
    assert model.active_runtime == "torch"
    np.testing.assert_array_equal(model.embed(pixels), expected)
    export_onnx(other, planted)  # planted again: a model that insists on ONNX Runtime says so instead of using it
    with pytest.raises(RuntimeError, match="onnx"):
        api.Fingerprinter(mine, "mine", runtime="onnx").embed(pixels)
    with pytest.raises(ValueError, match="runtime"):
        api.Fingerprinter(mine, "mine", runtime="tensorrt")


def test_load_model_uses_onnx_runtime_by_default(onnx_cache) -> None:
    model = api.load_model()
    assert model.runtime == "auto" and model.active_runtime == "onnx"
    assert api.load_model(runtime="torch").active_runtime == "torch"
