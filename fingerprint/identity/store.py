"""The archive's system of record: one table of series, behind one small interface, on SQLite or PostgreSQL.

Why the store and not the FAISS index is the truth: an index file can be lost, torn by a crash or built for another
model; every fingerprint (and a compact float16 copy of the canonical slice, so a new model can re-embed the archive
without the original DICOM) lives here, and the index is rebuilt from it at will.

Why a ``seq`` column next to the row id: the decide-and-record step runs under one archive-wide lock and gives every
insert *or update* the next ``seq``. A FAISS index that remembers the highest ``seq`` it holds can therefore catch up
with everything other processes wrote since (new rows and re-processed ones) with one indexed range query.

SQLite (the default, no server) gets the lock from ``BEGIN IMMEDIATE``; PostgreSQL (scaled-out mode, several hosts)
from a transaction-scoped advisory lock keyed by the schema, so archives in different schemas do not block each other.
Tests and side-by-side archives on one PostgreSQL database select a schema with ``?options=-csearch_path%3D<schema>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url

from fingerprint.identity.schema import create_tables
from fingerprint.types import SLICE_SIZE

STATUS_FINGERPRINTED = "fingerprinted"
STATUS_REJECTED = "rejected"
VECTOR_DIM = 512

metadata = MetaData()

series_table = Table(
    "dbp_series",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("seq", BigInteger, nullable=False, index=True),
    Column("series_instance_uid", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("patient_id_hash", String(80), nullable=False, default="", index=True),
    Column("patient_id", String(128), nullable=True),  # clear PatientID only with keep_clear_patient_id
    Column("study_instance_uid", String(128), nullable=False, default=""),
    Column("sop_instance_uids", Text, nullable=False, default="[]"),  # JSON list
    Column("instance_count", Integer, nullable=False, default=0),
    Column("study_date", String(8), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_description", String(256), nullable=False, default=""),
    Column("source", Text, nullable=False, default="{}"),  # JSON: orthanc id, calling AE title, folder, ...
    Column("vector", LargeBinary, nullable=True),  # float32 (512,) little endian
    Column("slice_f16", LargeBinary, nullable=True),  # float16 (128, 128): what reindex re-embeds
    Column("verdict", String(32), nullable=False),
    Column("score", Float, nullable=True),
    Column("evidence", Text, nullable=False, default="{}"),  # JSON
    Column("reject_reason", String(64), nullable=True),
    Column("reject_detail", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("series_instance_uid", "model_version", name="uq_dbp_series_uid_model"),
    Index("ix_dbp_series_model_seq", "model_version", "seq"),  # index catch-up: rows after a seq
    Index("ix_dbp_series_model_status", "model_version", "status"),  # counts and rebuilds per model version
)

#: A site's calibrated verdict thresholds per model version (JSON of ``calibration.Thresholds``). Kept in the store so
#: that every worker of a scaled-out archive, whatever its local index folder, decides with the same thresholds.
thresholds_table = Table(
    "dbp_thresholds",
    metadata,
    Column("model_version", String(64), primary_key=True),
    Column("thresholds", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: The canonical brain of each series for the verification stage (``fingerprint.identity.verification``): keyed by the series
#: and the verification method's version, not by the fingerprint model (a new model re-uses the brains; ``reindex``
#: needs no DICOM for verification either). Compressed 6-bit voxels of the brain only (no face).
brains_table = Table(
    "dbp_brains",
    metadata,
    Column("series_instance_uid", String(128), primary_key=True),
    Column("method_version", String(64), primary_key=True),
    Column("brain", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Every verified pair: the score, how the registration went (JSON) and the evidence picture (PNG), for the verdict's
#: evidence and the reports. One row per (series, candidate, method version); re-verifying replaces it.
verifications_table = Table(
    "dbp_verifications",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("series_instance_uid", String(128), nullable=False, index=True),
    Column("candidate_series_instance_uid", String(128), nullable=False),
    Column("method_version", String(64), nullable=False),
    Column("score", Float, nullable=True),
    Column("details", Text, nullable=False, default="{}"),
    Column("evidence_png", LargeBinary, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("series_instance_uid", "candidate_series_instance_uid", "method_version", name="uq_dbp_verification"),
)

#: What people decided about each flag (an alarm: the flagged series' row id), one row per flag
#: (:mod:`fingerprint.identity.reviews`).
reviews_table = Table(
    "dbp_flag_reviews",
    metadata,
    Column("series_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("reviewer", String(128), nullable=False, default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Who did what when (acknowledgements, reports written, results sent, erasures): appended to, never rewritten.
audit_table = Table(
    "dbp_audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(32), nullable=False, index=True),
    Column("details", Text, nullable=False, default="{}"),
)

#: Columns a caller may set through :meth:`Store.upsert_series` (everything but the bookkeeping ones).
RECORD_FIELDS = tuple(c.name for c in series_table.columns if c.name not in {"id", "seq", "created_at", "updated_at"})


@dataclass(frozen=True)
class StoredVector:
    """One fingerprinted row as the index and the verdicts need it."""

    row_id: int
    seq: int
    vector: np.ndarray


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").reshape(VECTOR_DIM).tobytes()


def vector_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def slice_to_bytes(pixels: np.ndarray) -> bytes:
    return np.ascontiguousarray(pixels, dtype="<f2").reshape(SLICE_SIZE, SLICE_SIZE).tobytes()


def slice_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(SLICE_SIZE, SLICE_SIZE)


class Store:
    """The series table on one database URL. Thread-compatible; one instance per process is enough."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # hide_parameters: an error's text must not carry a row's values (PatientIDs, UIDs) into logs and ledgers
            self.engine = create_engine(url, connect_args={"timeout": 300}, hide_parameters=True)
            _enable_sqlite_immediate_transactions(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
        create_tables(self.engine, metadata)  # several workers may open a fresh archive at one moment

    def close(self) -> None:
        self.engine.dispose()

    def compact(self) -> None:
        """Rewrite an SQLite store from its live rows only (VACUUM, then an emptied write-ahead log), so deleted rows
        leave no bytes in its files (erasure); PostgreSQL reuses freed space itself."""
        if self.is_sqlite:
            raw = self.engine.raw_connection()  # the driver's own connection: VACUUM runs outside any transaction
            try:
                driver = raw.driver_connection
                previous, driver.isolation_level = driver.isolation_level, None
                driver.execute("VACUUM")
                driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # and no old page left in the write-ahead log
                driver.isolation_level = previous
            finally:
                raw.close()

    # --- transactions ------------------------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[Connection]:
        """A transaction holding the archive-wide write lock: decide-and-record runs one at a time per archive."""
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.info["dbp_immediate"] = True
            with conn.begin():
                if not self.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('deepbrainprint:' || current_schema()))"))
                yield conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A plain read transaction (no archive lock)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # --- writes (call inside :meth:`locked`) --------------------------------------------------------------------------
    def upsert_series(self, conn: Connection, record: dict[str, Any]) -> tuple[int, int]:
        """Insert or update the row of (series_instance_uid, model_version); returns (row id, seq).

        Idempotent: re-processing a series updates its row (same id), never adds a second one.
        """
        unknown = set(record) - set(RECORD_FIELDS)
        if unknown:
            raise ValueError(f"unknown store fields: {sorted(unknown)}")
        now = datetime.now(timezone.utc)
        seq = self.max_seq(conn) + 1
        values = {**record, "seq": seq, "updated_at": now}
        existing = conn.execute(
            select(series_table.c.id).where(
                series_table.c.series_instance_uid == record["series_instance_uid"],
                series_table.c.model_version == record["model_version"],
            )
        ).scalar_one_or_none()
        if existing is None:
            row_id = conn.execute(series_table.insert().values(**values, created_at=now)).inserted_primary_key[0]
        else:
            conn.execute(series_table.update().where(series_table.c.id == existing).values(**values))
            row_id = existing
        return int(row_id), seq

    def save_brain(self, conn: Connection, series_instance_uid: str, method_version: str, brain: bytes) -> None:
        """Store (replace) the canonical brain of a series."""
        key = (brains_table.c.series_instance_uid == series_instance_uid) & (
            brains_table.c.method_version == method_version
        )
        conn.execute(brains_table.delete().where(key))
        conn.execute(
            brains_table.insert().values(
                series_instance_uid=series_instance_uid,
                method_version=method_version,
                brain=brain,
                updated_at=datetime.now(timezone.utc),
            )
        )

    def save_verification(
        self,
        conn: Connection,
        series_instance_uid: str,
        candidate_series_instance_uid: str,
        method_version: str,
        score: float | None,
        details: dict[str, Any],
        evidence_png: bytes | None,
    ) -> int:
        """Store (replace) one verified pair; returns its id (what the verdict's evidence points to)."""
        c = verifications_table.c
        conn.execute(
            verifications_table.delete().where(
                (c.series_instance_uid == series_instance_uid)
                & (c.candidate_series_instance_uid == candidate_series_instance_uid)
                & (c.method_version == method_version)
            )
        )
        result = conn.execute(
            verifications_table.insert().values(
                series_instance_uid=series_instance_uid,
                candidate_series_instance_uid=candidate_series_instance_uid,
                method_version=method_version,
                score=score,
                details=json.dumps(details),
                evidence_png=evidence_png,
                created_at=datetime.now(timezone.utc),
            )
        )
        return int(result.inserted_primary_key[0])

    # --- reads ------------------------------------------------------------------------------------------------------
    def brains(self, conn: Connection, series_instance_uids: Sequence[str], method_version: str) -> dict[str, bytes]:
        """Stored canonical brains of these series (those that have one), by SeriesInstanceUID."""
        if not series_instance_uids:
            return {}
        rows = conn.execute(
            select(brains_table.c.series_instance_uid, brains_table.c.brain).where(
                brains_table.c.method_version == method_version,
                brains_table.c.series_instance_uid.in_(list(series_instance_uids)),
            )
        )
        return {uid: bytes(data) for uid, data in rows}

    def brain_uids(self, conn: Connection, series_instance_uids: Sequence[str], method_version: str) -> set[str]:
        """Which of these series have a stored canonical brain (without reading the brains)."""
        if not series_instance_uids:
            return set()
        rows = conn.execute(
            select(brains_table.c.series_instance_uid).where(
                brains_table.c.method_version == method_version,
                brains_table.c.series_instance_uid.in_(list(series_instance_uids)),
            )
        )
        return {r[0] for r in rows}

    def verification(self, verification_id: int) -> dict[str, Any] | None:
        """One stored verification (score, details, evidence PNG) by id."""
        with self.reading() as conn:
            row = conn.execute(
                select(verifications_table).where(verifications_table.c.id == int(verification_id))
            ).mappings().first()
        if row is None:
            return None
        return {**dict(row), "details": json.loads(row["details"] or "{}")}

    def max_seq(self, conn: Connection) -> int:
        return int(conn.execute(select(func.coalesce(func.max(series_table.c.seq), 0))).scalar_one())

    def count_fingerprinted(self, conn: Connection, model_version: str) -> int:
        return int(
            conn.execute(
                select(func.count()).where(
                    series_table.c.model_version == model_version, series_table.c.status == STATUS_FINGERPRINTED
                )
            ).scalar_one()
        )

    def changed_since(
        self, conn: Connection, model_version: str, seq: int, batch: int = 10_000
    ) -> Iterator[tuple[int, int, np.ndarray | None]]:
        """(row id, seq, vector or None when no longer fingerprinted) of rows written after ``seq``, in seq order."""
        last = seq
        while True:
            rows = conn.execute(
                select(series_table.c.id, series_table.c.seq, series_table.c.status, series_table.c.vector)
                .where(series_table.c.model_version == model_version, series_table.c.seq > last)
                .order_by(series_table.c.seq)
                .limit(batch)
            ).all()
            if not rows:
                return
            for row_id, row_seq, status, vector in rows:
                usable = status == STATUS_FINGERPRINTED and vector is not None
                yield int(row_id), int(row_seq), vector_from_bytes(vector) if usable else None
            last = int(rows[-1].seq)

    def own_scans(
        self, conn: Connection, model_version: str, patient_id_hash: str, exclude_series_uid: str
    ) -> list[dict[str, Any]]:
        """Earlier fingerprinted series of one (hashed) PatientID, with their vectors: the `consistent` check."""
        if not patient_id_hash:
            return []
        rows = conn.execute(
            select(*_summary_columns(), series_table.c.vector).where(
                series_table.c.model_version == model_version,
                series_table.c.status == STATUS_FINGERPRINTED,
                series_table.c.patient_id_hash == patient_id_hash,
                series_table.c.series_instance_uid != exclude_series_uid,
            )
        ).mappings()
        return [{**_summary(row), "vector": vector_from_bytes(row["vector"])} for row in rows]

    def summaries(self, conn: Connection, row_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Identifiers of rows (no vectors) by id: what a neighbour shows in the evidence."""
        if not row_ids:
            return {}
        rows = conn.execute(select(*_summary_columns()).where(series_table.c.id.in_([int(i) for i in row_ids])))
        return {int(row.id): _summary(row._mapping) for row in rows}

    def series_row(self, conn: Connection, series_instance_uid: str, model_version: str) -> dict[str, Any] | None:
        row = conn.execute(
            select(series_table).where(
                series_table.c.series_instance_uid == series_instance_uid,
                series_table.c.model_version == model_version,
            )
        ).mappings().first()
        return dict(row) if row is not None else None

    def recorded_series_uids(self, model_version: str) -> set[str]:
        """Series already recorded (fingerprinted or rejected) for a model version: what a resumed enroll skips."""
        with self.reading() as conn:
            rows = conn.execute(
                select(series_table.c.series_instance_uid).where(series_table.c.model_version == model_version)
            )
            return {r[0] for r in rows}

    def iter_vectors(self, conn: Connection, model_version: str, batch: int = 10_000) -> Iterator[StoredVector]:
        """Every fingerprint of a model version, in id order, streamed in batches: what an index rebuild reads."""
        last = 0
        while True:
            rows = conn.execute(
                select(series_table.c.id, series_table.c.seq, series_table.c.vector)
                .where(
                    series_table.c.model_version == model_version,
                    series_table.c.status == STATUS_FINGERPRINTED,
                    series_table.c.id > last,
                )
                .order_by(series_table.c.id)
                .limit(batch)
            ).all()
            if not rows:
                return
            for row_id, seq, vector in rows:
                yield StoredVector(int(row_id), int(seq), vector_from_bytes(vector))
            last = int(rows[-1].id)

    def calibration_rows(self, conn: Connection, model_version: str) -> list[tuple[str, str, np.ndarray]]:
        """``(SeriesInstanceUID, PatientID hash, fingerprint)`` of every fingerprinted series of a model version, in
        id order: what a calibration from the archive reads."""
        c = series_table.c
        rows = conn.execute(
            select(c.series_instance_uid, c.patient_id_hash, c.vector)
            .where(c.model_version == model_version, c.status == STATUS_FINGERPRINTED)
            .order_by(c.id)
        ).all()
        return [(str(uid), str(patient), vector_from_bytes(vector)) for uid, patient, vector in rows]

    def verification_scores(
        self, conn: Connection, pairs: set[tuple[str, str]], method_version: str
    ) -> dict[tuple[str, str], float]:
        """Stored verification scores of these pairs of SeriesInstanceUIDs, whichever way round they were verified
        (the newest where both were); pairs never verified, or without a score, are absent."""
        if not pairs:
            return {}
        c = verifications_table.c
        uids = sorted({uid for pair in pairs for uid in pair})
        found: dict[tuple[str, str], float] = {}
        for start in range(0, len(uids), 500):
            rows = conn.execute(
                select(c.series_instance_uid, c.candidate_series_instance_uid, c.score)
                .where(c.method_version == method_version, c.series_instance_uid.in_(uids[start : start + 500]))
                .order_by(c.id)
            ).all()
            for series, candidate, score in rows:
                if score is None:
                    continue
                for key in ((series, candidate), (candidate, series)):
                    if key in pairs:
                        found[key] = float(score)
        return found

    def iter_for_reindex(self, source_version: str, batch: int = 256) -> Iterator[dict[str, Any]]:
        """Full rows (with the float16 slice) of one model version, in id order: what ``reindex`` re-embeds."""
        last = 0
        while True:
            with self.reading() as conn:
                rows = conn.execute(
                    select(series_table)
                    .where(
                        series_table.c.model_version == source_version,
                        series_table.c.status == STATUS_FINGERPRINTED,
                        series_table.c.slice_f16.is_not(None),
                        series_table.c.id > last,
                    )
                    .order_by(series_table.c.id)
                    .limit(batch)
                ).mappings().all()
            if not rows:
                return
            yield from (dict(r) for r in rows)
            last = int(rows[-1]["id"])

    def save_thresholds(self, model_version: str, thresholds: dict[str, Any]) -> None:
        """Store (replace) the calibrated thresholds of a model version."""
        with self.locked() as conn:
            conn.execute(thresholds_table.delete().where(thresholds_table.c.model_version == model_version))
            conn.execute(
                thresholds_table.insert().values(
                    model_version=model_version,
                    thresholds=json.dumps(thresholds),
                    updated_at=datetime.now(timezone.utc),
                )
            )

    def load_thresholds(self, model_version: str) -> dict[str, Any] | None:
        with self.reading() as conn:
            text_value = conn.execute(
                select(thresholds_table.c.thresholds).where(thresholds_table.c.model_version == model_version)
            ).scalar_one_or_none()
        return json.loads(text_value) if text_value else None

    def model_versions(self) -> dict[str, int]:
        """Fingerprinted series per model version."""
        with self.reading() as conn:
            rows = conn.execute(
                select(series_table.c.model_version, func.count())
                .where(series_table.c.status == STATUS_FINGERPRINTED)
                .group_by(series_table.c.model_version)
            )
            return {r[0]: int(r[1]) for r in rows}


def _summary_columns() -> list[Column]:
    c = series_table.c
    return [c.id, c.series_instance_uid, c.study_instance_uid, c.patient_id_hash, c.study_date, c.source]


def _summary(row: Any) -> dict[str, Any]:
    source = json.loads(row["source"] or "{}")
    return {
        "row_id": int(row["id"]),
        "series_instance_uid": row["series_instance_uid"],
        "study_instance_uid": row["study_instance_uid"],
        "patient_id_hash": row["patient_id_hash"],
        "study_date": row["study_date"],
        "source": {k: v for k, v in source.items() if k in {"orthanc_id", "calling_ae_title", "folder"}},
    }


def _enable_sqlite_immediate_transactions(engine: Engine) -> None:
    """Let :meth:`Store.locked` open ``BEGIN IMMEDIATE`` (SQLite's write lock, taken at begin) and use WAL.

    pysqlite's own transaction handling is switched off so that SQLAlchemy's ``begin`` event emits BEGIN itself;
    this is the recipe from the SQLAlchemy SQLite dialect documentation.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.info.pop("dbp_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
