"""Keyed hashing of PatientIDs, so the archive can link scans of one patient without storing who the patient is.

Why a *keyed* hash (HMAC-SHA256) and not a plain SHA-256: PatientIDs are short and structured (hospital numbers),
so a plain hash is reversed by trying them all. With a secret site key nobody without the key can do that, yet the
same PatientID always gives the same hash inside one site, which is all the verdicts need.

The key is given by the caller (the site's ``patient_id_hash_key`` setting, from the environment or the config file,
never the command line); without one, a random key is created once in the index folder (mode 0600) and reused from then on. Losing that
file means new hashes no longer link to old ones, so back it up with the store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE_NAME = "patient_id.key"
#: Hashes are stored and shown with this prefix so nobody mistakes them for clear PatientIDs.
HASH_PREFIX = "h:"


def load_or_create_key(index_dir: Path, configured_key: str = "") -> bytes:
    """The site's hash key: ``configured_key`` if given, else the key file in ``index_dir`` (created 0600 if absent)."""
    if configured_key:
        return configured_key.encode("utf-8")
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / KEY_FILE_NAME
    if not path.exists():
        _create_key_file(path)
    key = path.read_text(encoding="ascii").strip()
    if not key:
        raise RuntimeError(f"the PatientID hash key file {path} is empty; restore it from backup")
    return key.encode("ascii")


def _create_key_file(path: Path) -> None:
    """Write a new random key with 0600 permissions; if another process wins the race, keep its key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def hash_patient_id(patient_id: str, key: bytes) -> str:
    """``h:`` + HMAC-SHA256 hex of the stripped PatientID; "" for an empty PatientID (nothing to link on)."""
    cleaned = (patient_id or "").strip()
    if not cleaned:
        return ""
    return HASH_PREFIX + hmac.new(key, cleaned.encode("utf-8"), hashlib.sha256).hexdigest()
