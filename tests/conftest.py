"""Shared fixtures: where the real data lives, and whether the real services answer.

Tests use real components. Where one is missing here (no ``../shared/data``, Redis or PostgreSQL down) the test is
skipped with a message that says exactly what is missing, never silently passed.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DBP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the real DICOM series), or a skip that says it is absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA} (set DBP_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not _port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    return os.environ.get("DBP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --- identity archive (helper "archive") ------------------------------------------------------------------------------
@pytest.fixture
def postgres_schema_url(postgres_url: str):
    """A store URL on the real PostgreSQL server, in a fresh schema of its own (dropped afterwards).

    Archives select their schema through ``options=-csearch_path=...``, so tests never see each other's rows.
    """
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"dbp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def synthetic_fingerprint():
    """Make a FingerprintResult from a chosen vector and identifiers: controlled similarities for verdict tests."""
    import numpy as np

    from fingerprint.types import FingerprintResult, SeriesIdentifiers, SliceResult

    def make(vector, patient_id: str, series_uid: str, study_uid: str = "", model_version: str = "test-model"):
        vector = np.asarray(vector, dtype=np.float32)
        vector = vector / np.linalg.norm(vector)
        ids = SeriesIdentifiers(
            patient_id=patient_id,
            study_instance_uid=study_uid or f"{series_uid}.study",
            series_instance_uid=series_uid,
            sop_instance_uids=(f"{series_uid}.1", f"{series_uid}.2"),
            study_date="20240102",
            modality="MR",
        )
        pixels = np.full((128, 128), 0.5, dtype=np.float32)
        return FingerprintResult(vector=vector, model_version=model_version, slice=SliceResult(pixels, ids))

    return make
