"""Verdict rules and threshold calibration, on controlled similarities (no database, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepbrainprint.settings import load_settings
from fingerprint.errors import RejectReason, SeriesRejected
from fingerprint.identity.calibration import (
    Thresholds,
    calibrate_cohort,
    fallback_thresholds,
    pair_similarities,
    resolve_thresholds,
    save_thresholds,
    site_thresholds_path,
    thresholds_from_similarities,
)
from fingerprint.identity.verdicts import (
    CONSISTENT,
    IDENTITY_MISMATCH,
    NEEDS_REVIEW,
    NEW_PATIENT,
    POSSIBLE_DUPLICATE,
    REJECTED,
    Candidate,
    decide,
    rejected_verdict,
)

THRESHOLDS = Thresholds("m1", match=0.8, mismatch=0.6, far=0.001, source="explicit")
VERIFY = Thresholds("dbp-verify-v1", match=0.4, mismatch=0.3, far=0.001, source="calibrated")


def cand(
    row_id: int, similarity: float, patient: str, study: str = "", verification: float | None = None, verifiable: bool | None = None
) -> Candidate:
    return Candidate(
        row_id, similarity, patient, f"series-{row_id}", study or f"study-{row_id}",
        verification=verification, verifiable=verification is not None if verifiable is None else verifiable,
    )


def test_consistent_when_own_earlier_scan_matches():
    out = decide("h:a", [cand(1, 0.9, "h:a")], [cand(1, 0.9, "h:a"), cand(2, 0.3, "h:b")], THRESHOLDS)
    assert out["verdict"] == CONSISTENT
    assert out["score"] == pytest.approx(0.9)
    assert out["decided_by"] == "fingerprint" and out["verification_score"] is None
    assert out["neighbours"][0]["same_patient_id"] is True


def test_between_the_fingerprint_thresholds_is_never_a_silent_consistent():
    out = decide("h:a", [cand(1, 0.7, "h:a")], [cand(1, 0.7, "h:a")], THRESHOLDS)
    assert out["verdict"] == NEEDS_REVIEW and out["score"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("similarity", "expected"),
    [(0.8, CONSISTENT), (np.nextafter(0.8, 0), NEEDS_REVIEW), (0.6, NEEDS_REVIEW), (np.nextafter(0.6, 0), IDENTITY_MISMATCH)],
)
def test_own_scan_fingerprint_thresholds_on_the_boundary(similarity, expected):
    """match is reached at equality (>=), mismatch is strictly below: each boundary on both sides."""
    assert decide("h:a", [cand(1, float(similarity), "h:a")], [], THRESHOLDS)["verdict"] == expected


@pytest.mark.parametrize(("similarity", "expected"), [(0.8, POSSIBLE_DUPLICATE), (np.nextafter(0.8, 0), NEW_PATIENT)])
def test_other_patient_fingerprint_match_on_the_boundary(similarity, expected):
    assert decide("h:new", [], [cand(3, float(similarity), "h:other")], THRESHOLDS)["verdict"] == expected


@pytest.mark.parametrize(
    ("score", "expected"),
    [(0.4, CONSISTENT), (np.nextafter(0.4, 0), NEEDS_REVIEW), (0.3, NEEDS_REVIEW), (np.nextafter(0.3, 0), IDENTITY_MISMATCH)],
)
def test_own_scan_verification_thresholds_on_the_boundary(score, expected):
    """The verification decides wherever it was computed, whatever the fingerprint says (here: 0.99)."""
    out = decide("h:a", [cand(1, 0.99, "h:a", verification=float(score))], [], THRESHOLDS, VERIFY)
    assert out["verdict"] == expected and out["decided_by"] == "verification"
    assert out["verification_score"] == pytest.approx(float(score), abs=1e-4)


@pytest.mark.parametrize(
    ("score", "expected"), [(0.4, POSSIBLE_DUPLICATE), (np.nextafter(0.4, 0), NEEDS_REVIEW), (np.nextafter(0.3, 0), NEW_PATIENT)]
)
def test_other_patient_verification_on_the_boundary(score, expected):
    out = decide("h:new", [], [cand(3, 0.5, "h:other", verification=float(score))], THRESHOLDS, VERIFY)
    assert out["verdict"] == expected


def test_verification_overrules_a_fingerprint_that_looks_alike():
    """Two different people whose fingerprints reach the match threshold: the verification keeps them apart."""
    out = decide("h:new", [], [cand(3, 0.95, "h:other", verification=0.1)], THRESHOLDS, VERIFY)
    assert out["verdict"] == NEW_PATIENT and out["decided_by"] == "verification"
    mismatch = decide("h:a", [cand(1, 0.99, "h:a", verification=0.1)], [], THRESHOLDS, VERIFY)
    assert mismatch["verdict"] == IDENTITY_MISMATCH


def test_verification_confirms_what_the_fingerprint_misses():
    """One man across scanners: fingerprint below the match threshold, anatomy the same."""
    out = decide("h:new", [], [cand(3, 0.5, "h:other", verification=0.7)], THRESHOLDS, VERIFY)
    assert out["verdict"] == POSSIBLE_DUPLICATE and out["matched_patient_id_hash"] == "h:other"
    assert out["score"] == pytest.approx(0.5) and out["verification_score"] == pytest.approx(0.7)


def test_a_verifiable_candidate_left_unverified_is_not_confirmed_by_its_fingerprint():
    """Only the picked candidates are verified; an unpicked one with a brain cannot raise an alarm on its fingerprint."""
    neighbours = [cand(3, 0.85, "h:x", verification=0.05), cand(4, 0.84, "h:y", verifiable=True)]
    out = decide("h:new", [], neighbours, THRESHOLDS, VERIFY)
    assert out["verdict"] == NEW_PATIENT
    legacy = [cand(3, 0.85, "h:x", verification=0.05), cand(4, 0.84, "h:y", verifiable=False)]
    assert decide("h:new", [], legacy, THRESHOLDS, VERIFY)["verdict"] == POSSIBLE_DUPLICATE  # no brain: fingerprint


def test_consistent_that_also_matches_another_patient_names_it():
    own = [cand(1, 0.9, "h:a", verification=0.8)]
    out = decide("h:a", own, [cand(5, 0.9, "h:b", verification=0.75)], THRESHOLDS, VERIFY)
    assert out["verdict"] == CONSISTENT and out["evidence"]["also_matches_patient_id_hash"] == "h:b"
    alone = decide("h:a", own, [cand(5, 0.9, "h:b", verification=0.1)], THRESHOLDS, VERIFY)
    assert "also_matches_patient_id_hash" not in alone["evidence"]


def test_own_scan_too_different_to_score_needs_review():
    out = decide("h:a", [cand(1, 0.99, "h:a", verifiable=True)], [], THRESHOLDS, VERIFY)
    assert out["verdict"] == NEEDS_REVIEW


def test_without_verification_thresholds_the_fingerprint_decides():
    out = decide("h:new", [], [cand(3, 0.85, "h:other", verification=0.05)], THRESHOLDS, None)
    assert out["verdict"] == POSSIBLE_DUPLICATE and out["decided_by"] == "fingerprint"


def test_identity_mismatch_names_the_patient_it_matches():
    own = [cand(1, 0.2, "h:a"), cand(2, 0.4, "h:a")]
    out = decide("h:a", own, [cand(3, 0.95, "h:other"), cand(2, 0.4, "h:a")], THRESHOLDS)
    assert out["verdict"] == IDENTITY_MISMATCH
    assert out["score"] == pytest.approx(0.4)  # best similarity to its own earlier scans
    assert out["matched_patient_id_hash"] == "h:other"


def test_identity_mismatch_without_a_better_match_names_nobody():
    out = decide("h:a", [cand(1, 0.1, "h:a")], [cand(3, 0.5, "h:other")], THRESHOLDS)
    assert out["verdict"] == IDENTITY_MISMATCH and out["matched_patient_id_hash"] is None


def test_possible_duplicate_for_a_first_scan_matching_another_patient():
    out = decide("h:new", [], [cand(3, 0.85, "h:other"), cand(4, 0.5, "h:x")], THRESHOLDS)
    assert out["verdict"] == POSSIBLE_DUPLICATE
    assert out["matched_patient_id_hash"] == "h:other" and out["score"] == pytest.approx(0.85)


def test_new_patient_below_match_threshold_and_on_an_empty_archive():
    assert decide("h:new", [], [cand(3, 0.79, "h:other")], THRESHOLDS)["verdict"] == NEW_PATIENT
    empty = decide("h:new", [], [], THRESHOLDS)
    assert empty["verdict"] == NEW_PATIENT and empty["score"] is None


def test_series_without_patient_id_is_never_consistent_with_other_anonymous_series():
    out = decide("", [], [cand(3, 0.99, "")], THRESHOLDS)
    assert out["verdict"] == POSSIBLE_DUPLICATE


def test_fallback_thresholds_are_labelled_in_the_evidence():
    out = decide("h:a", [], [], fallback_thresholds("untrained-0"))
    assert out["evidence"]["thresholds"]["source"] == "fallback"
    assert "calibrate" in out["evidence"]["thresholds"]["warning"]


def test_rejected_verdict_carries_the_stable_reason():
    out = rejected_verdict(SeriesRejected(RejectReason.LOCALIZER, "3 slices"))
    assert out["verdict"] == REJECTED and out["rejected"] == "localizer" and out["score"] is None
    json.dumps(out)


# --- calibration ----------------------------------------------------------------------------------------------------
def test_thresholds_meet_the_false_alarm_rate_on_the_calibration_pairs():
    rng = np.random.default_rng(0)
    same = rng.normal(0.85, 0.05, 3000)
    different = rng.normal(0.2, 0.1, 20000)
    t = thresholds_from_similarities(same, different, far=0.001, model_version="m1")
    assert np.mean(different >= t.match) <= 0.001
    assert np.mean(same < t.mismatch) <= 0.001
    assert t.mismatch <= t.match
    # Tight: lowering the match threshold to the next alarm value would exceed the rate.
    assert np.mean(different >= np.sort(different)[::-1][20]) > 0.001
    assert t.details["far_duplicate_measured"] <= 0.001 and t.source == "calibrated"


def test_mismatch_threshold_never_exceeds_match_for_a_poor_model():
    rng = np.random.default_rng(1)
    t = thresholds_from_similarities(rng.normal(0.5, 0.2, 500), rng.normal(0.5, 0.2, 5000), 0.001, "bad")
    assert t.mismatch <= t.match
    assert "warning" not in t.details or "extrapolated" in t.details["warning"]


def test_pair_similarities_split_same_and_different_subjects():
    v = np.eye(4, 512, dtype=np.float32)
    v[1] = v[0]
    same, different = pair_similarities(v, ["a", "a", "b", "c"])
    assert same.tolist() == [1.0] and len(different) == 5 and different.max() == 0.0


def test_thresholds_saved_per_model_version_and_site_file_wins(tmp_path):
    settings = load_settings(home=tmp_path, index_dir=tmp_path / "idx")
    assert resolve_thresholds("m1", index_dir=settings.resolved_index_dir).source == "fallback"
    save_thresholds(Thresholds("m1", 0.7, 0.5, 0.001, "calibrated"), site_thresholds_path(settings.resolved_index_dir))
    save_thresholds(Thresholds("m2", 0.9, 0.4, 0.001, "calibrated"), site_thresholds_path(settings.resolved_index_dir))
    assert resolve_thresholds("m1", index_dir=settings.resolved_index_dir).match == 0.7
    assert resolve_thresholds("m2", index_dir=settings.resolved_index_dir).mismatch == 0.4
    assert resolve_thresholds("m3", index_dir=settings.resolved_index_dir).source == "fallback"


def test_calibrate_cohort_from_a_slice_cache(tmp_path):
    """A cohort folder (cohort.csv + slices.npz) embedded by a stand-in encoder that separates subjects."""
    rng = np.random.default_rng(2)
    rows, slices = [], []
    for subject in range(12):
        base = rng.random((128, 128)).astype(np.float16)
        for visit in range(3):
            rows.append(f"s{subject}v{visit},subj{subject},{visit},2020-01-0{visit + 1},colin,calibration")
            slices.append(base + rng.normal(0, 0.05, (128, 128)).astype(np.float16))
    rows.append("x,other,0,2020-01-01,colin,train")  # another split: ignored
    slices.append(np.zeros((128, 128), np.float16))
    (tmp_path / "cohort.csv").write_text("scan_id,subject_id,visit,date,base_head,split\n" + "\n".join(rows) + "\n")
    np.savez(tmp_path / "slices.npz", slices=np.stack(slices), scan_id=np.array([r.split(",")[0] for r in rows]))

    def embed(pixels: np.ndarray) -> np.ndarray:
        flat = pixels.reshape(len(pixels), -1)[:, :512] - 0.5
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    t = calibrate_cohort(tmp_path, embed, "stand-in", far=0.001)
    assert t.details["scans"] == 36 and t.details["subjects"] == 12
    assert t.details["same_pairs"] == 36 and t.details["different_pairs"] == 36 * 35 // 2 - 36
    assert t.details["same_similarity"]["min"] > t.details["different_similarity"]["max"]
    # Separable subjects: no different-person pair reaches `match`, no same-person pair falls below it.
    assert t.details["far_duplicate_measured"] == 0.0 and t.details["same_below_match"] == 0.0
    assert "extrapolated" in t.details["warning"]  # 594 different-person pairs < 1/far


def test_calibrate_cohort_of_volumes_leaves_out_a_rejected_scan_and_caches_slices(tmp_path, small_heads):
    """Volumes go through the real slice pipeline; one the pipeline refuses is left out with its reason, not fatal."""
    import SimpleITK as sitk

    if "mni" not in small_heads:
        pytest.skip("a second head (MNI152 via nilearn) is needed for different-person pairs")
    (tmp_path / "volumes").mkdir()
    rows = []
    for head in ("colin", "mni"):
        for visit, shift in enumerate((0.0, 12.0)):  # each head at two positions in the scanner
            moved = sitk.Image(small_heads[head])
            moved.SetOrigin(tuple(o + shift for o in moved.GetOrigin()))
            name = f"{head}{visit}"
            sitk.WriteImage(moved, str(tmp_path / "volumes" / f"{name}.nii.gz"))
            rows.append(f"{name},{head},{visit},2020-01-0{visit + 1},{head},calibration,volumes/{name}.nii.gz")
    noise = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32))
    sitk.WriteImage(noise, str(tmp_path / "volumes" / "noise.nii.gz"))
    rows.append("noise,phantom,0,2020-01-01,none,calibration,volumes/noise.nii.gz")
    (tmp_path / "cohort.csv").write_text("scan_id,subject_id,visit,date,base_head,split,path\n" + "\n".join(rows) + "\n")

    def embed(pixels: np.ndarray) -> np.ndarray:
        flat = pixels.reshape(len(pixels), -1) - 0.5
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    t = calibrate_cohort(tmp_path, embed, "stand-in", far=0.001)
    assert t.details["scans"] == 4 and t.details["subjects"] == 2
    assert t.details["rejected_scans"] == {"noise": "not_t1_brain"}
    with np.load(tmp_path / "slices-anatomical.npz") as cache:
        assert sorted(cache["scan_id"].tolist()) == ["colin0", "colin1", "mni0", "mni1"]
    # The cache answers the second time: same thresholds without the pipeline (the volumes are gone).
    for name in ("colin0", "colin1", "mni0", "mni1"):
        (tmp_path / "volumes" / f"{name}.nii.gz").unlink()
    again = calibrate_cohort(tmp_path, embed, "stand-in", far=0.001)
    assert (again.match, again.mismatch) == pytest.approx((t.match, t.mismatch), abs=1e-3)
