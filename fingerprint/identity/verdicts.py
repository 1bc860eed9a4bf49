"""The decision radiology IT acts on: does this series' brain agree with the PatientID it was filed under?

A pure function of (the new series' hashed PatientID, its earlier scans and nearest neighbours with their fingerprint
similarities and, where computed, their verification scores, and the calibrated thresholds of both), so it is tested
without any database or model.

Two opinions: the fingerprint (fast, approximate, its scale shifted by scanner and protocol) finds the candidates;
the verification stage (:mod:`fingerprint.identity.verification`: the two brains registered, their fine anatomy compared)
decides wherever it was computed. The fingerprint decides alone only for candidates with no canonical brain (series
recorded before the verification stage, the middle-slice method).

The six verdicts (the JSON field ``verdict``; names are a stable interface):

* ``consistent``: the PatientID has earlier scans and the best of them is confirmed: verification at or above its
  ``match`` (or, unverified, fingerprint similarity at or above the fingerprint's ``match``). Another series of the
  same study counts as an earlier scan: two series of one study are ``consistent``, never a duplicate. When another
  PatientID is confirmed too, the evidence names it (``also_matches_patient_id_hash``).
* ``identity_mismatch``: the PatientID has earlier scans and the best of them falls below ``mismatch`` (wrong patient,
  swapped study); the confirmed other PatientID (hash) is named when there is one.
* ``possible_duplicate``: no earlier scans of this PatientID, but another PatientID is confirmed (one person under two
  IDs); that PatientID (hash) is named.
* ``new_patient``: no earlier scans of this PatientID and nobody else confirmed or near it.
* ``needs_review``: the evidence does not decide: the best earlier scan of its own PatientID, or the best other
  PatientID of a first scan, scores between ``mismatch`` and ``match``. Never a silent ``consistent``; both scores
  are given.
* ``rejected``: not a usable T1 brain series (decided before any search; see :func:`rejected_verdict`).

``score`` is always the fingerprint similarity of the candidate that decided (the PatientID's best earlier scan for
``consistent``, ``identity_mismatch`` and a review of its own scans; the best other PatientID otherwise; null when
the archive holds nothing to compare with, and for ``rejected``); ``verification_score`` is that candidate's
verification score, or null; ``decided_by`` says which of the two decided.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fingerprint.errors import SeriesRejected
from fingerprint.identity.calibration import Thresholds

CONSISTENT = "consistent"
NEW_PATIENT = "new_patient"
POSSIBLE_DUPLICATE = "possible_duplicate"
IDENTITY_MISMATCH = "identity_mismatch"
REJECTED = "rejected"
NEEDS_REVIEW = "needs_review"
VERDICTS = (CONSISTENT, NEW_PATIENT, POSSIBLE_DUPLICATE, IDENTITY_MISMATCH, NEEDS_REVIEW, REJECTED)
#: Verdicts that ask a person to look (the CLI's exit code 4, the reports' flags).
ALARMS = (IDENTITY_MISMATCH, POSSIBLE_DUPLICATE, NEEDS_REVIEW)


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
    verification: float | None = None  # the verification score, where the pair was verified and could be scored
    verifiable: bool = False  # both series have canonical brains: only a verification may confirm this candidate

    def as_json(self, own_patient_hash: str) -> dict[str, Any]:
        data = asdict(self)
        data["similarity"] = round(self.similarity, 6)
        data["verification"] = None if self.verification is None else round(self.verification, 4)
        data["same_patient_id"] = bool(own_patient_hash) and self.patient_id_hash == own_patient_hash
        return data


def decide(
    patient_id_hash: str,
    own_scans: list[Candidate],
    neighbours: list[Candidate],
    thresholds: Thresholds,
    verification_thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """The verdict, its scores, the PatientID it points to (if any) and the evidence, as a JSON-ready dict.

    ``own_scans``: every earlier series of this PatientID (exact similarities, not limited to top-k).
    ``neighbours``: the nearest stored series of the index (the series itself already left out).
    A candidate's ``verification`` counts only with ``verification_thresholds``.
    """
    vt = verification_thresholds
    if vt is None:  # no calibrated verification: the fingerprint decides everything
        own_scans = [replace(c, verification=None, verifiable=False) for c in own_scans]
        neighbours = [replace(c, verification=None, verifiable=False) for c in neighbours]
    others = sorted(
        (n for n in neighbours if not patient_id_hash or n.patient_id_hash != patient_id_hash),
        key=lambda n: n.similarity,
        reverse=True,
    )
    other_judged = [_judge(c, thresholds, vt) for c in others]
    confirmed_others = [(c, j) for c, j in zip(others, other_judged) if j[0] == "same"]
    other_match = max(confirmed_others, key=lambda cj: _strength(cj[0]))[0] if confirmed_others else None
    best_other = others[0] if others else None

    evidence: dict[str, Any] = {
        "thresholds": _thresholds_json(thresholds),
        "verification_thresholds": _thresholds_json(vt) if vt is not None else None,
        "own_scans": {"count": len(own_scans)},
        "best_other": best_other.as_json(patient_id_hash) if best_other else None,
        "verified": [c.as_json(patient_id_hash) for c in [*own_scans, *others] if c.verification is not None],
    }
    if thresholds.source == "fallback":
        evidence["thresholds"]["warning"] = thresholds.details.get("warning", "uncalibrated fallback thresholds")
    matched: str | None = None
    if own_scans:
        deciding = _deciding(own_scans)
        judgement, decided_by = _judge(deciding, thresholds, vt)
        evidence["own_scans"].update(
            best_similarity=round(max(c.similarity for c in own_scans), 6),
            deciding_series_instance_uid=deciding.series_instance_uid,
        )
        if judgement == "same":
            verdict, reason = CONSISTENT, "matches earlier scans of the same PatientID"
            if other_match is not None:
                evidence["also_matches_patient_id_hash"] = other_match.patient_id_hash
                reason += "; also matches another PatientID"
        elif judgement == "different":
            verdict = IDENTITY_MISMATCH
            matched = other_match.patient_id_hash if other_match is not None else None
            reason = "does not match the earlier scans of its PatientID"
            reason += "; matches another PatientID" if matched is not None else "; matches nobody else either"
        else:  # undecided, or could not be scored
            verdict, reason = NEEDS_REVIEW, "the evidence neither confirms nor rules out its own PatientID's earlier scans"
    elif other_match is not None:
        verdict, deciding = POSSIBLE_DUPLICATE, other_match
        decided_by = _judge(other_match, thresholds, vt)[1]
        matched = other_match.patient_id_hash
        reason = "first scan of this PatientID, but it matches another PatientID's scan"
    else:
        undecided = [c for c, j in zip(others, other_judged) if j[0] == "undecided" and c.verification is not None]
        if undecided:
            deciding = max(undecided, key=_strength)
            verdict, decided_by = NEEDS_REVIEW, "verification"
            reason = "first scan of this PatientID; another PatientID is neither confirmed nor ruled out"
        else:
            verdict, deciding = NEW_PATIENT, best_other
            decided_by = "verification" if best_other is not None and best_other.verification is not None else "fingerprint"
            reason = "first scan of this PatientID and no match to anyone else"
    evidence["reason"] = reason
    evidence["decided_by"] = decided_by
    return {
        "verdict": verdict,
        "score": round(float(deciding.similarity), 6) if deciding is not None else None,
        "verification_score": (
            round(float(deciding.verification), 4) if deciding is not None and deciding.verification is not None else None
        ),
        "decided_by": decided_by,
        "matched_patient_id_hash": matched,
        "neighbours": [n.as_json(patient_id_hash) for n in neighbours],
        "evidence": evidence,
    }


def _judge(candidate: Candidate, thresholds: Thresholds, vt: Thresholds | None) -> tuple[str, str]:
    """("same" | "different" | "undecided" | "unverified", which opinion said so) for one candidate.

    A candidate that could have been verified but was not (not among the few picked, or too little shared anatomy)
    is "unverified": its fingerprint similarity alone neither confirms nor rules it out."""
    if vt is not None and candidate.verification is not None:
        value, t, by = candidate.verification, vt, "verification"
    elif vt is not None and candidate.verifiable:
        return "unverified", "verification"  # not picked for verification, or too little shared anatomy to score
    else:
        value, t, by = candidate.similarity, thresholds, "fingerprint"
    if value >= t.match:
        return "same", by
    if value < t.mismatch:
        return "different", by
    return "undecided", by


def _strength(candidate: Candidate) -> tuple[int, float]:
    """Order candidates by the strongest opinion they have: a verification outranks a fingerprint similarity."""
    if candidate.verification is not None:
        return 1, candidate.verification
    return 0, candidate.similarity


def _deciding(own_scans: list[Candidate]) -> Candidate:
    """The own earlier scan that decides: the best verified one, else the most similar fingerprint."""
    return max(own_scans, key=_strength)


def _thresholds_json(t: Thresholds) -> dict[str, Any]:
    """The thresholds a verdict was decided with, and which calibration they are: what they were fitted on (a cohort,
    the site's own archive), for which site, when, and where they were read from (the store or a file)."""
    d = t.details
    return {
        "match": t.match,
        "mismatch": t.mismatch,
        "far": t.far,
        "source": t.source,
        "model_version": t.model_version,
        "calibrated_on": d.get("source") or d.get("cohort") or d.get("set"),
        "site": d.get("site"),
        "calibrated_at": d.get("calibrated_at"),
        "read_from": d.get("from"),
    }


def rejected_verdict(rejection: SeriesRejected) -> dict[str, Any]:
    """The verdict of a series the pipeline refused: the stable reason code and the detail, nothing searched."""
    return {
        "verdict": REJECTED,
        "score": None,
        "verification_score": None,
        "decided_by": None,
        "matched_patient_id_hash": None,
        "neighbours": [],
        "evidence": {"reason": rejection.reason.value, "detail": rejection.detail},
        "rejected": rejection.reason.value,
        "detail": rejection.detail,
    }
