"""Fingerprints computed during the quiet time: used at hand-on only when the folder holds exactly the same files,
computed again otherwise (a planted swap must not keep the first series' fingerprint), and used end to end when a
sender releases its association before the quiet time ends."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pydicom
import pytest

from fingerprint.identity import ahead
from fingerprint.identity.ahead import FingerprintsAhead, folder_state

KIND = "test-model|anatomical|"


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "series"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


class _Counter:
    """A stand-in for the fingerprint computation: returns a fresh object per call and counts calls."""

    def __init__(self, during=None) -> None:  # type: ignore[no-untyped-def]
        self.calls = 0
        self.during = during

    def __call__(self):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.during is not None:
            self.during()
        return object()


def test_an_unchanged_folder_gives_its_result_once(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.dcm": b"1", "b.dcm": b"22"})
    cache, compute = FingerprintsAhead(), _Counter()
    assert cache.compute(folder, KIND, compute)
    assert cache.compute(folder, KIND, compute) and compute.calls == 1  # known and unchanged: not computed again
    result = cache.take(folder, KIND)
    assert result is not None and cache.taken == 1
    assert cache.take(folder, KIND) is None  # used once
    assert cache.take(folder, "other-model|anatomical|") is None


@pytest.mark.parametrize("change", ["added", "removed", "replaced under the same name"])
def test_a_folder_changed_after_the_computation_is_computed_again(tmp_path: Path, change: str) -> None:
    folder = _folder(tmp_path, {"a.dcm": b"1", "b.dcm": b"22"})
    cache = FingerprintsAhead()
    assert cache.compute(folder, KIND, _Counter())
    if change == "added":
        (folder / "c.dcm").write_bytes(b"333")
    elif change == "removed":
        (folder / "b.dcm").unlink()
    else:  # the spool writes a temporary file and renames it over the old one: a new inode, same size
        (folder / "b.tmp").write_bytes(b"33")
        (folder / "b.tmp").replace(folder / "b.dcm")
    assert cache.take(folder, KIND) is None


def test_a_folder_that_changes_while_it_is_computed_keeps_nothing(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.dcm": b"1"})
    cache = FingerprintsAhead()
    assert not cache.compute(folder, KIND, _Counter(during=lambda: (folder / "late.dcm").write_bytes(b"9")))
    assert cache.take(folder, KIND) is None


def test_a_failing_computation_keeps_nothing(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.dcm": b"1"})
    cache = FingerprintsAhead()

    def fail():  # type: ignore[no-untyped-def]
        raise ValueError("not a brain")

    assert not cache.compute(folder, KIND, fail)
    assert cache.take(folder, KIND) is None


def test_take_waits_for_a_computation_in_progress(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.dcm": b"1"})
    cache, started = FingerprintsAhead(), threading.Event()
    compute = _Counter(during=lambda: (started.set(), time.sleep(0.3)))
    worker = threading.Thread(target=cache.compute, args=(folder, KIND, compute))
    worker.start()
    assert started.wait(5)
    assert cache.take(folder, KIND) is not None  # waited rather than computing it a second time
    worker.join()
    assert compute.calls == 1


def test_capacity_drops_the_oldest(tmp_path: Path) -> None:
    cache = FingerprintsAhead(capacity=2)
    folders = []
    for number in range(3):
        folder = tmp_path / f"s{number}"
        folder.mkdir()
        (folder / "a.dcm").write_bytes(b"1")
        cache.compute(folder, KIND, _Counter())
        folders.append(folder)
    assert len(cache) == 2
    assert cache.take(folders[0], KIND) is None and cache.take(folders[2], KIND) is not None


def test_folder_state_lists_files_only(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.dcm": b"1"})
    (folder / "sub").mkdir()
    assert [entry[0] for entry in folder_state(folder)] == ["a.dcm"]


# --- on real series -----------------------------------------------------------------------------------------------
def _series_uid(folder: Path) -> str:
    first = sorted(p for p in folder.iterdir() if p.is_file())[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def test_a_series_swapped_after_the_quiet_time_started_gets_its_own_verdict(tmp_path: Path, shared_data: Path) -> None:
    """Planted: the folder fingerprinted ahead holds one series; before the hand-on its files are replaced by another
    series (the same man twelve years earlier, another SeriesInstanceUID). The verdict must be the second series',
    not the first's cached fingerprint."""
    from fingerprint.identity.archive import Archive, ArchiveConfig

    first, second = shared_data / "repeats/decubitus-HFS-t1-2d", shared_data / "t1/siemens-trio-3t-sag"
    folder = tmp_path / "incoming"
    shutil.copytree(first, folder)
    with Archive(ArchiveConfig.at(tmp_path / "index", verification=False)) as archive:
        assert archive.fingerprint_ahead(folder)
        shutil.rmtree(folder)
        shutil.copytree(second, folder)
        taken = ahead.shared.taken
        verdict = archive.process(folder)
        assert ahead.shared.taken == taken  # not taken: computed again
    assert verdict["series_instance_uid"] == _series_uid(second) != _series_uid(first)


