"""The decision radiology IT acts on: does this series' brain agree with the PatientID it was filed under?

A pure function of (the new series' hashed PatientID, its similarity to that PatientID's earlier scans, its nearest
neighbours among everyone else, the calibrated thresholds), so it is tested without any database or model.

The five verdicts (the JSON field ``verdict``; names are a stable interface):

* ``consistent``: the PatientID has earlier scans and the best of them reaches the ``mismatch`` threshold. Another
  series of the same study (a second T1 of one visit) counts as an earlier scan: it is the same patient, so two
  series of one study are ``consistent``, never a duplicate. Between ``mismatch`` and ``match`` the evidence says
  ``uncertain`` (no alarm: the calibrated false-alarm rate is what radiology IT agreed to).
* ``identity_mismatch``: the PatientID has earlier scans and none reaches ``mismatch`` (wrong patient, swapped study);
  the best-matching other PatientID (hash) is named when one reaches ``match``.
* ``possible_duplicate``: no earlier scans of this PatientID, but another PatientID's scan reaches ``match`` (same
  person filed under two IDs); that PatientID (hash) is named.
* ``new_patient``: no earlier scans of this PatientID and no match to anyone else.
* ``rejected``: not a usable T1 brain series (decided before any search; see :func:`rejected_verdict`).

``score`` is the similarity that decided: to the PatientID's own best earlier scan for ``consistent`` and
``identity_mismatch``, to the best other PatientID for ``possible_duplicate`` and ``new_patient`` (null when the
archive holds nothing to compare with, and for ``rejected``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fingerprint.calibration import Thresholds
from fingerprint.errors import SeriesRejected

CONSISTENT = "consistent"
NEW_PATIENT = "new_patient"
POSSIBLE_DUPLICATE = "possible_duplicate"
IDENTITY_MISMATCH = "identity_mismatch"
REJECTED = "rejected"
VERDICTS = (CONSISTENT, NEW_PATIENT, POSSIBLE_DUPLICATE, IDENTITY_MISMATCH, REJECTED)


@dataclass(frozen=True)
class Candidate:
    """A stored series compared with the new one. ``patient_id_hash`` is the keyed hash, never the clear ID."""

    row_id: int
    similarity: float
    patient_id_hash: str
    series_instance_uid: str
    study_instance_uid: str = ""
    study_date: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    def as_json(self, own_patient_hash: str) -> dict[str, Any]:
        data = asdict(self)
        data["similarity"] = round(self.similarity, 6)
        data["same_patient_id"] = bool(own_patient_hash) and self.patient_id_hash == own_patient_hash
        return data


def decide(
    patient_id_hash: str,
    own_scans: list[Candidate],
    neighbours: list[Candidate],
    thresholds: Thresholds,
) -> dict[str, Any]:
    """The verdict, its score, the PatientID it points to (if any) and the evidence, as a JSON-ready dict.

    ``own_scans``: every earlier series of this PatientID (exact similarities, not limited to top-k).
    ``neighbours``: the nearest stored series of the index (the series itself already left out).
    """
    others = sorted(
        (n for n in neighbours if not patient_id_hash or n.patient_id_hash != patient_id_hash),
        key=lambda n: n.similarity,
        reverse=True,
    )
    best_other = others[0] if others else None
    other_matches = best_other is not None and best_other.similarity >= thresholds.match
    best_own = max(own_scans, key=lambda c: c.similarity) if own_scans else None

    evidence: dict[str, Any] = {
        "thresholds": {
            "match": thresholds.match,
            "mismatch": thresholds.mismatch,
            "far": thresholds.far,
            "source": thresholds.source,
            "model_version": thresholds.model_version,
        },
        "own_scans": {
            "count": len(own_scans),
            "best_similarity": round(best_own.similarity, 6) if best_own else None,
            "best_series_instance_uid": best_own.series_instance_uid if best_own else None,
        },
        "best_other": best_other.as_json(patient_id_hash) if best_other else None,
        "uncertain": False,
    }
    if thresholds.source == "fallback":
        evidence["thresholds"]["warning"] = thresholds.details.get("warning", "uncalibrated fallback thresholds")
    matched: str | None = None
    if best_own is not None:
        score = best_own.similarity
        if best_own.similarity >= thresholds.mismatch:
            verdict = CONSISTENT
            evidence["uncertain"] = best_own.similarity < thresholds.match
            reason = "matches earlier scans of the same PatientID"
            if other_matches:
                evidence["also_matches_patient_id_hash"] = best_other.patient_id_hash  # type: ignore[union-attr]
                reason += "; also matches another PatientID strongly"
        else:
            verdict = IDENTITY_MISMATCH
            matched = best_other.patient_id_hash if other_matches else None  # type: ignore[union-attr]
            reason = "does not match the earlier scans of its PatientID"
            reason += "; matches another PatientID" if matched is not None else "; matches nobody else either"
    elif other_matches:
        verdict = POSSIBLE_DUPLICATE
        score = best_other.similarity  # type: ignore[union-attr]
        matched = best_other.patient_id_hash  # type: ignore[union-attr]
        reason = "first scan of this PatientID, but it matches another PatientID's scan"
    else:
        verdict = NEW_PATIENT
        score = best_other.similarity if best_other else None
        reason = "first scan of this PatientID and no match to anyone else"
    evidence["reason"] = reason
    return {
        "verdict": verdict,
        "score": round(float(score), 6) if score is not None else None,
        "matched_patient_id_hash": matched,
        "neighbours": [n.as_json(patient_id_hash) for n in neighbours],
        "evidence": evidence,
    }


def rejected_verdict(rejection: SeriesRejected) -> dict[str, Any]:
    """The verdict of a series the pipeline refused: the stable reason code and the detail, nothing searched."""
    return {
        "verdict": REJECTED,
        "score": None,
        "matched_patient_id_hash": None,
        "neighbours": [],
        "evidence": {"reason": rejection.reason.value, "detail": rejection.detail},
        "rejected": rejection.reason.value,
        "detail": rejection.detail,
    }
