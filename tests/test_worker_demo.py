"""``deepbrainprint demo``, the README's main command: real heads over real associations, planted cases reported."""

from __future__ import annotations

import json
import re

import pytest

from deepbrainprint.demo import DECUBITUS_2022, TRIO_2010, plan
from fingerprint.locations import COLIN27_PATH


def test_a_bare_machine_still_has_three_heads(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if not COLIN27_PATH.exists():
        pytest.skip("Colin27 (mricron-data) is not installed")
    import sys

    import numpy as np
    import SimpleITK as sitk

    from deepbrainprint import demo

    monkeypatch.setattr(demo, "SHARED_DATA", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)  # nilearn not installed
    heads = demo.load_heads()
    assert len(heads) == 3 and "Colin27" in heads
    colin, *others = (sitk.GetArrayFromImage(image).astype(np.float32) for image in heads.values())
    for other in others:
        assert other.shape == colin.shape and np.corrcoef(colin.ravel(), other.ravel())[0, 1] < 0.95


def test_plan_plants_a_duplicate_and_a_mismatch() -> None:
    real = {"Colin27": 1, "real person 1": 2, "real person 2": 3, TRIO_2010: 4, DECUBITUS_2022: 5}
    for heads in (real, {"Colin27": 1, "MNI152": 2, "real": 3}, {"Colin27": 1, "Colin27 warped #1": 2, "Colin27 warped #2": 3}):
        for quick in (False, True):
            items = plan(heads, quick)  # type: ignore[arg-type]
            planted = {item.expected: item for item in items if item.planted}
            assert set(planted) == {"possible_duplicate", "identity_mismatch"}
            duplicate, mismatch = planted["possible_duplicate"], planted["identity_mismatch"]
            first_of = {i.patient_id: i.who for i in items if not i.planted and i.expected == "new_patient"}
            assert duplicate.patient_id not in first_of and duplicate.who in first_of.values()
            assert mismatch.patient_id in first_of and mismatch.who != first_of[mismatch.patient_id]
            assert all(item.head in heads for item in items)
    assert plan(real, False)[4].head == DECUBITUS_2022  # with the shared data the duplicate is the real one


@pytest.mark.slow
def test_quick_demo_prints_a_verdict_for_every_series(quick_demo) -> None:  # type: ignore[no-untyped-def]
    assert quick_demo["status"] == 0
    text, results, home = quick_demo["text"], quick_demo["results"], quick_demo["home"]
    assert "NO VERDICT" not in text and text.count("Planted #") == 2 and "4 series" in text
    # Four series are far too few repeat patients to calibrate the site: the demo says so and keeps the shipped ones.
    assert "Site calibration: not yet (" in text and "52 needed at 0.001" in text
    # It ends with the flags report of its archive, pictures inline (with real people: the two planted cases only).
    page = (home / "reports" / "flags.html").read_text()
    assert "Flags report: " in text and "data:image/png;base64," in page
    assert len(results) == 4
    from deepbrainprint import demo

    # The planted series are the third (a known person under a new PatientID) and the fourth (another person under an
    # enrolled PatientID); each must carry its own verdict, in the results, in the summary line and in the archive's
    # own ledger (not the demo's "found" field, nor words the summary always prints).
    duplicate, mismatch = results[2], results[3]
    assert duplicate["planted"] and duplicate["patient_id"] == "DEMO-D"
    assert duplicate["verdict"] == "possible_duplicate", results
    assert re.search(r"^Planted #3: .* -> expected possible_duplicate, got possible_duplicate \(found\)$", text, re.M)
    enrolled_b = next(r for r in results if r["patient_id"] == "DEMO-B")
    assert mismatch["planted"] and mismatch["patient_id"] == "DEMO-B" and mismatch["head"] != enrolled_b["head"]
    assert "MISSED" not in text
    from worker.ledger import Ledger

    ledger = Ledger(f"sqlite:///{home / 'index' / 'store.sqlite'}")
    recorded = sorted(job.verdict["verdict"] for job in ledger.all_jobs())
    ledger.close()
    if (demo.SHARED_DATA / demo.REAL_REPEAT).is_dir():  # real people: every verdict, planted or not, must be right
        assert [(r["expected"], r["verdict"]) for r in results if r["verdict"] != r["expected"]] == [], results
        assert mismatch["verdict"] == "identity_mismatch", results
        assert re.search(r"^Planted #4: .* -> expected identity_mismatch, got identity_mismatch \(found\)$", text, re.M)
        assert recorded == ["identity_mismatch", "new_patient", "new_patient", "possible_duplicate"], recorded
        assert duplicate["head"] == DECUBITUS_2022 and duplicate["decided_by"] == "verification"
        assert "Flags report: 2 flags" in text and page.count("<section class='flag") == 2
        # The de-identification QA of its de-identified copy finds the leftover name and the face, and nothing else.
        assert "2 series: 2 with header findings, 2 re-identifiable by brain (100%), 1 with a face (1 of them " \
               "claiming 113102)" in text
        qa = json.loads((home / "reports" / "deid-qa.json").read_text())["series"]
        findings = sorted(f["attribute"] for row in qa for f in row["header_findings"])
        assert findings == ["DeidentificationMethodCodeSequence", "DeidentificationMethodCodeSequence",
                            "PatientIdentityRemoved", "PatientName"], findings
    else:  # a bare machine: warped copies of one head; the planted duplicate at least is found
        assert recorded.count("possible_duplicate") == 1, recorded
