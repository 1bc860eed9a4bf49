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
