"""The verification stage inside the archive: which candidates to verify, verifying them once, recording the evidence.

Only the few candidates that decide a verdict are verified (each pair costs a registration):

* the PatientID's own earlier scans with the most similar fingerprints (``verify_own_scans``), always;
* the best scan of each of the other PatientIDs with the most similar fingerprints (``verify_other_patients``), at or
  above the fingerprint's ``mismatch`` threshold, unless an own scan was already confirmed and no other PatientID
  comes near the fingerprint's ``match``.

:class:`PairVerifier` keeps every result for the life of one series' decision, so the archive can verify outside its
write lock (the heavy part) and, inside it, verify only the candidates another process recorded in between.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.verdicts import Candidate
from fingerprint.identity.verification import (
    METHOD_VERSION,
    PreparedBrain,
    VerificationResult,
    evidence_png,
    prepare,
    verify,
)
from fingerprint.imaging.brain import brain_from_bytes


@dataclass(frozen=True)
class Picks:
    """How many candidates of each kind to verify, and the fingerprint floor for other PatientIDs."""

    own_scans: int
    other_patients: int


class PairVerifier:
    """Verifies one new series' canonical brain against stored candidates, each candidate at most once."""

    def __init__(self, store: Any, brain: np.ndarray, keep_pictures: bool = True, threads: int = 2) -> None:
        self.store = store
        self.brain = brain
        self.keep_pictures = keep_pictures
        self.threads = max(1, int(threads))  # candidates of one round verified side by side, each on one thread
        self._prepared: PreparedBrain | None = None
        self.results: dict[str, VerificationResult] = {}  # by candidate SeriesInstanceUID
        self.with_brain: set[str] = set()  # candidates known to have a stored brain
        self._checked: set[str] = set()  # candidates whose brain was looked up
        self._digests: dict[str, str] = {}  # the stored brain each result was computed with
        self._patients: dict[str, str] = {}  # candidate SeriesInstanceUID -> its PatientID hash

    # --- choosing ---------------------------------------------------------------------------------------------------
    def pick(
        self,
        own: list[Candidate],
        neighbours: list[Candidate],
        patient_id_hash: str,
        picks: Picks,
        thresholds: Thresholds,
        verification_thresholds: Thresholds,
    ) -> list[Candidate]:
        """The candidates to verify now (see the module docstring); already verified ones are included again."""
        chosen = sorted(own, key=lambda c: c.similarity, reverse=True)[: picks.own_scans]
        if any(c.series_instance_uid not in self._checked for c in chosen):
            return chosen  # own scans first: their result says whether other PatientIDs are needed at all
        others = _best_per_patient(n for n in neighbours if not patient_id_hash or n.patient_id_hash != patient_id_hash)
        confirmed_own = any(
            (r := self.results.get(c.series_instance_uid)) is not None
            and r.score is not None
            and r.score >= verification_thresholds.match
            for c in chosen
        )
        others_near = any(c.similarity >= thresholds.match for c in others)
        if not confirmed_own or others_near:
            chosen += other_patients_to_verify(others, thresholds, picks.other_patients)
        return chosen

    # --- verifying --------------------------------------------------------------------------------------------------
    def run(self, conn: Any, candidates: list[Candidate]) -> None:
        """Load the brains of the candidates not yet verified (in ``conn``) and verify them."""
        wanted = [c.series_instance_uid for c in candidates if c.series_instance_uid not in self._checked]
        self._patients.update({c.series_instance_uid: c.patient_id_hash for c in candidates})
        brains = self.store.brains(conn, wanted, METHOD_VERSION) if wanted else {}
        self._checked.update(wanted)
        self.with_brain.update(brains)
        if not brains:
            return
        if self._prepared is None:
            self._prepared = prepare(self.brain)
        fixed = self._prepared

        def verified(data: bytes) -> VerificationResult:
            return verify(fixed, prepare(brain_from_bytes(data)), self.keep_pictures)

        # Each registration runs on one thread and releases the GIL, so a round's candidates (up to the PatientID's
        # own 2 scans, then up to 3 other PatientIDs) share the cores; the scores are those of one at a time.
        uids = list(brains)
        self._digests.update({uid: _digest(brains[uid]) for uid in uids})
        if self.threads == 1 or len(uids) == 1:
            outcomes = [verified(brains[uid]) for uid in uids]
        else:
            with ThreadPoolExecutor(max_workers=min(self.threads, len(uids))) as pool:
                outcomes = list(pool.map(verified, [brains[uid] for uid in uids]))
        self.results.update(zip(uids, outcomes))

    def forget_changed(self, conn: Any) -> None:
        """Drop the results whose candidate's stored brain is no longer the one verified (the series was processed
        again, or erased, since): they are looked up and verified afresh. For a verifier kept across transactions,
        as the work done ahead of a hand-on is."""
        stored = self.store.brains(conn, list(self.results), METHOD_VERSION) if self.results else {}
        for uid in list(self.results):
            if uid not in stored or _digest(stored[uid]) != self._digests.get(uid):
                del self.results[uid]
                self._digests.pop(uid, None)
                self._checked.discard(uid)
                self.with_brain.discard(uid)

    def note_brains(self, conn: Any, candidates: list[Candidate]) -> None:
        """Find out which candidates have a stored brain (those only a verification may confirm)."""
        unknown = [c.series_instance_uid for c in candidates if c.series_instance_uid not in self._checked]
        if unknown:
            self.with_brain.update(self.store.brain_uids(conn, unknown, METHOD_VERSION))
            self._checked.update(unknown)

    def annotate(self, candidates: list[Candidate]) -> list[Candidate]:
        """The candidates with their verification scores and whether they could have been verified."""
        out = []
        for c in candidates:
            result = self.results.get(c.series_instance_uid)
            out.append(
                replace(
                    c,
                    verification=result.score if result is not None else None,
                    verifiable=c.series_instance_uid in self.with_brain,
                )
            )
        return out

    # --- recording --------------------------------------------------------------------------------------------------
    def record(self, conn: Any, series_instance_uid: str, verdict: dict[str, Any], own_patient_hash: str) -> None:
        """Store each verification used by the verdict (score, registration, evidence picture) and point the
        verdict's evidence entries at them (``verification_id``). Verifications that gave no score (the registration
        ran off, or too little shared brain) are listed under ``evidence["unscored"]`` with their reason, and whether
        each was one of this PatientID's own scans (the case that makes the verdict ``needs_review``)."""
        for entry in verdict["evidence"].get("verified", []):
            result = self.results.get(entry["series_instance_uid"])
            if result is None:
                continue
            picture = None
            if self.keep_pictures and result.registered is not None:
                who = "same PatientID" if entry.get("same_patient_id") else "another PatientID"
                picture = evidence_png(self.brain, result.registered, result.score, f"this series vs {who}")
            entry["verification_id"] = self.store.save_verification(
                conn,
                series_instance_uid,
                entry["series_instance_uid"],
                METHOD_VERSION,
                result.score,
                result.as_json(),
                picture,
            )
            entry["verification_details"] = result.as_json()
        unscored = [  # shaped like the verified entries: the registration's figures under verification_details
            {
                "series_instance_uid": uid,
                "same_patient_id": self._patients.get(uid) == own_patient_hash,
                "reason": result.unscored,
                "verification_details": result.as_json(),
            }
            for uid, result in self.results.items()
            if result.score is None
        ]
        if unscored:  # verified but without a score: say why, as the verdict cannot lean on them
            verdict["evidence"]["unscored"] = unscored


def other_patients_to_verify(others: list[Candidate], thresholds: Thresholds, how_many: int) -> list[Candidate]:
    """Of ``others`` (the best scan of each other PatientID, most similar first), those put to the verification: at
    or above the fingerprint's ``mismatch`` threshold, at most ``how_many``. A duplicate whose fingerprint falls below
    that floor is never verified and comes out ``new_patient``; the real-head benchmark applies this same rule
    (:func:`fingerprint.evaluation.identity_benchmark.verdict_figures`), so its share of duplicates found includes
    that loss."""
    return [c for c in others if c.similarity >= thresholds.mismatch][:how_many]


def _best_per_patient(candidates: Any) -> list[Candidate]:
    """The most similar candidate of each PatientID, most similar first."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.patient_id_hash not in best or c.similarity > best[c.patient_id_hash].similarity:
            best[c.patient_id_hash] = c
    return sorted(best.values(), key=lambda c: c.similarity, reverse=True)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
