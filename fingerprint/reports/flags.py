"""The mislabeled-study report: every alarm of the archive, newest first, with its evidence and what to do next.

A flag is a recorded series whose verdict is an alarm (``identity_mismatch``, ``possible_duplicate``,
``needs_review``). Each carries the study and series identifiers (to find them in the PACS), the PatientIDs involved
(their keyed hashes, or the clear ID where the site keeps it), both scores and which calibration decided, the
review state (:mod:`fingerprint.identity.reviews`), and pictures people can decide by: the new scan's canonical
slice beside the slices it was compared with (the PatientID's own earlier scan that decided, the best other
PatientID's scan), and each verification's checkerboard of the two registered brains.

Example::

    flags = collect_flags(store, since=date(2026, 11, 1), state="open")
    paths = write_flags_report(flags, Path("reports"))   # flags.html (pictures inline), flags.csv, flags.json
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import select

from fingerprint.identity.reviews import OPEN, STATES, flag_id, reviews, row_id_of
from fingerprint.identity.store import Store, series_table, slice_from_bytes, vector_from_bytes
from fingerprint.identity.verdicts import ALARMS, IDENTITY_MISMATCH, NEEDS_REVIEW, POSSIBLE_DUPLICATE

NEXT_STEPS = {
    IDENTITY_MISMATCH: "The scan does not show the person of this PatientID's earlier scans. Check who the study "
    "belongs to (requisition, demographics); if it was filed under the wrong patient, move it in the PACS. Where "
    "another PatientID matches, that is the likely owner.",
    POSSIBLE_DUPLICATE: "The first scan of this PatientID shows a person already archived under another PatientID. "
    "Compare the two patients' demographics; if they are one person, merge the records.",
    NEEDS_REVIEW: "The scores fall between the thresholds: compare the pictures and decide whether the scans show "
    "one person; acknowledge the flag with what you found.",
}


@dataclass
class Picture:
    """One picture of a flag's evidence, with what it shows."""

    caption: str
    png: bytes = field(repr=False)


@dataclass
class Flag:
    """One alarm, as the report shows it."""

    flag: str
    recorded_at: str
    verdict: str
    reason: str
    next_step: str
    study_instance_uid: str
    series_instance_uid: str
    study_date: str
    patient: str  # the PatientID's keyed hash, or the clear PatientID where the site keeps it
    matched_patient: str | None
    score: float | None
    verification_score: float | None
    decided_by: str | None
    thresholds: dict[str, Any] | None
    verification_thresholds: dict[str, Any] | None
    state: str = OPEN
    comment: str = ""
    reviewer: str = ""
    reviewed_at: str | None = None
    pictures: list[Picture] = field(default_factory=list, repr=False)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pictures"] = [p.caption for p in self.pictures]
        return data


def collect_flags(
    store: Store,
    since: date | None = None,
    state: str | None = None,
    pictures: bool = True,
    model: Any = None,
    only: str | None = None,
) -> list[Flag]:
    """Every alarm recorded on or after ``since`` (a calendar day, UTC), newest first, optionally only those in
    review ``state``; ``pictures`` adds the evidence pictures (slices from the store, verification checkerboards),
    and with the ``model`` that made the flags' fingerprints, a saliency map of what the fingerprint looked at.
    ``only``: just this flag (``F<row id>``), if it is one."""
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    c = series_table.c
    query = select(series_table).where(c.verdict.in_(ALARMS)).order_by(c.created_at.desc(), c.id.desc())
    if since is not None:
        query = query.where(c.created_at >= datetime(since.year, since.month, since.day, tzinfo=timezone.utc))
    if only is not None:
        query = query.where(c.id == row_id_of(only))
    with store.reading() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    states = reviews(store, [int(r["id"]) for r in rows])
    flags = []
    for row in rows:
        review = states.get(int(row["id"]), {"state": OPEN})
        if state is not None and review["state"] != state:
            continue
        flags.append(_flag(store, row, review, pictures, model))
    return flags


def _flag(store: Store, row: dict[str, Any], review: dict[str, Any], with_pictures: bool, model: Any = None) -> Flag:
    evidence = json.loads(row["evidence"] or "{}")
    deciding = _deciding_uid(evidence, row)
    verification_score = next(
        (v.get("verification") for v in evidence.get("verified", []) if v.get("series_instance_uid") == deciding), None
    )
    created = row["created_at"]
    flag = Flag(
        flag=flag_id(row["id"]),
        recorded_at=created.isoformat() if created else "",
        verdict=row["verdict"],
        reason=evidence.get("reason", ""),
        next_step=NEXT_STEPS.get(row["verdict"], ""),
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        study_date=row["study_date"],
        patient=row["patient_id"] or row["patient_id_hash"],
        matched_patient=evidence.get("matched_patient_id_hash"),
        score=row["score"],
        verification_score=verification_score,
        decided_by=evidence.get("decided_by"),
        thresholds=evidence.get("thresholds"),
        verification_thresholds=evidence.get("verification_thresholds"),
        state=review["state"],
        comment=review.get("comment", ""),
        reviewer=review.get("reviewer", ""),
        reviewed_at=review.get("updated_at"),
    )
    if with_pictures:
        flag.pictures = _pictures(store, row, evidence, model)
    return flag


