"""The worker's ledger: one row per hand-on of a series, on the archive's database (SQLite or PostgreSQL).

Three jobs, one table, because they are one life cycle:
- idempotency: a row is keyed by ``<series_key>:<content hash>``; a task that finds its row ``done`` returns the
  stored verdict instead of recording the series twice (Celery redelivers with ``acks_late``; PACS re-send);
- the embedded mode's durable queue: rows ``queued`` survive a crash or a stop and are taken up again on restart;
- verdicts waiting for Orthanc: ``writeback_state = 'pending'`` keeps the verdict and when to try again, so an
  Orthanc that is down loses nothing and delays nothing else.

Rows hold no PHI: the series key is a hash, paths are spool paths built from hashes, verdicts carry hashed patient
keys only.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from fingerprint.identity.schema import create_tables

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
WRITEBACK_NONE, WRITEBACK_PENDING, WRITEBACK_DONE, WRITEBACK_SKIPPED = "none", "pending", "done", "skipped"

metadata = MetaData()

jobs_table = Table(
    "dbp_worker_jobs",
    metadata,
    Column("job_key", String(160), primary_key=True),
    Column("series_key", String(80), nullable=False, index=True),
    Column("completed", Text, nullable=False),  # CompletedSeries.as_json()
    Column("source_info", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("last_error", Text, nullable=False, default=""),
    Column("verdict", Text, nullable=False, default=""),
    Column("writeback_state", String(16), nullable=False, default=WRITEBACK_NONE, index=True),
    Column("writeback_attempts", Integer, nullable=False, default=0),
    Column("writeback_next_at", Float, nullable=False, default=0.0),
    Column("writeback_note", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


@dataclass(frozen=True)
class Job:
    """One row, decoded."""

    job_key: str
    series_key: str
    completed: dict[str, Any]
    source_info: dict[str, Any]
    state: str
    attempts: int
    last_error: str
    verdict: dict[str, Any] | None
    writeback_state: str
    writeback_attempts: int
    writeback_note: str
    created_at: float
    updated_at: float


def _job(row: Any) -> Job:
    return Job(
        job_key=row.job_key,
        series_key=row.series_key,
        completed=json.loads(row.completed),
        source_info=json.loads(row.source_info),
        state=row.state,
        attempts=row.attempts,
        last_error=row.last_error,
        verdict=json.loads(row.verdict) if row.verdict else None,
        writeback_state=row.writeback_state,
        writeback_attempts=row.writeback_attempts,
        writeback_note=row.writeback_note,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def backoff_s(attempt: int, cap_s: float, base_s: float = 1.0) -> float:
    """Exponential back-off: 1, 2, 4, ... seconds, capped."""
    return min(cap_s, base_s * (2 ** max(0, attempt - 1)))


class Ledger:
    """The ``dbp_worker_jobs`` table behind small, explicit operations (each one short transaction)."""

    def __init__(self, url: str) -> None:
        connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
        # hide_parameters: an error's text never carries a row's values into a log (issue 15: no PHI in logs)
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True, hide_parameters=True)
        create_tables(self.engine, metadata)  # several workers may open a fresh database at one moment

    def close(self) -> None:
        self.engine.dispose()

    def enqueue(self, job_key: str, series_key: str, completed: dict[str, Any], source_info: dict[str, Any]) -> bool:
        """Record a hand-on as ``queued``. False when this exact content was already handed on (nothing changes)."""
        now = time.time()
        row = dict(
            job_key=job_key, series_key=series_key, completed=json.dumps(completed),
            source_info=json.dumps(source_info, default=str), state=QUEUED, attempts=0, next_attempt_at=0.0,
            last_error="", verdict="", writeback_state=WRITEBACK_NONE, writeback_attempts=0, writeback_next_at=0.0,
            writeback_note="", created_at=now, updated_at=now,
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(jobs_table.insert().values(**row))
            return True
        except IntegrityError:
            with self.engine.begin() as conn:  # a failed hand-on sent again gets a fresh set of attempts
                conn.execute(
                    update(jobs_table)
                    .where(jobs_table.c.job_key == job_key, jobs_table.c.state == FAILED)
                    .values(state=QUEUED, attempts=0, next_attempt_at=0.0, updated_at=now)
                )
            return False

    def get(self, job_key: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.job_key == job_key)).first()
        return _job(row) if row else None

    def claim_next(self) -> Job | None:
        """Take the oldest due ``queued`` row (embedded mode: one consumer per ledger, so no race to lose)."""
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.state == QUEUED, jobs_table.c.next_attempt_at <= now)
                .order_by(jobs_table.c.created_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            claimed = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.job_key == row.job_key, jobs_table.c.state == QUEUED)
                .values(state=RUNNING, attempts=jobs_table.c.attempts + 1, updated_at=now)
            ).rowcount
        return self.get(row.job_key) if claimed else None

    def start(self, job_key: str) -> Job | None:
        """Mark a row ``running`` for a Celery delivery; None when it is already ``done`` (idempotent redelivery)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.job_key == job_key, jobs_table.c.state != DONE)
                .values(state=RUNNING, attempts=jobs_table.c.attempts + 1, updated_at=time.time())
            )
        return self.get(job_key)

    def requeue_interrupted(self) -> int:
        """On embedded start: rows left ``running`` by a stop or crash go back to ``queued``."""
        with self.engine.begin() as conn:
            return conn.execute(
                update(jobs_table).where(jobs_table.c.state == RUNNING).values(state=QUEUED, updated_at=time.time())
            ).rowcount

    def finish(self, job_key: str, verdict: dict[str, Any], writeback_state: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.job_key == job_key)
                .values(state=DONE, verdict=json.dumps(verdict, default=str), last_error="",
                        writeback_state=writeback_state, updated_at=time.time())
            )

    def fail_attempt(self, job_key: str, error: str, retry_in_s: float | None) -> None:
        """Record a failed attempt: ``queued`` again after ``retry_in_s``, or ``failed`` for good when None."""
        now = time.time()
        values: dict[str, Any] = {"last_error": error[:2000], "updated_at": now}
        if retry_in_s is None:
            values["state"] = FAILED
        else:
            values.update(state=QUEUED, next_attempt_at=now + retry_in_s)
        with self.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.job_key == job_key).values(**values))

    def set_writeback(self, job_key: str, state: str, note: str = "", retry_in_s: float | None = None) -> None:
        now = time.time()
        values: dict[str, Any] = {"writeback_state": state, "writeback_note": note[:2000], "updated_at": now,
                                  "writeback_attempts": jobs_table.c.writeback_attempts + 1}
        if retry_in_s is not None:
            values["writeback_next_at"] = now + retry_in_s
        with self.engine.begin() as conn:
            conn.execute(update(jobs_table).where(jobs_table.c.job_key == job_key).values(**values))

    def stale_queued(self, older_than_s: float, limit: int = 10_000) -> list[Job]:
        """Jobs ``queued`` for longer than ``older_than_s`` and due: their message was most likely lost (a broker that
        restarted without persistence); a worker that starts sends them again."""
        now = time.time()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.state == QUEUED, jobs_table.c.updated_at <= now - older_than_s,
                       jobs_table.c.next_attempt_at <= now)
                .order_by(jobs_table.c.created_at)
                .limit(limit)
            ).all()
        return [_job(row) for row in rows]

    def due_writebacks(self, limit: int = 20) -> list[Job]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs_table)
                .where(jobs_table.c.writeback_state == WRITEBACK_PENDING,
                       jobs_table.c.writeback_next_at <= time.time())
                .order_by(jobs_table.c.writeback_next_at)
                .limit(limit)
            ).all()
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Rows per state, plus pending write-backs (for status output and tests)."""
        with self.engine.connect() as conn:
            states = dict(conn.execute(select(jobs_table.c.state, func.count()).group_by(jobs_table.c.state)).all())
            pending = conn.execute(
                select(func.count()).where(jobs_table.c.writeback_state == WRITEBACK_PENDING)
            ).scalar_one()
        return {**{s: states.get(s, 0) for s in (QUEUED, RUNNING, DONE, FAILED)}, "writeback_pending": pending}

    def erase_series(self, series_keys: list[str], patient_id_hash: str = "", series_uids: set[str] | None = None) -> int:
        """Forget every job of these series (right to erasure: a job keeps the verdict and where the files were), and
        remove the erased patient from the verdicts of the other jobs (their neighbours and matches)."""
        from fingerprint.identity.erasure import scrub_references

        if not series_keys:
            return 0
        with self.engine.begin() as conn:
            deleted = int(conn.execute(jobs_table.delete().where(jobs_table.c.series_key.in_(series_keys))).rowcount)
            if patient_id_hash:
                c = jobs_table.c
                for key, verdict in conn.execute(select(c.job_key, c.verdict).where(c.verdict.contains(patient_id_hash))):
                    cleaned = scrub_references(json.loads(verdict), patient_id_hash, set(series_uids or ()))
                    conn.execute(jobs_table.update().where(c.job_key == key).values(verdict=json.dumps(cleaned)))
        return deleted

    def all_jobs(self) -> list[Job]:
        with self.engine.connect() as conn:
            return [_job(r) for r in conn.execute(select(jobs_table).order_by(jobs_table.c.created_at)).all()]
