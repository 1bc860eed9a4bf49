"""Embedded mode end to end on real parts: the storage SCP over a real association, the in-process worker, the
archive (SQLite store + FAISS), the ledger, and a real Orthanc for the write-back."""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from dbp_orthanc import server, writeback

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
    keys = []
    for number in range(4):
        folder = tmp_path / f"series-{number}"
        save_series(noise_series(5, seed=20 + number), folder)
        keys.append(submit_to_ledger(ctx, completed_folder(folder, f"key-{number}"), "test")[0])
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
            server.start(instance)  # Orthanc is back: the pending write-back goes through on its own
            assert wait_for(lambda: worker.ctx.ledger.get(key).writeback_state == WRITEBACK_DONE, 60)
        stored = writeback.read_verdict(client, str(datasets[0].SeriesInstanceUID))
        assert stored[writeback.METADATA_VERDICT] == "rejected"
    finally:
        server.stop(instance)
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
