"""Embedded mode end to end on real parts: the storage SCP over a real association, the in-process worker, the
archive (SQLite store + FAISS), the ledger, and a real Orthanc for the write-back."""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from dbp_orthanc import server, writeback
from reliability_log import record_fault

from deepbrainprint.settings import Settings, load_settings
from dicom_node.scp import StorageNode
from dicom_node.scu import send_instances
from dicom_node.types import CompletedSeries
from fingerprint.imaging.dicom_write import noise_series
from worker.dispatch import submit_completed_series
from worker.embedded import EmbeddedWorker
from worker.ledger import DONE, QUEUED, WRITEBACK_DONE, WRITEBACK_PENDING
from worker.steps import WorkerContext, submit_to_ledger

TIMEOUT_S = 180.0


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("DBP_CONFIG", "DBP_BROKER_URL", "DBP_STORE_URL", "DBP_ORTHANC_URL"):
        monkeypatch.delenv(name, raising=False)
    return load_settings(home=tmp_path / "home", port=0, quiet_time_s=0.3, broker_url="", orthanc_url="",
                         retry_backoff_max_s=1.0)


def wait_for(condition, timeout_s: float = TIMEOUT_S) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def settled(ledger, count: int) -> bool:  # type: ignore[no-untyped-def]
    """``count`` jobs finished one way or the other (so a failure shows at once, not after the timeout)."""
    counts = ledger.counts()
    return counts[DONE] + counts["failed"] >= count


