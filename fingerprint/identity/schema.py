"""Creating the tables of a database that several processes may open for the first time at one moment.

Kept apart from the store so the job ledger (``worker.ledger``) can use it without the store's imports.
"""

from __future__ import annotations

import time

from sqlalchemy import MetaData, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError


def create_tables(engine: Engine, tables: MetaData) -> None:
    """Create the missing tables of ``tables``, safe when several processes open a fresh database at one moment.

    On PostgreSQL the check-and-create runs in one transaction holding an advisory lock for the schema, so creators
    take turns and a later one finds the tables made (a CREATE TABLE that merely lost the race would fail with a
    unique violation in PostgreSQL's catalogue). SQLite serialises writers itself; a creator that still collides
    (a locked database, a table made in between) tries again, three times in all.

    Example::

        create_tables(create_engine("postgresql+psycopg://postgres@127.0.0.1/test"), metadata)
    """
    for attempt in range(3):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('deepbrainprint-schema:' || current_schema()))"))
                tables.create_all(conn, checkfirst=True)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