def _deciding_uid(evidence: dict[str, Any], row: dict[str, Any]) -> str | None:
    """The scan the verdict rests on: the own earlier scan that decided, else the matched other PatientID's scan."""
    own = evidence.get("own_scans", {}).get("deciding_series_instance_uid")
    if own and row["verdict"] != POSSIBLE_DUPLICATE:
        return own
    matched = evidence.get("matched_patient_id_hash")
    for entry in evidence.get("verified", []):
        if matched and entry.get("patient_id_hash") == matched:
            return entry.get("series_instance_uid")
    best = evidence.get("best_other") or {}
    return own or best.get("series_instance_uid")


def _pictures(store: Store, row: dict[str, Any], evidence: dict[str, Any], model: Any = None) -> list[Picture]:
    """The new scan's slice, the slices it was compared with, the verification checkerboards, and (with the model
    that made the fingerprints) where the fingerprint looked when it compared the new scan with the deciding one."""
    compared: list[tuple[str, str]] = []
    own = evidence.get("own_scans", {}).get("deciding_series_instance_uid")
    if own:
        compared.append((own, "this PatientID's earlier scan that decided"))
    matched = evidence.get("matched_patient_id_hash")
    other = next((e for e in evidence.get("verified", [])
                  if matched and e.get("patient_id_hash") == matched), None) or evidence.get("best_other")
    if other and other.get("series_instance_uid") != own:
        what = "the matched scan of another PatientID" if matched else "the most alike scan of another PatientID (no match)"
        compared.append((other["series_instance_uid"], what))
    pictures = []
    new_slice = slice_from_bytes(row["slice_f16"]) if row["slice_f16"] is not None else None
    if new_slice is not None:
        pictures.append(Picture("the new scan's canonical slice", slice_png(new_slice)))
    stored = _stored_views(store, [uid for uid, _ in compared], row["model_version"])
    slices = {uid: pixels for uid, (pixels, _vector) in stored.items()}
    similarities = {e.get("series_instance_uid"): e.get("similarity") for e in evidence.get("verified", [])}
    best = evidence.get("best_other") or {}
    similarities.setdefault(best.get("series_instance_uid"), best.get("similarity"))
    for uid, what in compared:
        if uid in slices:
            similarity = similarities.get(uid)
            caption = what + (f" (fingerprint similarity {similarity:.4f})" if isinstance(similarity, float) else "")
            pictures.append(Picture(caption, slice_png(slices[uid])))
    if model is not None and compared and compared[0][0] in stored and new_slice is not None \
            and getattr(model, "model_version", None) == row["model_version"]:
        from fingerprint.model.saliency import saliency_map, saliency_png

        heat = saliency_map(model, new_slice, stored[compared[0][0]][1])
        pictures.append(Picture(f"what the fingerprint looked at, comparing with {compared[0][1]} (gradient "
                                "saliency)", saliency_png(new_slice, heat)))
    for entry in evidence.get("verified", []):
        if entry.get("verification_id"):
            verification = store.verification(int(entry["verification_id"]))
            if verification and verification.get("evidence_png"):
                who = "same PatientID" if entry.get("same_patient_id") else "another PatientID"
                score = entry.get("verification")
                caption = f"3D verification against a scan of {who}" + (
                    f" (score {score:.3f})" if isinstance(score, float) else "")
                pictures.append(Picture(caption, verification["evidence_png"]))
    return pictures


def _stored_views(store: Store, uids: list[str], model_version: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The stored canonical slice and fingerprint of these series, by SeriesInstanceUID."""
    if not uids:
        return {}
    c = series_table.c
    with store.reading() as conn:
        rows = conn.execute(
            select(c.series_instance_uid, c.slice_f16, c.vector).where(
                c.series_instance_uid.in_(uids), c.model_version == model_version, c.slice_f16.is_not(None),
                c.vector.is_not(None))
        ).all()
    return {uid: (slice_from_bytes(data), vector_from_bytes(vector)) for uid, data, vector in rows}


def slice_png(pixels: np.ndarray, scale: int = 2) -> bytes:
    """A canonical slice (about 0..1) as a greyscale PNG, enlarged ``scale`` times for viewing."""
    from PIL import Image

    grey = np.clip(np.round(np.asarray(pixels, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    picture = Image.fromarray(grey, mode="L")
    picture = picture.resize((grey.shape[1] * scale, grey.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
