"""The FAISS index stays consistent with the store: after crashes, torn files, other processes, approximate types.

Real processes, real SQLite files and a real PostgreSQL server; controlled fingerprint vectors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from deepbrainprint.settings import load_settings
from fingerprint.identity.archive import Archive
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.index import (
    AUTO_APPROXIMATE_FACTORY,
    AUTO_SEARCH_PARAMS,
    HNSW_SEARCH_PARAMS,
    FingerprintIndex,
    default_search_params,
    index_file_path,
)
from fingerprint.identity.store import Store

THRESHOLDS = Thresholds("test-model", match=0.8, mismatch=0.6, far=0.001, source="explicit")
REPO = Path(__file__).resolve().parents[1]


class FixedModel:
    model_version = "test-model"


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def open_archive(tmp_path: Path, **overrides) -> Archive:
    settings = load_settings(home=tmp_path, index_dir=tmp_path / "archive", **overrides)
    return Archive(settings.archive_config(), model=FixedModel(), thresholds=THRESHOLDS)


def enroll(archive: Archive, make, vectors: np.ndarray, prefix: str) -> list[int]:
    return [
        archive.decide_and_record(make(v, f"P-{prefix}-{i}", f"{prefix}.{i}"), {})["row_id"]
        for i, v in enumerate(vectors)
    ]


def assert_consistent(archive: Archive) -> None:
    """Every fingerprint in the store is in the index, and each finds itself (among exact duplicates) first."""
    index = archive.index_for()
    with archive.store.reading() as conn:
        stored = list(archive.store.iter_vectors(conn, "test-model"))
    assert index.ntotal == len(stored)
    for row in stored:
        hits = index.search(row.vector, 3)
        assert row.row_id in {h.row_id for h in hits if h.similarity > 0.9999}


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_damaged_index_file_is_rebuilt_from_the_store(tmp_path, synthetic_fingerprint, damage):
    with open_archive(tmp_path) as arch:
        enroll(arch, synthetic_fingerprint, unit_vectors(6), "a")
    path = index_file_path(tmp_path / "archive", "test-model")
    assert path.exists()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"not an index")
    with open_archive(tmp_path) as arch:
        index = arch.index_for()
        assert index.ntotal == 6
        assert_consistent(arch)


def test_index_behind_the_store_catches_up_without_a_rebuild(tmp_path, synthetic_fingerprint):
    with open_archive(tmp_path) as arch:
        enroll(arch, synthetic_fingerprint, unit_vectors(3, seed=1), "a")  # saved on close
    crashed = open_archive(tmp_path)
    enroll(crashed, synthetic_fingerprint, unit_vectors(4, seed=2), "b")  # recorded, index never saved
    crashed.store.close()  # no close(): as if the process died
    with open_archive(tmp_path) as arch:
        index = FingerprintIndex.open(tmp_path / "archive", "test-model")
        assert index.ntotal == 3
        with arch.store.reading() as conn:
            report = index.sync(arch.store, conn, verify_count=True)
        assert report.added == 4 and not report.rebuilt and index.ntotal == 7
        assert_consistent(arch)


def test_index_ahead_of_the_store_is_rebuilt(tmp_path, synthetic_fingerprint):
    """A store restored from an older backup next to a newer index file: the store wins."""
    with open_archive(tmp_path) as arch:
        enroll(arch, synthetic_fingerprint, unit_vectors(2, seed=3), "a")
    backup = (tmp_path / "archive" / "store.sqlite").read_bytes()
    with open_archive(tmp_path) as arch:
        enroll(arch, synthetic_fingerprint, unit_vectors(3, seed=4), "b")
    for suffix in ("-wal", "-shm"):
        (tmp_path / "archive" / f"store.sqlite{suffix}").unlink(missing_ok=True)
    (tmp_path / "archive" / "store.sqlite").write_bytes(backup)
    with open_archive(tmp_path) as arch:
        assert arch.index_for().ntotal == 2
        assert_consistent(arch)


CHILD_ENROLL = textwrap.dedent(
    """
    import sys, numpy as np
    import fingerprint.identity.archive as archive_module
    from fingerprint.identity.archive import Archive
    from fingerprint.identity.calibration import Thresholds
    from deepbrainprint.settings import load_settings
    from fingerprint.types import FingerprintResult, SeriesIdentifiers, SliceResult
    archive_module.SAVE_INDEX_EVERY = 7  # save often, so the kill lands between saves and mid-write
    class M: model_version = "test-model"
    arch = Archive(load_settings().archive_config(), model=M(), thresholds=Thresholds("test-model", 0.8, 0.6, 0.001, "explicit"))
    rng = np.random.default_rng(int(sys.argv[1]))
    for i in range(100000):
        v = rng.standard_normal(512).astype(np.float32)
        ids = SeriesIdentifiers(patient_id=f"P{i}", series_instance_uid=f"kill.{i}", study_instance_uid=f"s.{i}")
        pixels = np.zeros((128, 128), np.float32)
        result = FingerprintResult(v / np.linalg.norm(v), "test-model", SliceResult(pixels, ids))
        arch.decide_and_record(result, {})
        print(i, flush=True)
    """
)


def child_env(tmp_path: Path, store_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "DBP_HOME": str(tmp_path), "DBP_INDEX_DIR": str(tmp_path / "archive")}
    if store_url:
        env["DBP_STORE_URL"] = store_url
    return env


def test_process_killed_mid_enroll_loses_no_fingerprint(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_ENROLL, "7"], env=child_env(tmp_path), stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:  # let it record a few dozen series (several index saves), then kill -9
            if int(line) >= 40:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    with open_archive(tmp_path) as arch:
        with arch.store.reading() as conn:
            recorded = arch.store.count_fingerprinted(conn, "test-model")
        assert recorded >= 41
        assert_consistent(arch)


CHILD_RACE = textwrap.dedent(
    """
    import json, os, sys, time, numpy as np
    from pathlib import Path
    from fingerprint.identity.archive import Archive
    from fingerprint.identity.calibration import Thresholds
    from deepbrainprint.settings import load_settings
    from fingerprint.types import FingerprintResult, SeriesIdentifiers, SliceResult
    class M: model_version = "test-model"
    patient_id, series_uid, noise_seed, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    arch = Archive(load_settings().archive_config(), model=M(), thresholds=Thresholds("test-model", 0.8, 0.6, 0.001, "explicit"))
    arch.index_for()  # open and sync the index before the race: what a long-running worker has
    person = np.random.default_rng(0).standard_normal(512)  # the same new person in both processes
    v = person + 0.3 * np.random.default_rng(noise_seed).standard_normal(512)
    ids = SeriesIdentifiers(patient_id=patient_id, series_instance_uid=series_uid, study_instance_uid=series_uid)
    result = FingerprintResult((v / np.linalg.norm(v)).astype(np.float32), "test-model",
                               SliceResult(np.zeros((128, 128), np.float32), ids))
    (Path(str(go) + "." + series_uid)).touch()  # ready
    while not go.exists():
        time.sleep(0.001)
    print(json.dumps(arch.decide_and_record(result, {})))
    arch.close()
    """
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("same_patient_id", [True, False])
def test_same_new_person_in_two_processes_at_once_is_linked(tmp_path, request, backend, same_patient_id):
    store_url = request.getfixturevalue("postgres_schema_url") if backend == "postgresql" else None
    with open_archive(tmp_path, store_url=store_url) as arch:  # an archive with someone else in it
        arch.decide_and_record(
            request.getfixturevalue("synthetic_fingerprint")(unit_vectors(1, 9)[0], "OTHER", "0.0"), {}
        )
    go = tmp_path / "go"
    ids = ["PAT-NEW", "PAT-NEW" if same_patient_id else "PAT-NEW-2"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_RACE, ids[i], f"race.{i}", str(i + 1), str(go)],
            env=child_env(tmp_path, store_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.race.{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    go.touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    verdicts = sorted(o["verdict"] for o in outputs)
    assert verdicts == sorted(["new_patient", "consistent" if same_patient_id else "possible_duplicate"])
    second = next(o for o in outputs if o["verdict"] != "new_patient")
    first = next(o for o in outputs if o["verdict"] == "new_patient")
    assert second["neighbours"][0]["series_instance_uid"] == first["series_instance_uid"]
    with open_archive(tmp_path, store_url=store_url) as arch:
        assert arch.index_for().ntotal == 3
        assert_consistent(arch)


def test_hnsw_index_handles_updates_by_rebuilding(tmp_path, synthetic_fingerprint):
    vectors = unit_vectors(20, seed=5)
    with open_archive(tmp_path, faiss_factory="HNSW32", faiss_search_params="efSearch=64") as arch:
        row_ids = enroll(arch, synthetic_fingerprint, vectors, "h")
        replaced = arch.decide_and_record(synthetic_fingerprint(vectors[0], "P-h-3", "h.3"), {})  # re-processed
        assert replaced["verdict"] == "possible_duplicate"  # now equal to h.0's vector, filed under P-h-3's ID
        index = arch.index_for()
        assert index.effective_factory == "HNSW32" and index.ntotal == 20
        assert replaced["row_id"] == row_ids[3]
        assert {n.row_id for n in index.search(vectors[0], 2)} == {row_ids[0], row_ids[3]}
        assert_consistent(arch)
    with open_archive(tmp_path, faiss_factory="HNSW32", faiss_search_params="efSearch=64") as arch:
        assert arch.index_for().load_problem == ""  # the saved HNSW index loads as is
        assert_consistent(arch)


def test_trainable_index_starts_exact_and_switches_when_there_is_enough_data(tmp_path, synthetic_fingerprint):
    with open_archive(tmp_path, faiss_factory="IVF4,Flat", faiss_search_params="nprobe=4") as arch:
        enroll(arch, synthetic_fingerprint, unit_vectors(10, seed=6), "i")
        assert arch.index_for().effective_factory == "Flat"  # 10 vectors cannot train 4 lists well
        enroll(arch, synthetic_fingerprint, unit_vectors(150, seed=7), "j")
        index = arch.index_for()
        assert index.effective_factory == "IVF4,Flat" and index.ntotal == 160
        assert_consistent(arch)  # nprobe=4 of 4 lists: exact


def test_factory_change_rebuilds_and_store_is_the_truth(tmp_path, synthetic_fingerprint):
    with open_archive(tmp_path) as arch:
        enroll(arch, synthetic_fingerprint, unit_vectors(5, seed=8), "f")
    with open_archive(tmp_path, faiss_factory="HNSW16") as arch:
        index = arch.index_for()
        assert index.effective_factory == "HNSW16" and index.ntotal == 5
    store = Store(f"sqlite:///{tmp_path}/archive/store.sqlite")
    assert store.model_versions() == {"test-model": 5}
    store.close()


def test_approximate_index_gets_measured_default_search_parameters(tmp_path, synthetic_fingerprint):
    import faiss

    with open_archive(tmp_path, faiss_factory="HNSW32") as arch:
        enroll(arch, synthetic_fingerprint, unit_vectors(3, seed=10), "d")
        index = arch.index_for()
        refine = faiss.downcast_index(index.index.index)  # raw vectors kept for the exact re-rank
        hnsw = faiss.downcast_index(refine.base_index)  # no stored transform for test-model: raw space
        wanted = dict(p.split("=") for p in default_search_params("HNSW32").split(","))
        assert hnsw.hnsw.efSearch == int(wanted["efSearch"]) and refine.k_factor == float(wanted["k_factor_rf"])
    # The auto graph's shallower search is its own: a 32-link graph (the earlier auto index) keeps the deeper one.
    assert default_search_params(AUTO_APPROXIMATE_FACTORY) == AUTO_SEARCH_PARAMS
    assert default_search_params(f"{AUTO_APPROXIMATE_FACTORY},Refine(SQfp16)") == AUTO_SEARCH_PARAMS
    assert default_search_params("HNSW32_SQ8") == default_search_params("HNSW32") == HNSW_SEARCH_PARAMS