def save_series(datasets: list[pydicom.Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def completed_folder(folder: Path, key: str) -> CompletedSeries:
    now = datetime.now(timezone.utc)
    count = len(list(folder.glob("*.dcm")))
    return CompletedSeries(series_key=key, path=folder, instance_count=count, calling_ae_title="TEST",
                           first_received=now, last_received=now)


def queue_scouts(ctx: WorkerContext, folder: Path, name: str, count: int, slices: int, seed: int) -> list[str]:
    """Hand ``count`` small noise series (each rejected in milliseconds) to the ledger; their job keys, in order."""
    keys = []
    for number in range(count):
        series_folder = folder / f"{name}-{number}"
        save_series(noise_series(slices, seed=seed + number), series_folder)
        keys.append(submit_to_ledger(ctx, completed_folder(series_folder, f"{name}-{number}"), "test")[0])
    return keys


def test_series_sent_to_the_scp_ends_as_a_verdict_in_the_store(settings, write_head_series, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = write_head_series(tmp_path / "colin", "colin", "EMB-PATIENT-1")
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    worker = EmbeddedWorker(settings.worker_config()).start()
    node = StorageNode(settings.node_config(), lambda completed: submit_completed_series(settings.worker_config(), completed)).start()
    try:
        assert send_instances(files, node.port, called_ae=settings.ae_title).all_ok
        assert wait_for(lambda: settled(worker.ctx.ledger, 1)), worker.ctx.ledger.all_jobs()
        job = worker.ctx.ledger.all_jobs()[0]
        assert job.verdict["verdict"] == "new_patient"
        assert job.verdict["series_instance_uid"] == series_uid and job.verdict["recorded"]
        assert node.spool.read_state(job.series_key).state == "done"
    finally:
        node.stop()
        worker.stop()
    from fingerprint.identity.archive import Archive

    with Archive(settings.archive_config()) as archive:
        assert series_uid in archive.store.recorded_series_uids(job.verdict["model_version"])
    assert "EMB-PATIENT-1" not in str(job)  # the ledger holds no clear PatientID


def test_bad_series_is_a_rejected_verdict_not_a_retry(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "scout"
    save_series(noise_series(6, seed=7), folder)  # six 32x32 slices: no 3D brain volume
    ctx = WorkerContext(settings.worker_config())
    key, _ = submit_to_ledger(ctx, completed_folder(folder, "scout-key"), "test")
    with EmbeddedWorker(settings.worker_config()) as worker:
        assert wait_for(lambda: settled(worker.ctx.ledger, 1), 60)
    job = ctx.ledger.get(key)
    assert job.state == DONE, job.last_error
    assert job.attempts == 1 and job.verdict["verdict"] == "rejected"
    assert job.verdict["rejected"] == "too_few_slices"
    ctx.close()


def test_identical_resend_is_processed_once(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "scout"
    save_series(noise_series(6, seed=8), folder)
    ctx = WorkerContext(settings.worker_config())
    first, is_new = submit_to_ledger(ctx, completed_folder(folder, "k"), "test")
    again, is_new_again = submit_to_ledger(ctx, completed_folder(folder, "k"), "test")
    assert first == again and is_new and not is_new_again
    save_series(noise_series(7, seed=8), folder)  # more instances arrived: new content, new job
    third, is_new_third = submit_to_ledger(ctx, completed_folder(folder, "k"), "test")
    assert third != first and is_new_third
    ctx.close()


def test_embedded_restart_loses_nothing(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = WorkerContext(settings.worker_config())
    keys = queue_scouts(ctx, tmp_path, "key", count=4, slices=5, seed=20)
    # A first worker stops after its first verdict: the rest of the queue is left behind ...
    first_worker = EmbeddedWorker(settings.worker_config())
    first_worker.on_verdict = lambda job, verdict: first_worker.request_stop()
    first_worker.start()
    assert wait_for(lambda: settled(ctx.ledger, 1), 60)
    first_worker.stop()
    left = ctx.ledger.counts()[QUEUED]
    assert left >= 1, "the first worker drained the queue; the restart would prove nothing"
    # ... and a series was in hand when the process died (claimed, never finished).
    crashed = ctx.ledger.claim_next()
    assert crashed is not None and ctx.ledger.get(crashed.job_key).state == "running"
    with EmbeddedWorker(settings.worker_config()) as second_worker:
        assert wait_for(lambda: settled(second_worker.ctx.ledger, 4), 60)
    assert {ctx.ledger.get(k).state for k in keys} == {DONE}
    ctx.close()


def test_orthanc_down_during_writeback_keeps_the_verdict_and_retries(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not Path(server.ORTHANC_BINARY).exists():
        pytest.skip("Orthanc is not installed")
    instance = server.write_config(
        tmp_path / "orthanc", username="radiology", password="pw-test", http_port=server.free_port(),
        dicom_port=server.free_port(), scp_ae_title=settings.ae_title, scp_port=server.free_port(), stable_age_s=60,
    )
    server.start(instance)
    datasets = noise_series(6, seed=9)
    client = writeback.make_client(instance.url, instance.username, instance.password)
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        client.upload(buffer.getvalue())
    server.stop(instance)  # Orthanc goes down before the verdict is ready
    settings.orthanc_url, settings.orthanc_username, settings.orthanc_password = instance.url, "radiology", "pw-test"
    folder = tmp_path / "series"
    save_series(datasets, folder)
    ctx = WorkerContext(settings.worker_config())
    key, _ = submit_to_ledger(ctx, completed_folder(folder, "wb-key"), "test")
    try:
        with EmbeddedWorker(settings.worker_config(), poll_interval_s=0.2) as worker:
            assert wait_for(lambda: settled(worker.ctx.ledger, 1), 60)
            assert wait_for(lambda: worker.ctx.ledger.get(key).writeback_attempts >= 1, 30)
            job = worker.ctx.ledger.get(key)
            assert job.writeback_state == WRITEBACK_PENDING and "unavailable" in job.writeback_note
            assert job.verdict["verdict"] == "rejected"  # kept meanwhile
        # The worker stops with the write-back still pending (a restart, a redeploy); Orthanc comes back; the next
        # worker to start finds the pending write-back in the ledger and sends it, with nothing else to prompt it.
        assert ctx.ledger.get(key).writeback_state == WRITEBACK_PENDING
        server.start(instance)
        with EmbeddedWorker(settings.worker_config(), poll_interval_s=0.2) as worker:
            assert wait_for(lambda: worker.ctx.ledger.get(key).writeback_state == WRITEBACK_DONE, 60)
        stored = writeback.read_verdict(client, str(datasets[0].SeriesInstanceUID))
        record_fault("Orthanc down during write-back (embedded)", sent=1, verdicts=0,
                     rejected=int(stored.get(writeback.METADATA_VERDICT) == "rejected"))
        assert stored[writeback.METADATA_VERDICT] == "rejected"
    finally:
        server.stop(instance, timeout_s=0.0)
        ctx.close()


def test_serve_without_broker_starts_an_embedded_worker_on_first_series(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``deepbrainprint serve`` in embedded mode: the node's hand-on alone must get the series processed."""
    node = StorageNode(settings.node_config(), lambda completed: submit_completed_series(settings.worker_config(), completed)).start()
    try:
        assert send_instances(noise_series(6, seed=50), node.port, called_ae=settings.ae_title).all_ok
        ctx = WorkerContext(settings.worker_config())
        assert wait_for(lambda: settled(ctx.ledger, 1), 60)
        assert ctx.ledger.all_jobs()[0].verdict["verdict"] == "rejected"
        ctx.close()
    finally:
        node.stop()
        from worker.embedded import _running_workers

        for worker in list(_running_workers):
            worker.stop()


# --- the ways an accepted series could end with no verdict --------------------------------------------------------------
STORE_REFUSES = """
CREATE FUNCTION dbp_test_refuse() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'the store cannot take writes now' USING ERRCODE = '57P03'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER dbp_test_refuse BEFORE INSERT OR UPDATE ON dbp_series FOR EACH ROW EXECUTE FUNCTION dbp_test_refuse();
"""


def refuse_store_writes(store_url: str) -> Callable[[], None]:
    """Make the real PostgreSQL store refuse every write of a series with a "cannot connect now" error (SQLSTATE
    57P03, raised by the server from a trigger); returns what lets it take writes again."""
    from sqlalchemy import create_engine, text

    from fingerprint.identity.store import Store

    Store(store_url).engine.dispose()  # the archive's tables, so the trigger has one to sit on
    admin = create_engine(store_url)
    with admin.begin() as conn:
        conn.execute(text(STORE_REFUSES))

    def back() -> None:
        with admin.begin() as conn:
            conn.execute(text("DROP TRIGGER dbp_test_refuse ON dbp_series"))
        admin.dispose()

    return back


@pytest.fixture
def pg_settings(tmp_path: Path, postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """``make(**overrides)``: embedded-mode settings on a fresh PostgreSQL schema."""
    for name in ("DBP_CONFIG", "DBP_BROKER_URL", "DBP_STORE_URL", "DBP_ORTHANC_URL"):
        monkeypatch.delenv(name, raising=False)
    return lambda **overrides: load_settings(home=tmp_path / "home", port=0, broker_url="", orthanc_url="",
                                             store_url=postgres_schema_url, **overrides)


def stays_false(condition, window_s: float) -> bool:  # type: ignore[no-untyped-def]
    """True when ``condition`` did not become true within ``window_s`` (polled, so a change shows at once)."""
    return not wait_for(condition, window_s)


def test_store_errors_are_retried_with_backoff_then_given_up_with_a_stated_reason(pg_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL refuses the archive's writes: the worker retries with back-off; a store that keeps refusing ends
    the series ``failed`` after ``task_max_attempts`` with the reason stored and counted, and no further attempt is
    made. Once the store takes writes again, the series handed on again gets its verdict."""
    settings = pg_settings(task_max_attempts=3, retry_backoff_max_s=0.5)
    store_back = refuse_store_writes(settings.store_url)
    ctx = WorkerContext(settings.worker_config())
    keys = queue_scouts(ctx, tmp_path, "refused", count=2, slices=6, seed=60)
    with EmbeddedWorker(settings.worker_config(), poll_interval_s=0.1) as worker:
        # Both series fail their first attempt and wait for their back-off, queued, the reason kept.
        assert wait_for(lambda: all(ctx.ledger.get(k).attempts >= 1 and ctx.ledger.get(k).state == QUEUED
                                    and ctx.ledger.get(k).last_error for k in keys), 60), ctx.ledger.all_jobs()
        assert "OperationalError" in ctx.ledger.get(keys[0]).last_error
        # Three attempts for each, then failed for good: a stated, counted failure, not an endless retry.
        assert wait_for(lambda: ctx.ledger.counts()["failed"] == 2, 60), ctx.ledger.all_jobs()
        assert stays_false(lambda: any(ctx.ledger.get(k).attempts > 3 or ctx.ledger.get(k).state != "failed"
                                       for k in keys), 2.0)
        failed = ctx.ledger.get(keys[0])
        assert failed.attempts == 3 and "OperationalError" in failed.last_error and failed.verdict is None
        # The store takes writes again; the failed series handed on again (a PACS re-send) gets its verdict.
        store_back()
        again, _ = submit_to_ledger(ctx, completed_folder(tmp_path / "refused-0", "refused-0"), "test")
        worker.wake()
        assert again == keys[0]
        assert wait_for(lambda: ctx.ledger.get(keys[0]).state == DONE, 60), ctx.ledger.get(keys[0])
        assert ctx.ledger.get(keys[0]).verdict["verdict"] == "rejected"
    ctx.close()


def test_store_returning_mid_retries_gives_the_verdict(pg_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The store refuses writes for a while and then takes them again: the retries with back-off end in the verdict,
    within the attempts, with nothing handed on again."""
    settings = pg_settings(task_max_attempts=8, retry_backoff_max_s=2.0)
    store_back = refuse_store_writes(settings.store_url)
    ctx = WorkerContext(settings.worker_config())
    (key,) = queue_scouts(ctx, tmp_path, "back", count=1, slices=6, seed=70)
    with EmbeddedWorker(settings.worker_config(), poll_interval_s=0.1):
        assert wait_for(lambda: ctx.ledger.get(key).attempts >= 2, 60), ctx.ledger.get(key)
        job = ctx.ledger.get(key)
        assert job.state in (QUEUED, "running") and "OperationalError" in job.last_error
        store_back()
        assert wait_for(lambda: ctx.ledger.get(key).state == DONE, 60), ctx.ledger.get(key)
    job = ctx.ledger.get(key)
    assert job.verdict["verdict"] == "rejected" and job.attempts >= 3 and job.last_error == ""
    ctx.close()


def test_a_series_in_hand_when_the_ledger_went_away_is_queued_again(pg_settings, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The store refuses the verdict and then also the ledger's record of the failed attempt: the row is left
    ``running`` with nobody on it. Once the store is back, the worker queues it again and records its verdict
    (without that, it would wait for the next restart of the process)."""
    from sqlalchemy import create_engine, text

    settings = pg_settings(task_max_attempts=8, retry_backoff_max_s=0.5)
    store_back = refuse_store_writes(settings.store_url)
    ctx = WorkerContext(settings.worker_config())
    (key,) = queue_scouts(ctx, tmp_path, "orphan", count=1, slices=6, seed=73)
    admin = create_engine(settings.store_url)
    with admin.begin() as conn:  # a failed attempt's record (it carries a reason) is refused too
        conn.execute(text("CREATE TRIGGER dbp_test_refuse_ledger BEFORE UPDATE ON dbp_worker_jobs FOR EACH ROW "
                          "WHEN (NEW.last_error <> '') EXECUTE FUNCTION dbp_test_refuse()"))
    with caplog.at_level("WARNING", logger="worker.embedded"), \
            EmbeddedWorker(settings.worker_config(), poll_interval_s=0.1):
        assert wait_for(lambda: "ledger unavailable" in caplog.text, 60), ctx.ledger.get(key)
        with admin.begin() as conn:
            conn.execute(text("DROP TRIGGER dbp_test_refuse_ledger ON dbp_worker_jobs"))
        store_back()
        assert wait_for(lambda: ctx.ledger.get(key).state == DONE, 30), ctx.ledger.get(key)
    assert ctx.ledger.get(key).verdict["verdict"] == "rejected"
    admin.dispose()
    ctx.close()


def test_a_non_transient_error_fails_once_with_its_reason(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Unusable model weights are not a reason to try again: one attempt, the reason stored, no retry loop."""
    weights = tmp_path / "broken.pt"
    weights.write_bytes(b"not a model")
    settings.model_path = weights
    folder = tmp_path / "scout"
    save_series(noise_series(6, seed=71), folder)
    ctx = WorkerContext(settings.worker_config())
    key, _ = submit_to_ledger(ctx, completed_folder(folder, "broken-model"), "test")
    with EmbeddedWorker(settings.worker_config(), poll_interval_s=0.1):
        assert wait_for(lambda: ctx.ledger.get(key).state == "failed", 60), ctx.ledger.get(key)
        assert stays_false(lambda: ctx.ledger.get(key).attempts > 1 or ctx.ledger.get(key).state != "failed", 2.0)
    job = ctx.ledger.get(key)
    assert job.attempts == 1 and job.last_error and job.verdict is None
    assert ctx.ledger.counts()["failed"] == 1
    ctx.close()


def test_identical_content_sent_again_is_released_without_a_second_job(settings, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The dispatch's "identical content" branch over a real association: the same series sent twice is decided
    once; the second copy's spool generation is released (``done``) without a second job or attempt."""
    datasets = noise_series(6, seed=72)
    node = StorageNode(settings.node_config(),
                       lambda completed: submit_completed_series(settings.worker_config(), completed)).start()
    ctx = WorkerContext(settings.worker_config())
    try:
        assert send_instances(datasets, node.port, called_ae=settings.ae_title).all_ok
        assert wait_for(lambda: settled(ctx.ledger, 1), 60)
        (job,) = ctx.ledger.all_jobs()
        first_generation = node.spool.read_state(job.series_key).generation
        with caplog.at_level("INFO", logger="worker.dispatch"):
            assert send_instances(datasets, node.port, called_ae=settings.ae_title).all_ok
            assert wait_for(lambda: (state := node.spool.read_state(job.series_key)).generation > first_generation
                            and state.state == "done", 60), node.spool.read_state(job.series_key)
        assert "identical content already processed" in caplog.text
        assert [(j.job_key, j.attempts, j.state) for j in ctx.ledger.all_jobs()] == [(job.job_key, 1, DONE)]
    finally:
        node.stop()
        from worker.embedded import _running_workers

        for worker in list(_running_workers):
            worker.stop()
        ctx.close()
