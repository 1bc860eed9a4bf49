"""The flags report: every alarm with its evidence pictures and next step, review states, the audit log, the CLI.

An archive (real store, SQLite) records four series: two people, then person A's second scan filed under a new
PatientID (a duplicate) and person B's second scan filed under A's PatientID (a mismatch). The report must list
exactly the two alarms, newest first, with pictures and no clear PatientID, and acknowledging one must show.
"""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta

import numpy as np
import pytest
from typer.testing import CliRunner

from deepbrainprint.cli.app import app
from fingerprint.identity.archive import Archive, ArchiveConfig
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.reviews import audit_log, set_review
from fingerprint.identity.store import Store
from fingerprint.reports.flags import collect_flags
from fingerprint.reports.render import write_flags_report

THRESHOLDS = Thresholds("test-model", 0.8, 0.6, 0.001, "explicit")


@pytest.fixture
def flagged_archive(tmp_path, synthetic_fingerprint):
    rng = np.random.default_rng(3)
    person_a, person_b = rng.normal(0, 1, 512), rng.normal(0, 1, 512)
    config = ArchiveConfig.at(tmp_path / "archive", verification=False)
    plan = [
        (person_a, "PID-A", "1.2.3.1", "new_patient"),
        (person_b, "PID-B", "1.2.3.2", "new_patient"),
        (person_a, "PID-C", "1.2.3.3", "possible_duplicate"),  # A again, under a new PatientID
        (person_b, "PID-A", "1.2.3.4", "identity_mismatch"),  # B's scan filed under A
    ]
    with Archive(config, model=object(), thresholds=THRESHOLDS) as archive:
        for base, patient, uid, expected in plan:
            vector = base + rng.normal(0, 0.1, 512)
            out = archive.decide_and_record(synthetic_fingerprint(vector, patient, uid), {"folder": uid})
            assert out["verdict"] == expected
    store = Store(config.store_url)
    yield store, config
    store.close()


def test_the_report_lists_every_alarm_newest_first_with_pictures_and_no_clear_ids(flagged_archive, tmp_path) -> None:
    store, _ = flagged_archive
    flags = collect_flags(store)
    assert [f.verdict for f in flags] == ["identity_mismatch", "possible_duplicate"]
    assert [f.series_instance_uid for f in flags] == ["1.2.3.4", "1.2.3.3"]
    mismatch, duplicate = flags
    assert mismatch.state == "open" and mismatch.patient.startswith("h:") and mismatch.matched_patient.startswith("h:")
    assert "move it in the PACS" in mismatch.next_step and "merge the records" in duplicate.next_step
    # The new scan, this PatientID's earlier scan that decided, the best match under another PatientID.
    assert len(mismatch.pictures) == 3 and len(duplicate.pictures) == 2
    assert all(p.png[:8] == b"\x89PNG\r\n\x1a\n" for f in flags for p in f.pictures)
    paths = write_flags_report(flags, tmp_path / "out")
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 5 and mismatch.flag in page and duplicate.flag in page
    assert "PID-A" not in page and "PID-B" not in page and "PID-C" not in page
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["flag"] for r in rows] == [mismatch.flag, duplicate.flag] and rows[0]["state"] == "open"
    report = json.loads(paths["json"].read_text())
    assert report["summary"].startswith("2 flags: 1 identity_mismatch, 1 possible_duplicate; 2 open")


def test_acknowledged_flags_keep_their_state_and_the_audit_log_says_who(flagged_archive) -> None:
    store, _ = flagged_archive
    mismatch, duplicate = collect_flags(store, pictures=False)
    set_review(store, duplicate.flag, "false_alarm", "twins, checked", "j.smith")
    set_review(store, mismatch.flag, "resolved", "moved to the right patient", "a.jones")
    set_review(store, mismatch.flag, "open", "reopened: wrong study moved", "a.jones")
    assert [f.flag for f in collect_flags(store, state="open", pictures=False)] == [mismatch.flag]
    (false_alarm,) = collect_flags(store, state="false_alarm", pictures=False)
    assert false_alarm.flag == duplicate.flag and false_alarm.reviewer == "j.smith" and false_alarm.comment == "twins, checked"
    assert collect_flags(store, state="resolved", pictures=False) == []
    log = audit_log(store, mismatch.flag)
    assert [(e["actor"], e["action"]) for e in log] == [("a.jones", "review: resolved"), ("a.jones", "review: open")]
    with pytest.raises(ValueError):
        set_review(store, mismatch.flag, "closed", "", "a.jones")
    with pytest.raises(KeyError):
        set_review(store, "F999", "resolved", "", "a.jones")


