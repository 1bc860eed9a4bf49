"""The worker ledger on a real SQLite file: idempotent hand-ons, the embedded queue's order and recovery, retries
and pending write-backs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.ledger import (
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    WRITEBACK_DONE,
    WRITEBACK_PENDING,
    Ledger,
    backoff_s,
)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'store.sqlite'}")
    yield ledger
    ledger.close()


def enqueue(ledger: Ledger, key: str) -> bool:
    return ledger.enqueue(key, key.split(":")[0], {"series_key": key.split(":")[0]}, {"via": "test"})


def test_same_content_is_one_job(ledger: Ledger) -> None:
    assert enqueue(ledger, "s1:aaa")
    assert not enqueue(ledger, "s1:aaa")
    assert enqueue(ledger, "s1:bbb")  # the series re-sent with different content is new work
    assert ledger.counts()[QUEUED] == 2


def test_done_job_is_not_requeued_but_failed_one_is(ledger: Ledger) -> None:
    enqueue(ledger, "s1:a")
    enqueue(ledger, "s2:b")
    ledger.finish("s1:a", {"verdict": "new_patient"}, "none")
    ledger.fail_attempt("s2:b", "RuntimeError: boom", retry_in_s=None)
    assert ledger.get("s2:b").state == FAILED
    enqueue(ledger, "s1:a")
    enqueue(ledger, "s2:b")
    assert ledger.get("s1:a").state == DONE and ledger.get("s1:a").verdict == {"verdict": "new_patient"}
    assert ledger.get("s2:b").state == QUEUED and ledger.get("s2:b").attempts == 0


def test_claim_order_backoff_and_recovery(ledger: Ledger) -> None:
    for key in ("s1:a", "s2:b", "s3:c"):
        enqueue(ledger, key)
        time.sleep(0.01)
    first = ledger.claim_next()
    assert first.job_key == "s1:a" and first.state == RUNNING and first.attempts == 1
    ledger.fail_attempt("s1:a", "OperationalError: db down", retry_in_s=60)
    assert ledger.claim_next().job_key == "s2:b"  # s1 waits for its back-off
    assert ledger.counts()[RUNNING] == 1
    assert ledger.requeue_interrupted() == 1  # a stop/crash left s2 running: queued again
    assert ledger.claim_next().job_key == "s2:b"
    assert ledger.claim_next().job_key == "s3:c"
    assert ledger.claim_next() is None


def test_redelivery_of_a_done_job_changes_nothing(ledger: Ledger) -> None:
    enqueue(ledger, "s1:a")
    ledger.finish("s1:a", {"verdict": "consistent"}, "none")
    job = ledger.start("s1:a")
    assert job.state == DONE and job.attempts == 0
    assert ledger.start("unknown:key") is None


def test_pending_writeback_waits_for_its_time(ledger: Ledger) -> None:
    enqueue(ledger, "s1:a")
    ledger.finish("s1:a", {"verdict": "new_patient", "series_instance_uid": "1.2.3"}, WRITEBACK_PENDING)
    assert [j.job_key for j in ledger.due_writebacks()] == ["s1:a"]
    ledger.set_writeback("s1:a", WRITEBACK_PENDING, "Orthanc unavailable", retry_in_s=30)
    assert ledger.due_writebacks() == []
    assert ledger.counts()["writeback_pending"] == 1
    ledger.set_writeback("s1:a", WRITEBACK_DONE)
    job = ledger.get("s1:a")
    assert job.writeback_state == WRITEBACK_DONE and job.writeback_attempts == 2
    assert job.verdict["verdict"] == "new_patient"  # the verdict was kept throughout


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_s(n, cap_s=10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


@pytest.mark.slow
def test_a_celery_worker_that_starts_sends_the_pending_write_backs(tmp_path: Path, redis_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A verdict left ``pending`` for Orthanc with no message for it anywhere (its retry was lost with a broker
    restarted empty): a real worker process that starts finds it in the ledger and writes it back."""
    import io
    import os
    import uuid

    from dbp_orthanc import server, writeback

    from deepbrainprint import supervisor as service
    from deepbrainprint.settings import load_settings
    from fingerprint.imaging.dicom_write import noise_series

    if not Path(server.ORTHANC_BINARY).exists():
        pytest.skip("Orthanc is not installed")
    for name in list(os.environ):
        if name.startswith("DBP_") and name != "DBP_SHARED_DATA":
            monkeypatch.delenv(name)
    instance = server.write_config(
        tmp_path / "orthanc", username="radiology", password="pw-pending", http_port=server.free_port(),
        dicom_port=server.free_port(), scp_ae_title="DEEPBRAINPRINT", scp_port=server.free_port(), stable_age_s=600,
    )
    server.start(instance)
    settings = load_settings(home=tmp_path / "home", broker_url=f"{redis_url.rsplit('/', 1)[0]}/13",
                             queue_prefix=f"dbp-pending-{uuid.uuid4().hex[:8]}", orthanc_url=instance.url,
                             orthanc_username="radiology", orthanc_password="pw-pending")
    client = writeback.make_client(instance.url, instance.username, instance.password)
    series = noise_series(2, seed=90)
    for ds in series:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        client.upload(buffer.getvalue())
    uid = str(series[0].SeriesInstanceUID)
    settings.resolved_index_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(settings.resolved_store_url)
    enqueue(ledger, "pending:abc")
    ledger.finish("pending:abc", {"verdict": "new_patient", "series_instance_uid": uid, "model_version": "m"},
                  WRITEBACK_PENDING)
    layout = service.ServiceLayout.for_settings(settings)
    try:
        argv = [*service.CLI, "worker", "--concurrency", "1", "--pool", "solo", "--name", "pending@%h"]
        service.spawn(layout, "worker-1", argv, service.child_environment(settings))
        deadline = time.monotonic() + 120
        while ledger.get("pending:abc").writeback_state != WRITEBACK_DONE and time.monotonic() < deadline:
            time.sleep(0.3)
        log_text = layout.log_file("worker-1").read_text(errors="replace")
        assert ledger.get("pending:abc").writeback_state == WRITEBACK_DONE, log_text[-3000:]
        assert "1 pending write-backs queued again" in log_text
        assert writeback.read_verdict(client, uid)[writeback.METADATA_VERDICT] == "new_patient"
    finally:
        service.down(settings)
        server.stop(instance, timeout_s=0.0)
        ledger.close()