def test_an_unchanged_series_uses_the_fingerprint_computed_ahead(tmp_path: Path, shared_data: Path) -> None:
    from fingerprint.identity.archive import Archive, ArchiveConfig

    folder = tmp_path / "incoming"
    shutil.copytree(shared_data / "repeats/decubitus-HFP-t1-2d", folder)
    with Archive(ArchiveConfig.at(tmp_path / "index", verification=False)) as archive:
        assert archive.fingerprint_ahead(folder)
        taken = ahead.shared.taken
        verdict = archive.process(folder)
        assert ahead.shared.taken == taken + 1
        fresh = archive.fingerprint(folder)  # nothing ahead any more: computed now, the same fingerprint
    stored = verdict["neighbours"]
    assert verdict["verdict"] == "new_patient" and stored == []
    assert fresh.slice.identifiers.series_instance_uid == verdict["series_instance_uid"]


def test_a_series_sent_to_the_scp_is_fingerprinted_during_its_quiet_time(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end in embedded mode: the sender releases, the idle worker fingerprints the spooled folder while the
    quiet time runs, and the hand-on takes that result; the verdict is the series' own."""
    from deepbrainprint.settings import load_settings
    from deepbrainprint.wiring import storage_node
    from dicom_node.scu import send_instances
    from worker.embedded import EmbeddedWorker
    from worker.ledger import DONE

    for name in ("DBP_CONFIG", "DBP_BROKER_URL", "DBP_STORE_URL", "DBP_ORTHANC_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(home=tmp_path / "home", port=0, quiet_time_s=6.0, broker_url="", orthanc_url="",
                             verification=False)
    series = shared_data / "repeats/decubitus-HFDR-t1-2d"
    files = sorted(p for p in series.iterdir() if p.is_file())
    worker = EmbeddedWorker(settings.worker_config()).start()
    worker.ctx.archive.model  # noqa: B018 - loaded before the clock starts, as in a running service
    node = storage_node(settings).start()
    taken = ahead.shared.taken
    try:
        assert send_instances(files, node.port, called_ae=settings.ae_title).all_ok
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker.ctx.ledger.counts()[DONE] < 1:
            time.sleep(0.2)
        job = worker.ctx.ledger.all_jobs()[0]
    finally:
        node.stop()
        worker.stop()
    assert job.state == DONE and job.verdict["verdict"] == "new_patient"
    assert job.verdict["series_instance_uid"] == _series_uid(series)
    assert ahead.shared.taken == taken + 1


def _one_mans_repeats(shared_data: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two of the man's decubitus repeats as they are, and a third copied into an incoming folder."""
    first, second, third = (shared_data / f"repeats/decubitus-{p}-t1-2d" for p in ("HFS", "HFP", "HFDR"))
    folder = tmp_path / "incoming"
    shutil.copytree(second, folder)
    return first, third, folder


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per pair verification (the real one runs; only counted)."""
    from fingerprint.identity import verification_stage

    calls: list[int] = []
    real_verify = verification_stage.verify

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(verification_stage, "verify", counted)
    return calls


def test_verifications_done_ahead_are_used_and_later_candidates_are_verified_at_hand_on(
    tmp_path: Path, shared_data: Path, verify_calls: list[int]
) -> None:
    """One man's repeats under one PatientID: the first is recorded; the second is fingerprinted and verified ahead
    against it; a third is recorded before the second's hand-on. The hand-on must verify only the third (the first's
    score is reused) and decide on both: the verdict matches a decision made without anything done ahead."""
    from fingerprint.identity.archive import Archive, ArchiveConfig

    calls = verify_calls
    first, third, folder = _one_mans_repeats(shared_data, tmp_path)
    with Archive(ArchiveConfig.at(tmp_path / "index", verification_threads=1)) as archive:
        archive.process(first)
        calls.clear()
        assert archive.fingerprint_ahead(folder)
        assert len(calls) == 1  # the first scan, verified ahead
        archive.process(third)
        calls.clear()
        verdict = archive.process(folder)
        assert len(calls) == 1  # only the third, recorded after the work ahead
    with Archive(ArchiveConfig.at(tmp_path / "plain", verification_threads=1)) as plain:
        plain.process(first)
        plain.process(third)
        expected = plain.process(folder)
    verified = {e["series_instance_uid"]: e["verification"] for e in verdict["evidence"]["verified"]}
    assert verified == {e["series_instance_uid"]: e["verification"] for e in expected["evidence"]["verified"]}
    assert len(verified) == 2 and verdict["verdict"] == expected["verdict"] == "consistent"


def test_a_candidate_whose_brain_changed_after_the_work_ahead_is_verified_again(
    tmp_path: Path, shared_data: Path, verify_calls: list[int]
) -> None:
    """Planted: after the work ahead verified a candidate, that candidate's stored brain is replaced (its series was
    processed again with other content; here the brain becomes another series'). The score computed ahead is stale
    and must not be used: the hand-on verifies that candidate again, and its score becomes the new brain's."""
    from fingerprint.identity.archive import Archive, ArchiveConfig
    from fingerprint.identity.verification import METHOD_VERSION

    calls = verify_calls
    first, third, folder = _one_mans_repeats(shared_data, tmp_path)
    with Archive(ArchiveConfig.at(tmp_path / "index", verification_threads=1)) as archive:
        archive.process(first)
        archive.process(third)
        calls.clear()
        assert archive.fingerprint_ahead(folder)
        assert len(calls) == 2
        first_uid, third_uid = _series_uid(first), _series_uid(third)
        with archive.store.locked() as conn:
            other = archive.store.brains(conn, [third_uid], METHOD_VERSION)[third_uid]
            archive.store.save_brain(conn, first_uid, METHOD_VERSION, other)
        calls.clear()
        verdict = archive.process(folder)
        assert len(calls) == 1  # the changed candidate only
    scores = {e["series_instance_uid"]: e["verification"] for e in verdict["evidence"]["verified"]}
    assert scores[first_uid] == scores[third_uid]  # the same brain now: the same score


def test_a_series_claimed_before_its_work_ahead_started_is_not_fingerprinted_twice(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy worker: the release notice waits behind queued work, and the series is handed on before the worker
    gets to it. Claiming the series drops the notice, so its folder is not fingerprinted a second time afterwards."""
    from datetime import datetime, timezone

    from deepbrainprint.settings import load_settings
    from dicom_node.types import CompletedSeries
    from worker.embedded import EmbeddedWorker
    from worker.steps import submit_to_ledger

    for name in ("DBP_CONFIG", "DBP_BROKER_URL", "DBP_STORE_URL", "DBP_ORTHANC_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(home=tmp_path / "home", broker_url="", orthanc_url="", verification=False)
    folder = tmp_path / "incoming"
    shutil.copytree(shared_data / "repeats/decubitus-HFS-t1-2d", folder)
    worker = EmbeddedWorker(settings.worker_config())  # not started: its steps are run here, one at a time
    worker.fingerprint_ahead(folder)
    now = datetime.now(timezone.utc)
    count = len(list(folder.iterdir()))
    submit_to_ledger(worker.ctx, CompletedSeries("key", folder, count, "TEST", now, now), "test")
    computed = len(ahead.shared)
    try:
        assert worker.run_once()  # the queued series first: processed, and its notice dropped
        assert not worker.run_once()  # nothing left: no second fingerprint of the same folder
    finally:
        worker.ctx.close()
    assert len(ahead.shared) == computed
