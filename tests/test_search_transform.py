"""Approximate search in the model's transformed (PCA) space finds the candidates; the scores stay the exact raw ones.

Fingerprints here sit in a narrow cone like the model's (different people ~0.96 cosine, visits of one person ~0.995),
the search transform is fitted on other people of the same distribution and stored as a model folder stores it, and
the archive is real (SQLite store, FAISS index files).
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

import fingerprint.identity.index as index_module
from deepbrainprint.settings import load_settings
from fingerprint.identity.archive import Archive
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.index import AUTO, FingerprintIndex, planned_factory
from fingerprint.identity.whitening import (
    fit_search_transform,
    load_search_transform,
    save_search_transform,
    transform_file_names,
)

MODEL = "test-model"
THRESHOLDS = Thresholds(MODEL, match=0.99, mismatch=0.97, far=0.001, source="explicit")


class FixedModel:
    model_version = MODEL


def narrow_cone(people: int, visits: int, seed: int) -> np.ndarray:
    """Unit fingerprints of ``people`` x ``visits`` around one shared direction, person offsets on a decaying
    spectrum: different people ~0.96 cosine, visits of one person ~0.995."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(0).standard_normal(512)  # the same cone for every seed
    scale = 1 / np.sqrt(np.arange(1, 513))
    centres = direction / np.linalg.norm(direction) + 0.2 * rng.standard_normal((people, 512)) * scale / np.sqrt(
        np.sum(scale**2)
    )
    x = np.repeat(centres, visits, axis=0) + 0.07 / np.sqrt(512) * rng.standard_normal((people * visits, 512))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def model_dir(tmp_path):
    """A model folder holding the search transform of ``test-model``, fitted on people the tests never enroll."""
    folder = tmp_path / "model"
    save_search_transform(fit_search_transform(narrow_cone(300, 2, seed=1), MODEL, 32, source="test"), folder)
    return folder


def open_archive(tmp_path, model_dir, factory: str) -> Archive:
    settings = load_settings(
        home=tmp_path, index_dir=tmp_path / "archive", model_path=model_dir, faiss_factory=factory, verification=False
    )
    return Archive(settings.archive_config(), model=FixedModel(), thresholds=THRESHOLDS)


def test_the_data_is_a_narrow_cone():
    x = narrow_cone(50, 2, seed=3)
    sims = x @ x.T
    same, different = np.diag(sims[0::2, 1::2]), sims[0::2, 1::2][~np.eye(50, dtype=bool)]
    assert 0.94 < np.median(different) < 0.98 and np.median(same) > 0.99


def test_planted_near_duplicate_found_in_pca_space_with_its_exact_raw_similarity(
    tmp_path, model_dir, synthetic_fingerprint, monkeypatch
):
    """``auto``: exact up to AUTO_EXACT_UP_TO (here 120) fingerprints, HNSW over the PCA space from the next one on;
    the planted near-duplicate is the first hit and its similarity is the exact raw one, not the PCA space's."""
    monkeypatch.setattr(index_module, "AUTO_EXACT_UP_TO", 120)
    stored = narrow_cone(60, 2, seed=2)
    query = stored[7] + 0.01 / np.sqrt(512) * np.random.default_rng(4).standard_normal(512).astype(np.float32)
    query /= np.linalg.norm(query)
    with open_archive(tmp_path, model_dir, AUTO) as arch:
        rows = [
            arch.decide_and_record(synthetic_fingerprint(v, f"P{i // 2}", f"s.{i}"), {})["row_id"]
            for i, v in enumerate(stored)
        ]
        assert arch.index_for().effective_factory == "Flat"  # exactly at the limit: still exact
        arch.decide_and_record(synthetic_fingerprint(narrow_cone(1, 1, seed=5)[0], "P-new", "s.new"), {})
        index = arch.index_for()
        assert index.effective_factory == index_module.AUTO_APPROXIMATE_FACTORY  # one more: approximate
        assert index.transform is not None and index.transform.d_out == 32
        hits = index.search(query, 10)
    exact = faiss.IndexFlatIP(512)
    exact.add(stored)
    exact_sims, exact_ids = exact.search(query.reshape(1, -1), 10)
    assert hits[0].row_id == rows[7] and exact_ids[0][0] == 7
    assert hits[0].similarity == exact_sims[0][0]  # bit for bit what exact search answers
    assert abs(hits[0].similarity - float(stored[7] @ query)) < 1e-6
    by_row = {row: i for i, row in enumerate(rows)}
    for hit in hits:
        assert abs(hit.similarity - float(stored[by_row[hit.row_id]] @ query)) < 1e-6
    base = faiss.downcast_index(index.index.index).base_index  # the candidates' search, before the re-rank
    base_scores, _ = base.search(query.reshape(1, -1), 1)
    assert abs(float(base_scores[0][0]) - hits[0].similarity) > 0.5  # a PCA-space L2 distance, not a similarity


def test_planned_factory_boundaries(monkeypatch):
    monkeypatch.setattr(index_module, "AUTO_EXACT_UP_TO", 1000)
    assert planned_factory(AUTO, 1000) == "Flat"
    assert planned_factory(AUTO, 1001) == index_module.AUTO_APPROXIMATE_FACTORY
    assert planned_factory("Flat", 10**7) == "Flat"
    assert planned_factory("IVF4,Flat", 4 * 39 - 1) == "Flat"
    assert planned_factory("IVF4,Flat", 4 * 39) == "IVF4,Flat"


def test_transform_file_round_trip_and_refusals(tmp_path, model_dir):
    transform = load_search_transform(model_dir, MODEL)
    x = narrow_cone(5, 1, seed=6)
    again = load_search_transform(model_dir, MODEL)
    assert np.array_equal(transform.apply(x), again.apply(x))
    assert load_search_transform(model_dir, "another-model") is None
    name, sidecar = transform_file_names(MODEL)
    meta = json.loads((model_dir / sidecar).read_text())
    assert meta["fitted_on"] == "test" and meta["d_out"] == 32 and meta["eigen_power"] == 0.0
    data = bytearray((model_dir / name).read_bytes())
    data[-5] ^= 0xFF
    (model_dir / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_search_transform(model_dir, MODEL)
    index = FingerprintIndex.open(tmp_path / "archive", MODEL, "HNSW16", model_dir=model_dir)
    assert index.transform is None and "checksum" in index.transform_problem  # raw space, stated


def test_index_built_with_another_transform_is_rebuilt(tmp_path, model_dir, synthetic_fingerprint):
    stored = narrow_cone(10, 2, seed=7)
    with open_archive(tmp_path, model_dir, "HNSW16") as arch:
        for i, v in enumerate(stored):
            arch.decide_and_record(synthetic_fingerprint(v, f"P{i // 2}", f"t.{i}"), {})
        assert arch.index_for().transform is not None
    save_search_transform(fit_search_transform(narrow_cone(300, 2, seed=8), MODEL, 16, source="refit"), model_dir)
    reopened = FingerprintIndex.open(tmp_path / "archive", MODEL, "HNSW16", model_dir=model_dir)
    assert reopened.load_problem == "index file built with another search transform"
    with open_archive(tmp_path, model_dir, "HNSW16") as arch:
        index = arch.index_for()
        assert index.ntotal == 20 and index.transform.d_out == 16
        assert index.search(stored[3], 1)[0].similarity == pytest.approx(1.0, abs=1e-6)