def test_since_includes_the_day_itself_and_excludes_the_day_after(flagged_archive) -> None:
    store, _ = flagged_archive
    today = collect_flags(store, pictures=False)[0].recorded_at[:10]
    day = date.fromisoformat(today)
    assert len(collect_flags(store, since=day, pictures=False)) == 2
    assert collect_flags(store, since=day + timedelta(days=1), pictures=False) == []


def test_report_cli_writes_the_files_acknowledges_and_refuses_unknown_flags(flagged_archive, tmp_path) -> None:
    _, config = flagged_archive
    index = str(config.index_dir)
    runner = CliRunner()
    result = runner.invoke(app, ["report", "flags", "--index", index, "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["verdict"] for line in lines] == ["identity_mismatch", "possible_duplicate"]
    assert "2 flags" in result.stderr and (tmp_path / "r" / "flags.html").exists()
    flag = lines[0]["flag"]
    other = str(tmp_path / "other-archive")
    result = runner.invoke(app, ["report", "ack", flag, "--state", "resolved", "--by", "a.jones", "--index", other])
    assert result.exit_code == 2 and "no flag" in result.stderr  # another archive, where this flag does not exist
    result = runner.invoke(app, ["report", "ack", flag, "--state", "resolved", "--by", "a.jones", "--index", index])
    assert result.exit_code == 0 and json.loads(result.stdout)["state"] == "resolved"
    result = runner.invoke(app, ["report", "ack", flag, "--state", "done", "--by", "a.jones", "--index", index])
    assert result.exit_code == 2 and "state must be one of" in result.stderr
    result = runner.invoke(app, ["report", "audit", "--index", index])
    actions = [json.loads(line)["action"] for line in result.stdout.splitlines()]
    assert actions == ["report: flags", "review: resolved"]


def test_flags_show_what_the_fingerprint_looked_at_with_the_model_that_made_them(flagged_archive) -> None:
    from fingerprint.model.encoder import seeded_encoder
    from fingerprint.model.fingerprinter import Fingerprinter

    store, _ = flagged_archive
    mismatch, duplicate = collect_flags(store, model=Fingerprinter(seeded_encoder(seed=1), "test-model"))
    assert [p.caption.startswith("what the fingerprint looked at") for p in mismatch.pictures] == [
        False, False, False, True]
    assert len(duplicate.pictures) == 3
    other_model = Fingerprinter(seeded_encoder(seed=1), "another-model")  # not the flags' model: no saliency
    assert len(collect_flags(store, model=other_model)[0].pictures) == 3


def test_saliency_of_a_real_match_lies_on_the_brain(shared_data, real_slice) -> None:
    """The shipped model comparing the Siemens Trio man (2010) with his own decubitus scan (2022): most of the
    gradient falls inside the canonical brain mask (a map spread evenly would put 60 % there)."""
    from fingerprint.imaging.slicing import canonical_mask
    from fingerprint.model.fingerprinter import load_model
    from fingerprint.model.saliency import saliency_map, saliency_png

    model = load_model()
    if model.model_version.startswith("untrained"):
        pytest.skip("no shipped weights")
    new = real_slice(shared_data / "t1" / "siemens-trio-3t-sag").pixels
    earlier = real_slice(shared_data / "repeats" / "decubitus-HFS-t1-2d").pixels
    heat = saliency_map(model, new, model.embed(earlier[None])[0])
    mask = canonical_mask()
    assert heat.max() == pytest.approx(1.0) and heat[mask].sum() / heat.sum() > 0.8
    assert saliency_png(new, heat)[:8] == b"\x89PNG\r\n\x1a\n"
