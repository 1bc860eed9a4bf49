"""The task code, the same in every mode: what happens to one complete series after the node hands it on.

``process_job``: rebuild the volume, fingerprint it, decide the verdict and record it (all inside
``Archive.process``: the fingerprint outside the archive's lock, decide-and-record under it), remember the verdict in
the ledger, and release the series in the spool. ``writeback_job``: put the verdict on the series in Orthanc, or keep
it pending. Embedded mode calls them in one thread; Celery tasks call them in worker processes.

Why decide-and-record relies on the archive's lock and is not a single-consumer ``index`` queue: the store already
serialises decide-and-record with a database lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL)
and every process's FAISS index catches up from the store's sequence numbers before deciding. So any worker can
finish a series it fingerprinted, a single index consumer would be a bottleneck and a single point of failure, and
the broker never has to carry vectors or (because the PatientID is read back from the spooled files) patient data.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbp_orthanc.writeback import WritebackUnavailable, make_client, write_verdict
from sqlalchemy.exc import DBAPIError

from dicom_node.spool import series_files
from dicom_node.types import CompletedSeries
from fingerprint.errors import SeriesRejected
from worker.config import WorkerConfig
from worker.ledger import (
    WRITEBACK_DONE,
    WRITEBACK_NONE,
    WRITEBACK_PENDING,
    WRITEBACK_SKIPPED,
    Job,
    Ledger,
    backoff_s,
)

log = logging.getLogger(__name__)

#: Errors that say "try again later", not "this series is bad": the store or the spool's file system unreachable.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, ConnectionError, TimeoutError)
#: The longest a worker waits for the store to take a verdict it has just recorded (see ``finish_recorded``).
FINISH_PATIENCE_S = 120.0


def error_text(error: BaseException) -> str:
    """What is stored and logged about a failed attempt: the exception's class and the first line of its message.
    For database errors only the classes and the SQLSTATE: a server's message and SQLAlchemy's text can quote the
    row being written (PatientID, UIDs) and the statement, and the ledger and the logs must carry no patient data."""
    if isinstance(error, DBAPIError):
        original = error.orig
        sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
        detail = f"{type(original).__module__.split('.')[0]} {type(original).__name__}" if original is not None else ""
        detail += f", SQLSTATE {sqlstate}" if sqlstate else ""
        return f"{type(error).__name__} ({detail})" if detail else type(error).__name__
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line[:500]}" if first_line else type(error).__name__


def content_hash(folder: Path) -> str:
    """A hash of the series' files (names and bytes): the same content handed on twice is one job."""
    digest = hashlib.blake2b(digest_size=16)
    for path in series_files(folder):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def job_key_for(completed: CompletedSeries) -> str:
    return f"{completed.series_key}:{content_hash(completed.path)}"


def source_info_for(completed: CompletedSeries, via: str) -> dict[str, Any]:
    """What the archive stores about where a series came from (no PHI: hashed key, AE title, times)."""
    return {**completed.as_json(), "via": via}


@dataclass
class WorkerContext:
    """What a worker process keeps between jobs: the config, and lazily the ledger, archive and Orthanc client."""

    config: WorkerConfig
    _ledger: Ledger | None = field(default=None, repr=False)
    _archive: Any = field(default=None, repr=False)
    _orthanc: Any = field(default=None, repr=False)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self.config.archive.index_dir.mkdir(parents=True, exist_ok=True)
            self._ledger = Ledger(self.config.ledger_url)
        return self._ledger

    @property
    def archive(self) -> Any:
        if self._archive is None:
            from fingerprint.identity.archive import (
                Archive,  # torch, FAISS: only in processes that fingerprint
            )

            self._archive = Archive(self.config.archive)
        return self._archive

    @property
    def orthanc(self) -> Any:
        if self._orthanc is None and self.config.orthanc_url:
            self._orthanc = make_client(
                self.config.orthanc_url, self.config.orthanc_username, self.config.orthanc_password
            )
        return self._orthanc

    def close(self) -> None:
        if self._archive is not None and hasattr(self._archive, "close"):
            self._archive.close()
        if self._ledger is not None:
            self._ledger.close()
        self._archive = self._ledger = self._orthanc = None


