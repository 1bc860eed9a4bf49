"""Right to erasure: remove one patient from the archive, leaving nothing of them behind in the store or the index.

Everything the store holds of a patient's series goes: the series rows (fingerprints, canonical slices, verdicts),
their canonical brains, every verification either of them took part in (scores and evidence pictures), and the
reviews of their flags. Other patients' verdicts name them too (as neighbours, matches, verified candidates): those
mentions are removed from their evidence (:func:`scrub_references`), a match to the erased patient kept as "erased". The FAISS index files of the affected model versions are deleted: they are caches, rebuilt
from the store on the next open, and a vector must not survive in one. The worker's ledger and the DICOM spool are
not the library's; ``deepbrainprint erase`` clears them too.

Run it with the service stopped: a running worker keeps its index in memory until it restarts.

Example::

    erased = erase_patient(archive.store, config.index_dir, archive.hash_patient_id(patient_id))
    erased["series_instance_uids"]   # what the ledger and the spool must forget as well
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select

from fingerprint.identity.index import index_file_path
from fingerprint.identity.store import Store, brains_table, reviews_table, series_table, verifications_table


def erase_patient(store: Store, index_dir: Path, patient_id_hash: str) -> dict[str, Any]:
    """Delete every trace of the patient with this keyed hash; returns what was removed (counts and series UIDs)."""
    s, v, b = series_table.c, verifications_table.c, brains_table.c
    with store.locked() as conn:
        rows = conn.execute(select(s.id, s.series_instance_uid, s.model_version)
                            .where(s.patient_id_hash == patient_id_hash)).all()
        ids = [int(r.id) for r in rows]
        uids = sorted({r.series_instance_uid for r in rows})
        versions = sorted({r.model_version for r in rows})
        verifications = brains = 0
        if uids:
            verifications = conn.execute(verifications_table.delete().where(
                or_(v.series_instance_uid.in_(uids), v.candidate_series_instance_uid.in_(uids)))).rowcount
            brains = conn.execute(brains_table.delete().where(b.series_instance_uid.in_(uids))).rowcount
            conn.execute(reviews_table.delete().where(reviews_table.c.series_id.in_(ids)))
            conn.execute(series_table.delete().where(s.id.in_(ids)))
            mentioned = conn.execute(select(s.id, s.evidence).where(
                or_(s.evidence.contains(patient_id_hash), *[s.evidence.contains(uid) for uid in uids]))).all()
            for row_id, evidence in mentioned:
                cleaned = scrub_references(json.loads(evidence or "{}"), patient_id_hash, set(uids))
                conn.execute(series_table.update().where(s.id == row_id).values(evidence=json.dumps(cleaned)))
    removed_files = []
    for version in versions:
        path = index_file_path(Path(index_dir), version)
        if path.exists():
            path.unlink()
            removed_files.append(path.name)
    return {"series": len(ids), "series_instance_uids": uids, "verifications": int(verifications),
            "brains": int(brains), "index_files_removed": removed_files}


ERASED = "erased"


def scrub_references(data: Any, patient_id_hash: str, series_uids: set[str]) -> Any:
    """``data`` (a verdict or its evidence, JSON-like) without the erased patient: list entries that are one of their
    series (by PatientID hash or SeriesInstanceUID) are dropped, dicts that describe one become None, and any other
    value equal to their hash or one of their UIDs becomes "erased"."""
    if isinstance(data, dict):
        return {key: None if _describes(value, patient_id_hash, series_uids)
                else scrub_references(value, patient_id_hash, series_uids) for key, value in data.items()}
    if isinstance(data, list):
        return [scrub_references(item, patient_id_hash, series_uids) for item in data
                if not _describes(item, patient_id_hash, series_uids)]
    if isinstance(data, str) and (data == patient_id_hash or data in series_uids):
        return ERASED
    return data


def _describes(item: Any, patient_id_hash: str, series_uids: set[str]) -> bool:
    return isinstance(item, dict) and (
        item.get("patient_id_hash") == patient_id_hash or item.get("series_instance_uid") in series_uids)
