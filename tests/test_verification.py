"""The verification stage: canonical brains, the pair check, its evidence picture and its thresholds.

Unit tests use Colin27 (a real head already in MNI space, so the identity is its alignment): a moved copy of the same
head is the same person; the same head warped by the cohort's smooth random deformation stands in for another person.
The real-people checks (the Trio man and the decubitus man, twelve years apart) are in test_archive_cli.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import SimpleITK as sitk

from fingerprint.evaluation.real_calibration import verification_thresholds
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.verification import (
    MAX_ROTATION_DEG,
    MAX_SHIFT_MM,
    evidence_png,
    prepare,
    verify,
)
from fingerprint.imaging.brain import (
    BRAIN_LEVELS,
    brain_from_bytes,
    brain_grid,
    brain_to_bytes,
    extract_brain,
)
from fingerprint.imaging.reference import load_reference


def moved(image: sitk.Image, degrees: float, shift_mm: tuple[float, float, float]) -> sitk.Transform:
    """A rigid map reference -> image: the head turned about the left-right axis and shifted."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter((0.0, -18.0, 18.0))
    transform.SetRotation(np.radians(degrees), 0.0, 0.0)
    transform.SetTranslation(shift_mm)
    return transform


@pytest.fixture(scope="module")
def brains(colin27):
    """Colin27 as aligned (identity), the same head seen 4 degrees and 3 mm off, and a warped 'other person'."""
    from fingerprint.cohort.deform import (
        displacement_transform,
        scale_transform,
        smooth_noise_field,
    )

    same = extract_brain(colin27, sitk.Euler3DTransform())
    turned = extract_brain(colin27, moved(colin27, 4.0, (0.0, 3.0, -2.0)))
    rng = np.random.default_rng(7)
    warp = sitk.CompositeTransform([scale_transform((1.06, 0.94, 1.04)), displacement_transform(smooth_noise_field(rng) * 2.5)])
    other = extract_brain(sitk.Resample(colin27, colin27, warp, sitk.sitkLinear, 0.0), sitk.Euler3DTransform())
    return {"same": same, "turned": turned, "other": other}


def test_canonical_brain_keeps_only_the_brain_and_round_trips(brains):
    brain = brains["same"]
    grid = brain_grid()
    assert brain.dtype == np.uint8 and brain.shape == grid.stored.shape
    assert brain.max() <= BRAIN_LEVELS and not brain[~grid.stored].any()  # nothing outside the brain region
    assert np.array_equal(brain_from_bytes(brain_to_bytes(brain)), brain)
    assert len(brain_to_bytes(brain)) < 250_000


