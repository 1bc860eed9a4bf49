"""Where a complete series goes: the node calls :func:`submit_completed_series` and does not care which mode runs.

Service mode (``broker_url`` set): the hand-on is recorded in the ledger and a ``dbp.process_series`` message carrying
only the job key is sent to Redis; the worker reads the rest from the ledger (shared database), so the broker never
holds patient data. Embedded mode: the ledger row *is* the queue entry; in-process workers are woken.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.types import CompletedSeries
from worker.config import WorkerConfig
from worker.ledger import DONE
from worker.steps import WorkerContext, release_spool, submit_to_ledger

log = logging.getLogger(__name__)

_contexts: dict[str, WorkerContext] = {}


def _context(config: WorkerConfig) -> WorkerContext:
    key = config.ledger_url
    if key not in _contexts:
        _contexts[key] = WorkerContext(config)
    return _contexts[key]


def submit_completed_series(config: WorkerConfig, completed: CompletedSeries) -> str:
    """Queue one complete series for processing; returns its job key. Raises if it could not be queued durably
    (the node then keeps the series as complete and hands it on again later)."""
    ctx = _context(config)
    via = "celery" if config.broker_url else "embedded"
    job_key, is_new = submit_to_ledger(ctx, completed, via)
    if not is_new:
        job = ctx.ledger.get(job_key)
        if job is not None and job.state == DONE:  # identical content re-sent: already decided; just release it
            release_spool(ctx, completed)
            log.info("series %s: identical content already processed", completed.series_key)
            return job_key
    if config.broker_url:
        from worker.celery_app import send_process_series

        send_process_series(config, job_key)
    else:
        from worker.embedded import ensure_embedded_worker, wake_embedded_workers

        ensure_embedded_worker(config)
        wake_embedded_workers()  # every in-process worker: an idle second one would otherwise wait for its poll
    return job_key


def fingerprint_released_series(config: WorkerConfig, series_key: str, folder: Path) -> None:
    """A series' last association ended: in embedded mode an idle in-process worker fingerprints its folder during
    the quiet time (used at hand-on if nothing changed). Service mode does nothing: its workers are other processes,
    and the hand-on is the only message."""
    if config.broker_url:
        return
    from worker.embedded import fingerprint_ahead

    fingerprint_ahead(config, folder)
