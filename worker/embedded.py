"""Embedded mode (the default): an in-process worker over the same task code, its durable queue the ledger table.

Why not Celery with kombu's SQLAlchemy or filesystem transport: both would still need a Celery worker (a second
process, or a thread running Celery's consumer machinery) and poll their own tables, only to end in the same
``process_job`` call; the ledger already has to exist for idempotency and pending write-backs, and a ``queued`` row
in it is exactly a durable message. One thread, one table: nothing is lost on restart (rows left ``running`` by a
stop or crash are queued again), nothing needs a server. Measured (``bench/bench_queue.py``, same run, SQLite): both
queues move 30-60 messages/s, far more than series take to process; the ledger hands a series on in ~40 ms (the
worker is woken in-process) where kombu's transport polls, ~720 ms median.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.config import WorkerConfig
from worker.ledger import WRITEBACK_PENDING, Job, backoff_s
from worker.steps import TRANSIENT_ERRORS, WorkerContext, error_text, process_job, writeback_job

log = logging.getLogger(__name__)

_running_workers: list[EmbeddedWorker] = []
#: Released folders an idle worker remembers to fingerprint ahead (the oldest are dropped: their hand-on is near).
AHEAD_QUEUE = 4


def wake_embedded_workers() -> None:
    """Tell in-process workers that new work is queued (they also poll, so this only saves latency)."""
    for worker in list(_running_workers):
        worker.wake()


class EmbeddedWorker:
    """One background thread that takes queued series from the ledger, processes them, and retries write-backs."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        poll_interval_s: float = 0.5,
        on_verdict: Callable[[Job, dict[str, Any]], None] | None = None,
    ) -> None:
        self.ctx = WorkerContext(config)
        self.poll_interval_s = poll_interval_s
        self.on_verdict = on_verdict
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = threading.Event()
        self._ahead: deque[Path] = deque()  # released series folders to fingerprint while idle, oldest first
        self._ahead_lock = threading.Lock()
        # Set when the ledger could not be reached: a series claimed meanwhile may be left ``running`` with nobody
        # working on it (its failure could not be written); the next successful pass queues such rows again.
        self._ledger_lost = False

    def start(self) -> EmbeddedWorker:
        requeued = self.ctx.ledger.requeue_interrupted()
        if requeued:
            log.info("embedded worker: %d interrupted series queued again", requeued)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="deepbrainprint-embedded-worker", daemon=True)
        _running_workers.append(self)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def fingerprint_ahead(self, folder: Path) -> None:
        """Ask for ``folder`` (a released series whose quiet time runs) to be fingerprinted when this worker is idle;
        queued series always come first (:mod:`fingerprint.identity.ahead`)."""
        with self._ahead_lock:
            if folder not in self._ahead:
                self._ahead.append(folder)
                while len(self._ahead) > AHEAD_QUEUE:
                    self._ahead.popleft()
        self._wake.set()

    def forget_ahead(self, folder: Path) -> None:
        """Drop ``folder`` from the work-ahead list: its series has been claimed for processing."""
        with self._ahead_lock:
            if folder in self._ahead:
                self._ahead.remove(folder)

    def request_stop(self) -> None:
        """Ask the thread to stop after the series in hand, without waiting (safe from callbacks and signals)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout_s: float = 120.0) -> None:
        """Finish the series in hand, then stop; whatever is still queued stays in the ledger for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self in _running_workers:
            _running_workers.remove(self)
        self.ctx.close()

    def __enter__(self) -> EmbeddedWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                did_work = self.run_once()
            except TRANSIENT_ERRORS as error:  # the ledger itself unreachable: wait and try again
                log.warning("embedded worker: ledger unavailable (%s)", type(error).__name__)
                self._ledger_lost = True
                did_work = False
            except Exception as error:  # noqa: BLE001 - the loop must survive anything; the job row keeps the reason
                log.error("embedded worker: unexpected error: %s", error_text(error))  # no traceback: it quotes values
                did_work = False
            if not did_work:
                self._wake.wait(self.poll_interval_s)
                self._wake.clear()

    def run_once(self) -> bool:
        """Do one unit of work (a queued series, else the due write-backs). False when there was none."""
        if self._ledger_lost:  # a series in hand when the store went away could not be marked failed: queue it again
            requeued = self.ctx.ledger.requeue_interrupted()
            self._ledger_lost = False
            if requeued:
                log.info("embedded worker: store back, %d interrupted series queued again", requeued)
        job = self.ctx.ledger.claim_next()
        if job is not None:
            # handed on before any worker got to it ahead: nothing is left to do ahead for it, here or in another worker
            for worker in {self, *_running_workers}:
                worker.forget_ahead(Path(job.completed["path"]))
            self._busy.set()
            try:
                self._process(job)
            finally:
                self._busy.clear()
            return True
        due = self.ctx.ledger.due_writebacks()
        for pending in due:
            writeback_job(self.ctx, pending.job_key)
        with self._ahead_lock:
            folder = self._ahead.popleft() if self._ahead else None
        if folder is not None:
            self.ctx.archive.fingerprint_ahead(folder)
            return True
        return False  # write-back retries never count as "busy": they wait for their own due time

    def _process(self, job: Job) -> None:
        config = self.ctx.config
        try:
            verdict = process_job(self.ctx, job)
        except Exception as error:  # noqa: BLE001 - transient or not, the row keeps the reason and retries are bounded
            give_up = job.attempts >= config.task_max_attempts or not isinstance(error, TRANSIENT_ERRORS)
            retry_in = None if give_up else backoff_s(job.attempts, config.retry_backoff_max_s)
            self.ctx.ledger.fail_attempt(job.job_key, error_text(error), retry_in)
            log.warning("series %s: attempt %d failed (%s)%s", job.series_key, job.attempts,
                        type(error).__name__, "; given up" if give_up else f"; retry in {retry_in:.0f} s")
            return
        if self.ctx.ledger.get(job.job_key).writeback_state == WRITEBACK_PENDING:
            writeback_job(self.ctx, job.job_key)
        if self.on_verdict is not None:
            self.on_verdict(job, verdict)


__all__ = ["EmbeddedWorker", "ensure_embedded_worker", "fingerprint_ahead", "wake_embedded_workers"]


def fingerprint_ahead(config: WorkerConfig, folder: Path) -> None:
    """Give a released series' folder to this archive's in-process worker, to fingerprint while its quiet time runs
    (started on first need, like :func:`ensure_embedded_worker`)."""
    ensure_embedded_worker(config).fingerprint_ahead(Path(folder))


def ensure_embedded_worker(config: WorkerConfig) -> EmbeddedWorker:
    """The running in-process worker for this archive, started on first need (``deepbrainprint serve`` without a
    broker gets one this way, the first time a series completes)."""
    for worker in _running_workers:
        if worker.ctx.config.ledger_url == config.ledger_url:
            return worker
    return EmbeddedWorker(config).start()