def test_a_face_is_never_stored(colin27):
    """A head whose brain region is empty (only skin and face bright) leaves nothing but empty brain voxels."""
    reference = load_reference()
    outside = sitk.Resample(sitk.Cast(reference.metric_mask, sitk.sitkFloat32), colin27, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    face_only = sitk.Mask(colin27, sitk.Cast(outside < 0.5, sitk.sitkUInt8))
    brain = extract_brain(face_only, sitk.Euler3DTransform())
    values = brain[brain_grid().scored]
    assert np.percentile(values, 50) <= 1  # the brain's centre holds no tissue from outside it


def test_the_same_head_moved_scores_high_and_another_scores_low(brains):
    same = verify(prepare(brains["same"]), prepare(brains["turned"]))
    other = verify(prepare(brains["same"]), prepare(brains["other"]))
    assert same.registration_used and 2.0 < same.rotation_deg < 6.0  # the 4 degrees found again
    assert same.score is not None and other.score is not None
    assert same.score > 0.8, same
    assert other.score < same.score - 0.3, (same, other)


def test_a_registration_that_runs_off_gives_no_score_and_says_why(brains, monkeypatch):
    """The same head turned 4 degrees: its registration's move is found again (about 4 degrees). With the trust region
    set just above that move the pair is scored; just below it, the registration has run off and the pair gets no
    score (two brains that do not sit where the pipeline should have put them say neither same nor different)."""
    import fingerprint.identity.verification as verification

    found = verify(prepare(brains["same"]), prepare(brains["turned"]))
    assert found.registration_used and found.score is not None and found.unscored is None
    monkeypatch.setattr(verification, "MAX_ROTATION_DEG", found.rotation_deg)
    assert verify(prepare(brains["same"]), prepare(brains["turned"])).score == found.score  # on the boundary: used
    monkeypatch.setattr(verification, "MAX_ROTATION_DEG", float(np.nextafter(found.rotation_deg, 0.0)))
    ran_off = verify(prepare(brains["same"]), prepare(brains["turned"]))
    assert not ran_off.registration_used and ran_off.score is None
    assert ran_off.shift_mm <= MAX_SHIFT_MM and "ran off" in (ran_off.unscored or "")
    assert ran_off.as_json()["unscored"] == ran_off.unscored


def test_too_little_shared_brain_gives_no_score(brains):
    half = brains["same"].copy()
    half[: half.shape[0] * 3 // 4] = 0  # the field of view saw only the top quarter
    assert verify(prepare(brains["same"]), prepare(half)).score is None


def test_evidence_picture_is_a_png_of_three_planes(brains):
    from PIL import Image

    result = verify(prepare(brains["same"]), prepare(brains["turned"]), keep_registered=True)
    picture = Image.open(io.BytesIO(evidence_png(brains["same"], result.registered, result.score, "test")))
    assert picture.format == "PNG" and picture.width > 2.5 * picture.height


# --- thresholds ------------------------------------------------------------------------------------------------------
def test_verification_thresholds_are_conservative_and_tight():
    rng = np.random.default_rng(0)
    same = np.tanh(rng.normal(1.0, 0.15, 300))
    different = np.tanh(rng.normal(0.18, 0.06, 5000))
    t = verification_thresholds(same, different, far=0.001)
    assert t.model_version == "dbp-verify-v1" and t.source == "calibrated"
    d = t.details
    different_bound = max(d["different_bound_empirical"], d["different_bound_fitted"])
    same_bound = min(d["same_bound_empirical"], d["same_bound_fitted"])
    assert same_bound > different_bound  # apart: a review band between the bounds
    assert t.mismatch == pytest.approx(different_bound, abs=1e-6)
    assert different_bound - 1e-6 <= t.match <= same_bound + 1e-6 and t.match > t.mismatch
    assert np.mean(different >= t.match) <= 0.001 and np.mean(same < t.mismatch) <= 0.001


def test_overlapping_scores_keep_each_error_at_the_rate():
    rng = np.random.default_rng(2)
    same, different = np.tanh(rng.normal(0.6, 0.2, 2000)), np.tanh(rng.normal(0.2, 0.2, 5000))
    t = verification_thresholds(same, different, far=0.01)
    assert "overlapping" in t.details["method"] and t.mismatch < t.match
    assert np.mean(different >= t.match) <= 0.01 and np.mean(same < t.mismatch) <= 0.01


def test_verification_thresholds_say_when_the_rate_rests_on_the_fit():
    rng = np.random.default_rng(1)
    t = verification_thresholds(np.tanh(rng.normal(1.0, 0.1, 30)), np.tanh(rng.normal(0.2, 0.05, 200)), 0.001)
    assert "fitted tail" in t.details["warning"]
    assert isinstance(t, Thresholds)
    with pytest.raises(ValueError):
        verification_thresholds(np.array([0.9, np.nan]), np.array([0.1, 0.2, 0.3]), 0.001)


@pytest.mark.slow
def test_two_files_of_one_older_adult_verify_as_one_person(shared_data):
    """The evidence behind SAME_PERSON_HEADS, from the files as published (no simulated visit): Subj15 and Subj16
    (women of 76.6 and 78.3 y) are one brain; Subj17 (a woman of 88.7 y) is another."""
    from fingerprint.cohort.heads import SAME_PERSON_HEADS, person_of
    from fingerprint.imaging.canonical import align

    folder = shared_data / "people" / "older-adults-2mm"
    brains = {}
    for name in ("Subj15", "Subj16", "Subj17"):
        image = sitk.ReadImage(str(folder / f"{name}_T1.nii.gz"), sitk.sitkFloat32)
        brains[name] = prepare(extract_brain(image, align(image).transform))
    same = verify(brains["Subj15"], brains["Subj16"]).score
    other = verify(brains["Subj15"], brains["Subj17"]).score
    assert same is not None and other is not None
    assert same > 0.8 and other < 0.388, (same, other)
    assert person_of("oa-subj16") == person_of("oa-subj15") == "oa-subj15" and person_of("oa-subj17") == "oa-subj17"
    assert set(SAME_PERSON_HEADS) == {"oa-subj10", "oa-subj16", "oa-subj20"}


def test_faster_registration_keeps_the_scores(brains):
    """Issue 16: the shipped registration settings against those before, on the same head moved and on another head.
    Leaving out the fixed image's gradient filter alone must change nothing at all (its output was never read); the
    coarser stopping step may move a score by at most SCORE_TOLERANCE."""
    from fingerprint.identity.verification import (
        REGISTRATION,
        REGISTRATION_BEFORE,
        SCORE_TOLERANCE,
        RegistrationSettings,
    )

    assert REGISTRATION != REGISTRATION_BEFORE
    fixed = prepare(brains["same"])
    for name in ("turned", "other"):
        moving = prepare(brains[name])
        before = verify(fixed, moving, settings=REGISTRATION_BEFORE)
        no_filter = verify(fixed, moving, settings=RegistrationSettings(REGISTRATION_BEFORE.min_step, False))
        after = verify(fixed, moving)
        assert no_filter.score == before.score and no_filter.rotation_deg == before.rotation_deg, name
        assert before.score is not None and after.score is not None
        assert abs(after.score - before.score) <= SCORE_TOLERANCE, (name, before.score, after.score)
        assert after.shared_fraction == pytest.approx(before.shared_fraction, abs=0.01)


def test_candidates_verified_side_by_side_score_as_one_at_a_time(brains, tmp_path):
    """Issue 16: a round's candidates are verified on two threads (each registration on one thread, the GIL released)
    with exactly the scores of verifying them one after the other, from a real store."""
    from fingerprint.identity.store import Store
    from fingerprint.identity.verdicts import Candidate
    from fingerprint.identity.verification import METHOD_VERSION
    from fingerprint.identity.verification_stage import PairVerifier

    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    with store.locked() as conn:
        for name in ("turned", "other"):
            store.save_brain(conn, f"uid-{name}", METHOD_VERSION, brain_to_bytes(brains[name]))
    candidates = [Candidate(k, 0.99, "p", f"uid-{name}") for k, name in enumerate(("turned", "other"))]
    scores = {}
    for threads in (1, 2):
        verifier = PairVerifier(store, brains["same"], keep_pictures=False, threads=threads)
        with store.reading() as conn:
            verifier.run(conn, candidates)
        scores[threads] = {uid: result.score for uid, result in verifier.results.items()}
    assert set(scores[1]) == {"uid-turned", "uid-other"}
    assert scores[2] == scores[1]
    assert scores[1]["uid-turned"] > scores[1]["uid-other"]


def test_registrations_of_one_thread_count_run_side_by_side_and_another_count_waits():
    """Two blocks asking SimpleITK for one thread are inside at the same time (a lock once let one in at a time, so
    two embedded workers aligned their series in turn); a block asking for another count waits until both have left,
    and the process's own count is back afterwards."""
    import threading

    from fingerprint.imaging.canonical import registration_threads

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    both_inside = threading.Barrier(3, timeout=10)
    leave = threading.Event()
    seen: dict[str, int] = {}
    errors: list[BaseException] = []

    def one_thread_block(name: str) -> None:
        try:
            with registration_threads(1):
                seen[name] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
                both_inside.wait()
                leave.wait(10)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    def other_count_block() -> None:
        with registration_threads(2):
            seen["other"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            seen["other_while_held"] = int(not leave.is_set())

    holders = [threading.Thread(target=one_thread_block, args=(f"holder-{k}",)) for k in range(2)]
    for thread in holders:
        thread.start()
    both_inside.wait()  # raises BrokenBarrierError if only one holder could get in
    waiting = threading.Thread(target=other_count_block)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive() and "other" not in seen  # another count waits while the one-thread blocks run
    leave.set()
    for thread in [*holders, waiting]:
        thread.join(10)
    assert not errors
    assert seen == {"holder-0": 1, "holder-1": 1, "other": 2, "other_while_held": 0}
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def test_an_own_scan_whose_registration_runs_off_gives_needs_review_with_the_reason_in_the_evidence(brains, tmp_path, monkeypatch):
    """The archive's path with a real store: the PatientID's earlier scan is the same head turned 4 degrees; with the
    trust region below that turn its registration runs off, so the verdict is ``needs_review`` (never a confident
    ``identity_mismatch``) and the evidence lists the unscored verification and why."""
    import fingerprint.identity.verification as verification
    from fingerprint.identity.calibration import Thresholds
    from fingerprint.identity.store import Store
    from fingerprint.identity.verdicts import IDENTITY_MISMATCH, NEEDS_REVIEW, Candidate, decide
    from fingerprint.identity.verification import METHOD_VERSION
    from fingerprint.identity.verification_stage import PairVerifier

    fingerprint_thresholds = Thresholds("m", match=0.99, mismatch=0.95, far=0.001, source="explicit")
    verify_thresholds = Thresholds(METHOD_VERSION, match=0.443, mismatch=0.391, far=0.001, source="explicit")
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    with store.locked() as conn:
        store.save_brain(conn, "uid-earlier", METHOD_VERSION, brain_to_bytes(brains["turned"]))
    earlier = Candidate(0, 0.90, "p-own", "uid-earlier")  # a fingerprint that alone would say "different"
    verdicts = {}
    for trust_deg in (MAX_ROTATION_DEG, 1.0):
        monkeypatch.setattr(verification, "MAX_ROTATION_DEG", trust_deg)
        verifier = PairVerifier(store, brains["same"], keep_pictures=False, threads=1)
        with store.locked() as conn:
            verifier.run(conn, [earlier])
            verdict = decide("p-own", verifier.annotate([earlier]), [], fingerprint_thresholds, verify_thresholds)
            verifier.record(conn, "uid-new", verdict, "p-own")
        verdicts[trust_deg] = verdict
    assert verdicts[MAX_ROTATION_DEG]["verdict"] == "consistent"
    assert "unscored" not in verdicts[MAX_ROTATION_DEG]["evidence"]
    ran_off = verdicts[1.0]
    assert ran_off["verdict"] == NEEDS_REVIEW != IDENTITY_MISMATCH
    [entry] = ran_off["evidence"]["unscored"]
    assert entry["series_instance_uid"] == "uid-earlier" and entry["same_patient_id"] is True
    assert "ran off" in entry["reason"] and entry["verification_details"]["registration_used"] is False
