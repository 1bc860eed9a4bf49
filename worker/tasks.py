"""Celery tasks: thin wrappers over ``worker.steps`` that turn transient failures into retries with back-off.

Messages carry only the ledger's job key; the series, its source and the verdict are read from and written to the
ledger, so a redelivered or duplicated message finds the row ``done`` and does nothing twice.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_process_shutdown, worker_ready

from worker.celery_app import (
    PROCESS_TASK,
    WRITEBACK_TASK,
    app,
    current_config,
    send_process_series,
    send_writeback,
)
from worker.ledger import DONE, WRITEBACK_PENDING, backoff_s
from worker.steps import (
    TRANSIENT_ERRORS,
    WorkerContext,
    error_text,
    process_job,
    writeback_job,
    writeback_state_for,
)

log = logging.getLogger(__name__)

_ctx: WorkerContext | None = None


def context() -> WorkerContext:
    """One context per worker process: the model and FAISS index are loaded once, not per series."""
    global _ctx
    if _ctx is None:
        _ctx = WorkerContext(current_config())
    return _ctx


class AttemptFailed(Exception):
    """A failed attempt as Celery logs it: the stated reason (``worker.steps.error_text``) and nothing more."""


@worker_ready.connect
def _resubmit_pending_writebacks(**_: Any) -> None:
    """Verdicts still waiting for Orthanc (their retry message lost with a broker that restarted without its
    append-only file, say) get a write-back message again when a worker starts; duplicates are harmless."""
    try:
        due = context().ledger.due_writebacks(limit=10_000)
    except TRANSIENT_ERRORS:
        return
    for job in due:
        send_writeback(context().config, job.job_key)
    if due:
        log.info("%d pending write-backs queued again", len(due))


@worker_ready.connect
def _resubmit_lost_series(**_: Any) -> None:
    """Series queued in the ledger for longer than the visibility timeout have most likely lost their message (a
    broker restarted without its append-only file): a worker that starts sends them again. A duplicate of a message
    still in the queue is harmless: the ledger makes a finished series a no-op."""
    config = context().config
    try:
        stale = context().ledger.stale_queued(older_than_s=config.visibility_timeout_s)
    except TRANSIENT_ERRORS:
        return
    for job in stale:
        send_process_series(config, job.job_key)
    if stale:
        log.info("%d queued series sent again (their messages were lost)", len(stale))


@worker_process_shutdown.connect
def _close_context(**_: Any) -> None:
    """Save the FAISS index and release the database when a worker process ends (``down``, SIGTERM)."""
    global _ctx
    if _ctx is not None:
        _ctx.close()
        _ctx = None


@app.task(name=PROCESS_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def process_series_task(self: Task, job_key: str) -> dict[str, Any]:
    ctx = context()
    config = ctx.config
    try:
        job = ctx.ledger.start(job_key)
        if job is None:
            log.error("job %s not in the ledger (another site's message?): dropped", job_key)
            return {"job_key": job_key, "verdict": None}
        if job.state == DONE and job.verdict is not None:
            return {"job_key": job_key, "verdict": job.verdict.get("verdict")}
        verdict = process_job(ctx, job)
    except TRANSIENT_ERRORS as error:
        attempt = self.request.retries + 1
        give_up = attempt >= config.task_max_attempts
        delay = backoff_s(attempt, config.retry_backoff_max_s)
        reason = error_text(error)
        try:
            ctx.ledger.fail_attempt(job_key, reason, None if give_up else delay)
        except TRANSIENT_ERRORS:
            pass  # the store itself is what is down; the message's retry is the record
        # Celery logs the exception it is given, traceback and message: give it the stated reason, never the
        # original, whose text can quote the row being written (patient data).
        if give_up:
            raise AttemptFailed(f"given up after {attempt} attempts: {reason}") from None
        raise self.retry(countdown=delay, exc=AttemptFailed(reason)) from None
    except Exception as error:  # noqa: BLE001 - a bug or an unforeseen input: keep the reason, do not loop
        ctx.ledger.fail_attempt(job_key, error_text(error), None)
        log.error("job %s failed: %s", job_key, error_text(error))
        return {"job_key": job_key, "verdict": None, "error": type(error).__name__}
    if writeback_state_for(ctx, verdict) == WRITEBACK_PENDING:  # what process_job has just stored, not read back
        send_writeback(config, job_key)
    return {"job_key": job_key, "verdict": verdict.get("verdict")}


@app.task(name=WRITEBACK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def writeback_task(self: Task, job_key: str) -> bool:
    """Write the verdict to Orthanc; while Orthanc is down, retry with capped exponential back-off, forever: the
    verdict is safe in the ledger (``writeback_state = pending``) meanwhile.

    A ledger that cannot be read or written (the database briefly down) is retried too, at the back-off's cap, since
    the attempt count is unknown: failing the task would leave the verdict unwritten until a worker next starts. Only
    the error's class is logged: a database's message can quote the row.
    """
    ctx = context()
    cap_s = ctx.config.retry_backoff_max_s
    try:
        if writeback_job(ctx, job_key):
            return True
        job = ctx.ledger.get(job_key)
    except TRANSIENT_ERRORS as error:
        log.warning("write-back %s: ledger unavailable (%s); trying again in %.0f s", job_key, type(error).__name__,
                    cap_s)
        raise self.retry(countdown=cap_s) from None
    raise self.retry(countdown=backoff_s(job.writeback_attempts, cap_s) if job is not None else cap_s)
