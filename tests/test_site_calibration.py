"""Calibration from the archive itself: PatientIDs as labels, label errors set aside, refusal when too few repeats.

A "site" is recorded in a real store (SQLite, through the archive): people with several visits, fingerprints drawn
around each person, and verification scores stored for every pair as the verification stage would have stored them
(same person high, different people low, drawn by who each series really is). Some visits are filed under the wrong
PatientID. The calibration must land near the calibration from the true labels, set the planted errors aside, and
refuse an archive with too few repeat patients, on the boundary of what it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepbrainprint.cli.app import app
from deepbrainprint.settings import load_settings
from fingerprint.identity.archive import Archive, ArchiveConfig
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.score_bounds import score_thresholds
from fingerprint.identity.site_calibration import (
    NotEnoughRepeats,
    calibrate_from_archive,
    label_errors,
    pairs_needed,
)
from fingerprint.locations import SHIPPED_WEIGHTS_DIR

VERIFY = "test-verify"
EXPLICIT = Thresholds("test-model", 0.999, 0.5, 0.001, "explicit")


def build_site(
    folder: Path,
    make_fingerprint,
    visits: list[int],
    misfiled: dict[tuple[int, int], int] | None = None,
    seed: int = 7,
    model_version: str = "test-model",
    method_version: str = VERIFY,
    same_z: tuple[float, float] = (1.8, 0.2),
) -> dict:
    """Record a site: person p has visits[p] series; ``misfiled[(p, v)] = q`` files visit v of p under q's PatientID.
    Returns the true person and the label of each series, in recording order."""
    rng = np.random.default_rng(seed)
    bases = rng.normal(0, 1, (len(visits), 512))
    config = ArchiveConfig.at(folder, verification=False)
    truth, label, uids = [], [], []
    with Archive(config, model=object(), thresholds=EXPLICIT) as archive:
        for p, count in enumerate(visits):
            for v in range(count):
                filed = (misfiled or {}).get((p, v), p)
                vector = bases[p] + rng.normal(0, 0.25, 512)
                uid = f"1.2.826.0.1.{p}.{v}"
                result = make_fingerprint(vector, f"PERSON-{filed}", uid, model_version=model_version)
                archive.decide_and_record(result, {"folder": uid})
                truth.append(p)
                label.append(filed)
                uids.append(uid)
        with archive.store.locked() as conn:  # what the verification stage would have stored for every pair
            for i in range(len(uids)):
                for j in range(i + 1, len(uids)):
                    z = rng.normal(*same_z) if truth[i] == truth[j] else rng.normal(0.15, 0.12)
                    archive.store.save_verification(conn, uids[i], uids[j], method_version, float(np.tanh(z)), {}, None)
        store_url = config.store_url
    return {"truth": truth, "label": label, "store_url": store_url, "config": config}


def calibrate(site: dict, far: float = 0.001, model_version: str = "test-model"):
    with Archive(site["config"], model=object(), thresholds=EXPLICIT) as archive:
        return calibrate_from_archive(archive.store, model_version, far, VERIFY, site="test-site")


def test_pairs_needed_follow_the_fitted_tail_uncertainty() -> None:
    assert pairs_needed(0.001) == 52  # 9 (1 + 3.09² / 2)
    assert pairs_needed(0.01) == 34
    assert pairs_needed(0.001) > pairs_needed(0.01) > pairs_needed(0.1)


def test_label_errors_are_the_scores_that_sit_with_the_other_label() -> None:
    rng = np.random.default_rng(1)
    same = np.tanh(rng.normal(1.8, 0.2, 100))
    different = np.tanh(rng.normal(0.15, 0.12, 1000))
    same_with_errors = np.concatenate([same, np.tanh([0.1, 0.3])])  # two studies filed under the wrong patient
    different_with_errors = np.concatenate([different, np.tanh([1.7])])  # one person under two PatientIDs
    err_same, err_different = label_errors(same_with_errors, different_with_errors)
    assert np.flatnonzero(err_same).tolist() == [100, 101]
    assert np.flatnonzero(err_different).tolist() == [1000]


def test_robust_bounds_hold_under_ten_percent_mislabelled_pairs() -> None:
    """The stated tolerance: 10 % of the same-label pairs being different people moves the robust mismatch bound
    by little, while the plain fit is dragged far down."""
    rng = np.random.default_rng(2)
    same = np.tanh(rng.normal(1.8, 0.2, 200))
    different = np.tanh(rng.normal(0.15, 0.12, 3000))
    contaminated = np.concatenate([same, np.tanh(rng.normal(0.15, 0.12, 20))])
    clean = score_thresholds(same, different, 0.001, "v", robust=True)
    robust = score_thresholds(contaminated, different, 0.001, "v", robust=True)
    plain = score_thresholds(contaminated, different, 0.001, "v", robust=False)
    assert abs(robust.details["same_bound_fitted"] - clean.details["same_bound_fitted"]) < 0.06
    assert plain.details["same_bound_fitted"] < clean.details["same_bound_fitted"] - 0.3


def test_calibration_from_a_site_with_label_errors_lands_near_the_clean_one(tmp_path, synthetic_fingerprint) -> None:
    visits = [3] * 24 + [2] * 6
    misfiled = {(3, 2): 9, (12, 1): 20}  # two visits under another person's PatientID (identity mismatches)
    noisy = build_site(tmp_path / "noisy", synthetic_fingerprint, visits, misfiled)
    clean = build_site(tmp_path / "clean", synthetic_fingerprint, visits, None)
    got, want = calibrate(noisy), calibrate(clean)
    assert got.verification is not None and want.verification is not None
    # Each misfiled visit makes 3 wrong same-label pairs (with the 3 scans of the patient it is filed under): all
    # 6 are set aside, and nothing else.
    assert got.report["same_label_pairs_set_aside"] == 6
    assert want.report["same_label_pairs_set_aside"] == 0
    assert abs(got.verification.match - want.verification.match) < 0.05
    assert abs(got.verification.mismatch - want.verification.mismatch) < 0.05
    assert abs(got.fingerprint.mismatch - want.fingerprint.mismatch) < 0.01
    for thresholds in (got.fingerprint, got.verification):
        assert thresholds.details["site"] == "test-site" and thresholds.details["source"].startswith("archive")
        assert thresholds.details["same_pairs"] > 0 and thresholds.details["different_pairs"] > 0
    assert got.plot_png[:8] == b"\x89PNG\r\n\x1a\n"
    # At these thresholds the planted errors come back as alarms and the rest stays quiet: every pair of a misfiled
    # visit with its labelled patient's scans falls below mismatch (identity_mismatch), every pair with its true
    # owner's scans reaches match (possible_duplicate), and no correctly labelled pair raises either.
    scores = stored_scores(noisy)
    truth, label = noisy["truth"], noisy["label"]
    for (i, j), score in scores.items():
        same_label, same_person = label[i] == label[j], truth[i] == truth[j]
        if same_label and not same_person:
            assert score < got.verification.mismatch
        elif same_person and not same_label:
            assert score >= got.verification.match
        elif same_label:
            assert score >= got.verification.mismatch
        else:
            assert score < got.verification.match


def stored_scores(site: dict) -> dict[tuple[int, int], float]:
    from fingerprint.identity.store import Store

    store = Store(site["store_url"])
    try:
        with store.reading() as conn:
            rows = store.calibration_rows(conn, "test-model")
            uids = [r[0] for r in rows]
            pairs = {(uids[i], uids[j]) for i in range(len(uids)) for j in range(i + 1, len(uids))}
            found = store.verification_scores(conn, pairs, VERIFY)
    finally:
        store.close()
    index = {uid: k for k, uid in enumerate(uids)}
    return {(index[a], index[b]): score for (a, b), score in found.items()}


@pytest.mark.parametrize("extra_pair, refused", [(True, False), (False, True)], ids=["exactly-enough", "one-short"])
def test_refusal_is_on_the_boundary_of_what_the_rate_needs(tmp_path, synthetic_fingerprint, extra_pair, refused) -> None:
    """At 1 % the fit needs 34 same-PatientID pairs, at most 3 per patient: 11 patients with 3 visits give 33."""
    visits = [3] * 11 + ([2] if extra_pair else [1]) + [1] * 5
    site = build_site(tmp_path / "site", synthetic_fingerprint, visits)
    if refused:
        with pytest.raises(NotEnoughRepeats) as caught:
            calibrate(site, far=0.01)
        assert caught.value.needed_pairs == 34 and caught.value.counted_pairs == 33
        assert caught.value.more_patients == 1 and "34 are needed" in str(caught.value)
    else:
        result = calibrate(site, far=0.01)
        assert result.report["same_label_pairs_counted"] == 34


def test_cli_calibrates_the_archive_and_refuses_a_small_one(tmp_path, synthetic_fingerprint) -> None:
    shipped = json.loads((SHIPPED_WEIGHTS_DIR / "model.json").read_text())["model_version"]
    from fingerprint.identity.verification import METHOD_VERSION

    small = build_site(tmp_path / "small", synthetic_fingerprint, [2, 2, 1], model_version=shipped,
                       method_version=METHOD_VERSION)
    result = CliRunner().invoke(app, ["calibrate", "--from-archive", "--index", str(small["config"].index_dir)])
    assert result.exit_code == 6, result.output
    assert "too few repeat patients" in result.stderr and "more patients" in result.stderr

    site = build_site(tmp_path / "site", synthetic_fingerprint, [3] * 20, model_version=shipped,
                      method_version=METHOD_VERSION)
    index = site["config"].index_dir
    result = CliRunner().invoke(app, ["calibrate", "--from-archive", "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["model_version"] for line in lines] == [shipped, METHOD_VERSION]
    assert all(line["details"]["site"] == "site" and Path(line["details"]["plot"]).exists() for line in lines)
    with Archive(load_settings(index_dir=index, home=tmp_path).archive_config()) as archive:
        stored = archive.thresholds(shipped)
        assert stored.details["from"] == "store" and stored.details["source"].startswith("archive")
        assert archive.verification_thresholds().match == pytest.approx(lines[1]["match"])
    # A verdict says which thresholds decided it: the site's own calibration from its archive, read from the store.
    from fingerprint.identity.verdicts import decide

    with Archive(load_settings(index_dir=index, home=tmp_path).archive_config()) as archive:
        verdict = decide("h:new", [], [], archive.thresholds(shipped), archive.verification_thresholds())
    used = verdict["evidence"]["thresholds"]
    assert used["calibrated_on"].startswith("archive") and used["site"] == "site" and used["read_from"] == "store"
    assert verdict["evidence"]["verification_thresholds"]["site"] == "site"
