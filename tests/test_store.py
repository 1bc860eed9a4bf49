"""The store and the Archive's decide-and-record step, on a real SQLite file and a real PostgreSQL server.

Fingerprints here are controlled vectors (``synthetic_fingerprint``), so every verdict is exercised exactly; the
real DICOM series go through the same code in ``test_archive_cli.py``.
"""

from __future__ import annotations

import json
import stat
import threading
import uuid

import numpy as np
import pytest
from sqlalchemy import func, select

from deepbrainprint.settings import load_settings
from fingerprint.errors import RejectReason, SeriesRejected
from fingerprint.identity.archive import Archive
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.patient_ids import KEY_FILE_NAME, hash_patient_id
from fingerprint.identity.store import (
    Store,
    series_table,
    slice_from_bytes,
    vector_from_bytes,
)

THRESHOLDS = Thresholds("test-model", match=0.8, mismatch=0.6, far=0.001, source="explicit")


class FixedModel:
    """Only the model version is needed when fingerprints are given directly."""

    model_version = "test-model"


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path):
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_schema_url")
    return load_settings(home=tmp_path, index_dir=tmp_path / "archive", store_url=url, top_k=3)


@pytest.fixture
def archive(settings):
    with Archive(settings.archive_config(), model=FixedModel(), thresholds=THRESHOLDS) as arch:
        yield arch


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def mix(a: np.ndarray, b: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector with cosine ``cos`` to ``a`` (b orthogonalised against a)."""
    b = b - (b @ a) * a
    b /= np.linalg.norm(b)
    return cos * a + np.sqrt(1 - cos**2) * b


def test_every_verdict_recorded_with_hashed_ids(archive, synthetic_fingerprint):
    alice, bob, carol = unit_vectors(3)
    first = archive.decide_and_record(synthetic_fingerprint(alice, "PAT-A", "1.1"), {"calling_ae_title": "MOD1"})
    assert first["verdict"] == "new_patient" and first["recorded"]
    again = archive.decide_and_record(synthetic_fingerprint(mix(alice, bob, 0.9), "PAT-A", "1.2"), {})
    assert again["verdict"] == "consistent" and again["score"] == pytest.approx(0.9, abs=1e-5)
    assert again["neighbours"][0]["series_instance_uid"] == "1.1"
    dup = archive.decide_and_record(synthetic_fingerprint(mix(alice, carol, 0.85), "PAT-A2", "1.3"), {})
    assert dup["verdict"] == "possible_duplicate"
    assert dup["matched_patient_id_hash"] == archive.hash_patient_id("PAT-A")
    swapped = archive.decide_and_record(synthetic_fingerprint(bob, "PAT-A", "1.4"), {})
    assert swapped["verdict"] == "identity_mismatch" and swapped["score"] < 0.6
    assert swapped["matched_patient_id_hash"] is None
    # A scan of Alice (matching PAT-A and PAT-A2) filed under Carol's ID once Carol has a scan: mismatch naming Alice.
    archive.decide_and_record(synthetic_fingerprint(carol, "PAT-C", "1.5"), {})
    wrong = archive.decide_and_record(synthetic_fingerprint(alice, "PAT-C", "1.6"), {})
    assert wrong["verdict"] == "identity_mismatch"
    assert wrong["matched_patient_id_hash"] in {archive.hash_patient_id("PAT-A"), archive.hash_patient_id("PAT-A2")}

    text_out = json.dumps([first, again, dup, swapped, wrong])
    assert "PAT-A" not in text_out and "PAT-C" not in text_out
    with archive.store.reading() as conn:
        rows = conn.execute(select(series_table)).mappings().all()
    assert len(rows) == 6
    assert all(r["patient_id"] is None and r["patient_id_hash"].startswith("h:") for r in rows)
    stored = {r["series_instance_uid"]: r for r in rows}
    assert stored["1.1"]["verdict"] == "new_patient" and stored["1.4"]["verdict"] == "identity_mismatch"
    assert json.loads(stored["1.1"]["source"])["calling_ae_title"] == "MOD1"
    assert np.allclose(vector_from_bytes(stored["1.1"]["vector"]), alice, atol=1e-6)
    assert slice_from_bytes(stored["1.1"]["slice_f16"]).shape == (128, 128)
    assert json.loads(stored["1.2"]["sop_instance_uids"]) == ["1.2.1", "1.2.2"]
    assert json.loads(stored["1.2"]["evidence"])["thresholds"]["match"] == 0.8


def test_two_series_of_one_study_are_consistent_not_duplicates(archive, synthetic_fingerprint):
    v = unit_vectors(2, seed=3)
    archive.decide_and_record(synthetic_fingerprint(v[0], "P1", "2.1", study_uid="study-9"), {})
    second = archive.decide_and_record(synthetic_fingerprint(mix(v[0], v[1], 0.95), "P1", "2.2", "study-9"), {})
    assert second["verdict"] == "consistent"


def test_reprocessing_a_series_updates_its_row_never_duplicates(archive, synthetic_fingerprint):
    v = unit_vectors(2, seed=4)
    first = archive.decide_and_record(synthetic_fingerprint(v[0], "P1", "3.1"), {"folder": "/spool/a"})
    again = archive.decide_and_record(synthetic_fingerprint(v[1], "P1", "3.1"), {"folder": "/spool/a"})
    assert again["row_id"] == first["row_id"]
    assert again["verdict"] == "new_patient"  # the series is not its own earlier scan
    with archive.store.reading() as conn:
        assert conn.execute(select(func.count()).select_from(series_table)).scalar_one() == 1
    index = archive.index_for()
    assert index.ntotal == 1
    assert index.search(v[1], 1)[0].similarity == pytest.approx(1.0, abs=1e-5)  # the index holds the new vector


def test_a_retried_series_keeps_its_recorded_verdict_and_is_not_flagged_against_what_came_after(
    archive, synthetic_fingerprint
):
    """A worker retrying a series whose verdict was committed (but whose job was never marked done) must not decide it
    again: the second PatientID recorded meanwhile would flag the pair twice. Other content is decided again."""
    v = unit_vectors(2, seed=6)
    first = archive.decide_and_record(synthetic_fingerprint(v[0], "P-ONE", "6.1"), {})
    second = archive.decide_and_record(synthetic_fingerprint(mix(v[0], v[1], 0.999), "P-TWO", "6.2"), {})
    assert (first["verdict"], second["verdict"]) == ("new_patient", "possible_duplicate")

    retry = archive.decide_and_record(synthetic_fingerprint(v[0], "P-ONE", "6.1"), {})
    assert retry["verdict"] == "new_patient" and retry["row_id"] == first["row_id"]
    assert retry["evidence"]["already_recorded"] is True
    assert retry["neighbours"] == first["neighbours"] and retry["score"] == first["score"]

    corrected = archive.decide_and_record(synthetic_fingerprint(v[0], "P-TWO", "6.1"), {})  # PatientID corrected
    assert corrected["verdict"] == "consistent" and "already_recorded" not in corrected["evidence"]
    moved = archive.decide_and_record(synthetic_fingerprint(mix(v[0], v[1], 0.98), "P-TWO", "6.1"), {})
    assert "already_recorded" not in moved["evidence"]  # other content: decided again


def test_rejection_recorded_with_reason_and_nothing_searched(archive):
    out = archive.decide_and_record(
        SeriesRejected(RejectReason.NOT_MR, "modality CT"),
        {"series_instance_uid": "9.9", "patient_id": "PAT-X", "orthanc_id": "abc"},
    )
    assert out["verdict"] == "rejected" and out["rejected"] == "not_mr" and out["recorded"]
    assert out["patient_id_hash"] == archive.hash_patient_id("PAT-X")
    with archive.store.reading() as conn:
        row = archive.store.series_row(conn, "9.9", "test-model")
    assert row["status"] == "rejected" and row["reject_reason"] == "not_mr" and row["vector"] is None
    assert "PAT-X" not in row["source"]
    # Without any identifier the source stands in, and the same source maps to the same row.
    a = archive.decide_and_record(SeriesRejected(RejectReason.NO_DICOM, "empty"), {"folder": "/spool/x"})
    b = archive.decide_and_record(SeriesRejected(RejectReason.NO_DICOM, "empty"), {"folder": "/spool/x"})
    assert a["row_id"] == b["row_id"] and a["series_key"].startswith("source:") and a["series_instance_uid"] == ""


def test_query_without_record_changes_nothing(archive, synthetic_fingerprint):
    v = unit_vectors(1, seed=5)[0]
    archive.decide_and_record(synthetic_fingerprint(v, "P1", "4.1"), {})
    out = archive.decide_and_record(synthetic_fingerprint(v, "P2", "4.2"), {}, record=False)
    assert out["verdict"] == "possible_duplicate" and not out["recorded"] and out["row_id"] is None
    with archive.store.reading() as conn:
        assert conn.execute(select(func.count()).select_from(series_table)).scalar_one() == 1


def test_clear_patient_id_only_when_the_site_asks(tmp_path, synthetic_fingerprint):
    settings = load_settings(home=tmp_path, index_dir=tmp_path / "a", keep_clear_patient_id=True)
    with Archive(settings.archive_config(), model=FixedModel(), thresholds=THRESHOLDS) as arch:
        arch.decide_and_record(synthetic_fingerprint(unit_vectors(1)[0], "PAT-7", "5.1"), {})
        with arch.store.reading() as conn:
            assert arch.store.series_row(conn, "5.1", "test-model")["patient_id"] == "PAT-7"


def test_hash_key_created_once_with_private_permissions_or_taken_from_settings(tmp_path):
    settings = load_settings(home=tmp_path, index_dir=tmp_path / "a")
    first = Archive(settings.archive_config(), model=FixedModel())
    key_file = tmp_path / "a" / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = Archive(settings.archive_config(), model=FixedModel())
    assert first.hash_patient_id("X") == second.hash_patient_id("X") != hash_patient_id("X", b"other")
    keyed = Archive(load_settings(home=tmp_path, index_dir=tmp_path / "a", patient_id_hash_key="site-secret").archive_config())
    assert keyed.hash_patient_id("X") == hash_patient_id("X", b"site-secret")
    assert first.hash_patient_id("") == ""
    for arch in (first, second, keyed):
        arch.close()


def test_store_changed_since_sees_updates_in_seq_order(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/s.sqlite")
    base = {"model_version": "m", "status": "fingerprinted", "verdict": "new_patient"}
    vec = unit_vectors(2)
    with store.locked() as conn:
        a, seq_a = store.upsert_series(conn, {**base, "series_instance_uid": "a", "vector": vec[0].tobytes()})
        b, seq_b = store.upsert_series(conn, {**base, "series_instance_uid": "b", "vector": vec[1].tobytes()})
    with store.locked() as conn:
        a2, seq_a2 = store.upsert_series(conn, {**base, "series_instance_uid": "a", "vector": vec[1].tobytes()})
    assert a2 == a and seq_a < seq_b < seq_a2
    with store.reading() as conn:
        changed = list(store.changed_since(conn, "m", seq_b))
    assert [(row_id, seq) for row_id, seq, _ in changed] == [(a, seq_a2)]
    assert np.allclose(changed[0][2], vec[1])
    with pytest.raises(ValueError):
        with store.locked() as conn:
            store.upsert_series(conn, {**base, "series_instance_uid": "c", "not_a_column": 1})
    store.close()


@pytest.mark.parametrize("opener", ["store", "ledger", "both"])
def test_many_processes_opening_a_fresh_postgresql_database_at_once_all_succeed(postgres_url, opener):
    """Workers that start together each create the tables of a fresh database. PostgreSQL answers a CREATE TABLE
    that loses the race with a unique violation in its catalogue (not the "already exists" of a later one); an
    opener that let it through failed its first series and wrote the failure to the job table, which a locked job
    table then held up (the flaky PostgreSQL-restart fault test). Eight threads open at one barrier, repeated on
    fresh schemas, so a race that slips through is caught."""
    from sqlalchemy import create_engine, text

    from worker.ledger import Ledger

    def open_one(barrier: threading.Barrier, url: str) -> None:
        barrier.wait()
        if opener in ("store", "both"):
            Store(url).close()
        if opener in ("ledger", "both"):
            Ledger(url).close()

    base = postgres_url
    admin = create_engine(base)
    try:
        for round_number in range(4):
            schema = f"race_{uuid.uuid4().hex[:10]}"
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = f"{base}?options=-csearch_path%3D{schema}"
            barrier = threading.Barrier(8)
            errors: list[BaseException] = []

            def run(url: str = url, barrier: threading.Barrier = barrier) -> None:
                try:
                    open_one(barrier, url)
                except BaseException as error:  # noqa: BLE001 - collected for the assertion
                    errors.append(error)

            threads = [threading.Thread(target=run) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            with admin.begin() as conn:
                tables = conn.execute(text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                                      {"s": schema}).scalar_one()
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            assert not errors, f"round {round_number}: {[type(e).__name__ + ': ' + str(e)[:200] for e in errors]}"
            assert tables > 0
    finally:
        admin.dispose()