def submit_to_ledger(ctx: WorkerContext, completed: CompletedSeries, via: str) -> tuple[str, bool]:
    """Record a hand-on in the ledger; returns (job key, whether it is new work)."""
    key = job_key_for(completed)
    is_new = ctx.ledger.enqueue(key, completed.series_key, completed.as_json(), source_info_for(completed, via))
    return key, is_new


def release_spool(ctx: WorkerContext, completed: CompletedSeries) -> None:
    """Tell the node's spool the series is finished (only for series that live in this spool)."""
    from dicom_node.spool import Spool

    spool = Spool(ctx.config.spool_dir)
    if Path(completed.path).resolve() != spool.instances_dir(completed.series_key).resolve():
        return  # a folder handed on directly (tests, tools): no spool state to update
    spool.mark_done(completed.series_key, completed.generation)


def process_job(ctx: WorkerContext, job: Job) -> dict[str, Any]:
    """Fingerprint, decide, record; remember the verdict; release the spool. Returns the verdict.

    Raises the TRANSIENT_ERRORS for the caller to retry; a bad series is a ``rejected`` verdict, never an exception.
    Already ``done`` (a redelivery, a re-send of identical content): returns the stored verdict, records nothing.
    """
    if job.state == "done" and job.verdict is not None:
        return job.verdict
    completed = CompletedSeries.from_json(job.completed)
    try:
        verdict = ctx.archive.process(completed.path, job.source_info)
    except SeriesRejected as rejected:  # the archive records rejections itself; this is the belt to its braces
        verdict = {"verdict": "rejected", **rejected.as_json()}
    finish_recorded(ctx, job.job_key, verdict, writeback_state_for(ctx, verdict))
    release_spool(ctx, completed)
    log.info("series %s: %s", completed.series_key, verdict.get("verdict"))
    return verdict


def writeback_state_for(ctx: WorkerContext, verdict: dict[str, Any]) -> str:
    """The write-back state a finished job starts in: pending when an Orthanc is configured and the verdict names a
    real series (a series without a SeriesInstanceUID has nothing in Orthanc to write to), else none."""
    return WRITEBACK_PENDING if ctx.config.orthanc_url and verdict.get("series_instance_uid") else WRITEBACK_NONE


def finish_recorded(ctx: WorkerContext, job_key: str, verdict: dict[str, Any], writeback: str) -> None:
    """Mark a job done with the verdict the archive has just recorded, waiting (with back-off) for a store that went
    away in between, as in a database restart: failing the attempt instead would decide the series again on retry,
    against series recorded meanwhile (the first of a pair would become a duplicate of the second, a doubled alarm).
    Waits at most a third of the visibility timeout, so the broker never hands the series to another worker
    meanwhile; after that the error goes to the caller's retry."""
    deadline = time.monotonic() + min(FINISH_PATIENCE_S, ctx.config.visibility_timeout_s / 3)
    attempt = 0
    while True:
        try:
            ctx.ledger.finish(job_key, verdict, writeback)
            return
        except TRANSIENT_ERRORS as error:
            attempt += 1
            delay = backoff_s(attempt, 5.0, base_s=0.5)
            if time.monotonic() + delay > deadline:
                raise
            log.warning("job %s: verdict recorded, ledger unavailable (%s); trying again in %.1f s", job_key,
                        error_text(error), delay)
            time.sleep(delay)


def writeback_job(ctx: WorkerContext, job_key: str) -> bool:
    """Write a recorded verdict to Orthanc. True when finished (written, or nothing to write); False when Orthanc is
    unavailable: the verdict stays pending in the ledger with the next attempt time set (exponential back-off)."""
    job = ctx.ledger.get(job_key)
    if job is None or job.writeback_state != WRITEBACK_PENDING or ctx.orthanc is None or job.verdict is None:
        return True
    try:
        report = write_verdict(ctx.orthanc, job.verdict["series_instance_uid"], job.verdict)
    except WritebackUnavailable as error:
        delay = backoff_s(job.writeback_attempts + 1, ctx.config.retry_backoff_max_s)
        ctx.ledger.set_writeback(job_key, WRITEBACK_PENDING, f"Orthanc unavailable: {error}", retry_in_s=delay)
        log.warning("write-back of %s deferred %.0f s: Orthanc unavailable (%s)", job.series_key, delay, error)
        return False
    state = WRITEBACK_DONE if report.written else WRITEBACK_SKIPPED
    ctx.ledger.set_writeback(job_key, state, report.note)
    return True
