"""The real-head benchmark's arithmetic, on hand-made matrices (no pipeline, no model)."""

from __future__ import annotations

import numpy as np

from fingerprint.evaluation.identity_benchmark import (
    reranked,
    retrieval_and_pairs,
    verdict_figures,
)
from fingerprint.evaluation.identity_data import PairScores
from fingerprint.identity.calibration import Thresholds

FINGERPRINT = Thresholds("m", match=0.9, mismatch=0.5, far=0.001, source="explicit")
VERIFY = Thresholds("dbp-verify-v1", match=0.4, mismatch=0.3, far=0.001, source="calibrated")
PEOPLE = np.array(["a", "a", "b", "c"])


def matrices() -> tuple[np.ndarray, np.ndarray]:
    """Fingerprints that confuse a and b (0.95) and rank a's own scan last; a verification that does not."""
    fingerprint = np.array(
        [[1.0, 0.8, 0.95, 0.6], [0.8, 1.0, 0.7, 0.6], [0.95, 0.7, 1.0, 0.6], [0.6, 0.6, 0.6, 1.0]]
    )
    verification = np.array(
        [[1.0, 0.7, 0.1, 0.05], [0.7, 1.0, 0.2, 0.1], [0.1, 0.2, 1.0, 0.15], [0.05, 0.1, 0.15, 1.0]]
    )
    return fingerprint, verification


def test_reranking_puts_the_verified_person_first():
    fingerprint, verification = matrices()
    assert retrieval_and_pairs(fingerprint, PEOPLE)["recall@1"] == 0.5  # a and its twin both miss
    assert retrieval_and_pairs(reranked(fingerprint, verification, k=2), PEOPLE)["recall@1"] == 1.0


def test_verdict_figures_count_false_duplicates_and_planted_cases():
    fingerprint, verification = matrices()
    alone = verdict_figures(fingerprint, None, PEOPLE, FINGERPRINT, None)
    assert alone["false_duplicates"] == 2  # a0 -> b and b -> a0, both ways round
    assert alone["false_duplicate_person_pairs"] == [("a", "b")]
    both = verdict_figures(fingerprint, verification, PEOPLE, FINGERPRINT, VERIFY)
    assert both["false_duplicates"] == 0 and both["distinct_pairs_checked"] == 10
    assert both["mismatch_caught"] == 1.0 and both["duplicate_found"] == 1.0 and both["same_id_consistent"] == 1.0


def test_pair_scores_make_a_symmetric_matrix():
    pairs = PairScores(np.array([0, 1]), np.array([1, 2]), np.array([0.7, np.nan]), np.array([True, False]), np.zeros(2))
    matrix = pairs.as_matrix(3)
    assert matrix[1, 0] == 0.7 and np.isnan(matrix[2, 1]) and np.isnan(matrix[0, 2]) and matrix[2, 2] == 1.0


def test_a_planted_duplicate_is_verified_only_from_the_fingerprint_floor_up_as_in_the_archive():
    """The archive verifies another PatientID only at or above the fingerprint's mismatch threshold
    (verification_stage.other_patients_to_verify); the benchmark's duplicates-found share must pay that loss.
    a's two scans verify at 0.7 (same person) but their fingerprint sits on, then just under, the floor (0.5)."""
    fingerprint, verification = matrices()
    for similarity, found, not_verified in ((0.5, 1.0, 0), (np.nextafter(0.5, 0.0), 0.0, 2)):
        fingerprint[0, 1] = fingerprint[1, 0] = similarity
        both = verdict_figures(fingerprint, verification, PEOPLE, FINGERPRINT, VERIFY)
        assert both["duplicate_found"] == found, similarity
        assert both["duplicates_not_verified"] == not_verified
        assert both["verdicts"]["planted_duplicate"].get("new_patient", 0) == not_verified
        assert both["same_id_consistent"] == 1.0  # own scans are always verified, whatever the fingerprint
