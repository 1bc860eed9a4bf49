"""The Celery tasks at the function level, on real parts: the ledger on the real PostgreSQL server, an Orthanc URL
nobody answers, the task code of ``worker.tasks`` with the request a worker would give it (no broker needed: a
retry is asked of Celery by raising ``celery.exceptions.Retry``, which carries the countdown)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from celery.exceptions import Retry
from dbp_orthanc import server
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from deepbrainprint.settings import load_settings
from worker import tasks
from worker.ledger import WRITEBACK_PENDING
from worker.steps import WorkerContext

PLANTED_NAME = "DOE^JANE"  # in the server's error message: it must not reach the log

#: The ledger's table swapped for a view of it that the server refuses to read once a row's write-back has been
#: tried (SQLSTATE 57P03, "cannot connect now", raised by the server): the worker's first read works, the read after
#: a failed write-back attempt fails, as with a database that goes away between the two.
LEDGER_STOPS_READING = f"""
ALTER TABLE dbp_worker_jobs RENAME TO dbp_worker_jobs_kept;
CREATE FUNCTION dbp_test_refuse_read(attempts integer) RETURNS boolean AS $$
BEGIN
  IF attempts > 0 THEN
    RAISE EXCEPTION 'the ledger cannot be read now (row of {PLANTED_NAME})' USING ERRCODE = '57P03';
  END IF;
  RETURN true;
END $$ LANGUAGE plpgsql;
CREATE VIEW dbp_worker_jobs AS SELECT * FROM dbp_worker_jobs_kept WHERE dbp_test_refuse_read(writeback_attempts);
"""
LEDGER_READS_AGAIN = """
DROP VIEW dbp_worker_jobs;
DROP FUNCTION dbp_test_refuse_read(integer);
ALTER TABLE dbp_worker_jobs_kept RENAME TO dbp_worker_jobs;
"""


def run_writeback_task(job_key: str) -> Retry:
    """Run the write-back task's code as a worker does (a request with an id, not called directly); the Retry it
    asks Celery for."""
    task = tasks.writeback_task
    task.push_request(id="test-writeback", args=[job_key], kwargs={}, retries=0, is_eager=True,
                      called_directly=False)
    try:
        with pytest.raises(Retry) as asked:
            task.run(job_key)
    finally:
        task.pop_request()
    return asked.value


def test_writeback_retries_at_the_cap_when_the_ledger_cannot_be_read(tmp_path: Path, postgres_schema_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Orthanc is down, and the ledger read that sizes the back-off fails too: the task still asks Celery for a
    retry, at the back-off's cap (the attempt count is unknown), and logs the error's class, not its text. The
    next delivery, whose own first read fails, does the same; the verdict stays pending in the ledger."""
    for name in ("DBP_CONFIG", "DBP_BROKER_URL", "DBP_STORE_URL", "DBP_ORTHANC_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(home=tmp_path / "home", broker_url="", store_url=postgres_schema_url,
                             orthanc_url=f"http://127.0.0.1:{server.free_port()}", retry_backoff_max_s=30.0)
    ctx = WorkerContext(settings.worker_config())
    monkeypatch.setattr(tasks, "_ctx", ctx)  # the worker process's context, as ``deepbrainprint worker`` makes it
    key = "s1:content"
    ctx.ledger.enqueue(key, "s1", {"series_key": "s1"}, {"via": "test"})
    ctx.ledger.finish(key, {"verdict": "new_patient", "series_instance_uid": "1.2.3"}, WRITEBACK_PENDING)
    admin = create_engine(postgres_schema_url)
    with admin.begin() as conn:
        conn.execute(text(LEDGER_STOPS_READING))
    try:
        with caplog.at_level(logging.WARNING, logger="worker.tasks"):
            first = run_writeback_task(key)
            with pytest.raises(OperationalError):  # the server really refuses the read now
                ctx.ledger.get(key)
            second = run_writeback_task(key)
    finally:
        with admin.begin() as conn:
            conn.execute(text(LEDGER_READS_AGAIN))
        admin.dispose()
    assert first.when == 30.0 and second.when == 30.0  # the cap (a known first attempt would have waited 1 s)
    assert "OperationalError" in caplog.text and PLANTED_NAME not in caplog.text and "cannot be read" not in caplog.text
    job = ctx.ledger.get(key)
    assert job.writeback_state == WRITEBACK_PENDING and job.verdict["verdict"] == "new_patient"
    assert job.writeback_attempts == 1 and "unavailable" in job.writeback_note
    ctx.close()
