"""The synthetic cohort: reproducible, patient-disjoint, held-out heads kept out, identity kept across visits.

Pixel tests use subjects built on the MNI152 head (prepared in a second from nilearn's template), so they run in
seconds without the DICOM heads; the split tests check every head through the seeded plan.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fingerprint.cohort import deform
from fingerprint.cohort.heads import HELD_OUT_HEADS, TRAINING_HEADS
from fingerprint.cohort.records import CSV_COLUMNS
from fingerprint.cohort.training_set import fast_slice, write_slice_cohort
from fingerprint.cohort.visits import plan_subjects, plan_visits


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def mni_subjects(kind: str, count: int, seed: int = 0) -> list:
    """Subjects of ``kind`` whose base head is MNI152 (every 5th of the training heads' rotation)."""
    plans = plan_subjects(kind, 5 * count, seed)
    chosen = [p for p in plans if p.base_head == "mni152"][:count]
    assert len(chosen) == count
    return chosen


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    mask = (a > 0) & (b > 0)
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_same_seed_gives_the_same_cohort_and_another_seed_does_not(tmp_path: Path) -> None:
    subjects = mni_subjects("train", 2)
    write_slice_cohort(tmp_path / "a", subjects, visits=2)
    write_slice_cohort(tmp_path / "b", subjects, visits=2)
    write_slice_cohort(tmp_path / "c", mni_subjects("train", 2, seed=1), visits=2)
    a, b, c = (np.load(tmp_path / name / "slices.npz") for name in "abc")
    assert np.array_equal(a["slices"], b["slices"]) and list(a["scan_id"]) == list(b["scan_id"])
    assert (tmp_path / "a" / "cohort.csv").read_text() == (tmp_path / "b" / "cohort.csv").read_text()
    assert not np.array_equal(a["slices"], c["slices"])
    # Subject k does not depend on how many subjects were asked for.
    assert plan_subjects("train", 3, 0)[2] == plan_subjects("train", 50, 0)[2]


def test_splits_are_subject_disjoint_and_validation_covers_every_training_head() -> None:
    train = plan_subjects("train", 200, 0)
    splits = {p.subject_id: p.split for p in train}
    assert len(splits) == 200 and set(splits.values()) == {"train", "val"}
    val = [p for p in train if p.split == "val"]
    assert 15 <= len(val) <= 25
    assert {p.base_head for p in val} == set(TRAINING_HEADS)
    ids = [{p.subject_id for p in plan_subjects(kind, 50, 0)} for kind in ("train", "benchmark", "calibration")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    scan_ids = [v.scan_id for p in train[:20] for v in plan_visits(p, 4)]
    assert len(set(scan_ids)) == len(scan_ids)


def test_held_out_heads_never_make_training_subjects() -> None:
    assert set(HELD_OUT_HEADS) == {"colin27", "siemens-trio"}
    assert not set(HELD_OUT_HEADS) & set(TRAINING_HEADS)
    for kind in ("train", "calibration"):
        assert {p.base_head for p in plan_subjects(kind, 100, 3)} == set(TRAINING_HEADS)
    assert {p.base_head for p in plan_subjects("benchmark", 100, 3)} == set(HELD_OUT_HEADS)


def test_visits_of_one_subject_resemble_each_other_more_than_siblings_do() -> None:
    """Same base head for all: only the subject deformation can tell them apart, across contrast, noise and years."""
    slices = {p.subject_id: [fast_slice(p.anatomy(), v) for v in plan_visits(p, 3)] for p in mni_subjects("train", 4)}
    within = [ncc(s[i], s[j]) for s in slices.values() for i in range(3) for j in range(i + 1, 3)]
    keys = list(slices)
    between = [ncc(slices[a][i], slices[b][j]) for n, a in enumerate(keys) for b in keys[n + 1 :] for i in range(3) for j in range(3)]
    assert np.mean(within) > np.mean(between) + 0.05, (np.mean(within), np.mean(between))
    assert np.median(within) > np.percentile(between, 90)


def test_fast_slice_is_a_normalised_masked_canonical_slice() -> None:
    from fingerprint.imaging.slicing import canonical_mask

    subject = mni_subjects("train", 1)[0]
    pixels = fast_slice(subject.anatomy(), plan_visits(subject, 1)[0])
    assert pixels.shape == (128, 128) and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert np.all(pixels[~canonical_mask()] == 0) and pixels[canonical_mask()].std() > 0.1


def test_deformations_do_not_fold_even_after_years_of_ageing() -> None:
    for subject in mni_subjects("train", 3):
        anatomy = subject.anatomy()
        field = anatomy.displacement + deform.ventricle_field() * (anatomy.ventricle_factor + 0.025 * 10)
        field = field + deform.atrophy_field() * 0.004 * 10
        assert deform.min_jacobian(field) > 0.05


def test_benchmark_volume_reslices_through_the_pipeline_to_the_subjects_plane() -> None:
    """A full-path volume (rotated, shifted, any plane) gives, through the real pipeline, the subject's own plane."""
    from fingerprint.cohort.alignment_check import residual_of
    from fingerprint.cohort.benchmark import scan_volume
    from fingerprint.imaging.canonical import align
    from fingerprint.imaging.pipeline import slice_volume

    subject = mni_subjects("calibration", 1)[0]
    anatomy = subject.anatomy()
    visit = plan_visits(subject, 1)[0]
    image = scan_volume(anatomy, visit)
    assert image.GetPixelID() == sitk.sitkInt16
    residual = residual_of(visit, align(image).transform)
    assert abs(residual["dz_mm"]) < 4.0 and residual["rotation_deg"] < 5.0, residual
    pixels, _geometry = slice_volume(image)
    ideal = fast_slice(anatomy, dataclasses.replace(visit, residual_angles_deg=(0.0,) * 3, residual_shift_mm=(0.0,) * 3))
    assert ncc(pixels, ideal) > 0.7


def test_volume_cohort_csv_and_cli(tmp_path: Path) -> None:
    """The CLI writes the contract: cohort.csv columns, ISO dates in visit order, paths that exist, a manifest."""
    out = tmp_path / "calib"
    subprocess.run(
        [sys.executable, "-m", "deepbrainprint.cli.app", "cohort", "generate", "--out", str(out), "--kind", "calibration",
         "--subjects", "1", "--visits", "2", "--seed", "5", "--dicom", "1"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    with open(out / "cohort.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert tuple(reader.fieldnames or ()) == (*CSV_COLUMNS, "path")
    assert [r["visit"] for r in rows] == ["0", "1"] and {r["split"] for r in rows} == {"calibration"}
    dates = [dt.date.fromisoformat(r["date"]) for r in rows]
    assert dates[0] < dates[1]
    assert all((out / r["path"]).exists() and r["path"].endswith(".nii.gz") for r in rows)
    manifest = json.loads((out / "cohort.json").read_text())
    assert manifest["kind"] == "calibration" and manifest["scans"] == 2 and manifest["seed"] == 5
    # --dicom 1: the first scan again as a DICOM series the pipeline's reader turns back into the same volume.
    from fingerprint.imaging.dicom_read import read_series

    volume = sitk.ReadImage(str(out / rows[0]["path"]))
    loaded = read_series(out / "dicom" / rows[0]["scan_id"])
    assert loaded.image.GetSize() == volume.GetSize() and loaded.identifiers.patient_id == rows[0]["subject_id"]
    assert np.allclose(loaded.image.GetDirection(), volume.GetDirection(), atol=1e-4)
    assert np.allclose(loaded.image.GetOrigin(), volume.GetOrigin(), atol=0.01)
    assert not (out / "dicom" / rows[1]["scan_id"]).exists()


def test_residual_model_has_a_subject_offset_shared_by_its_visits() -> None:
    from fingerprint.cohort.visits import FIRST_RESIDUAL, ResidualModel

    offsets_only = ResidualModel(0.0, 0.0, 2.5, 2.5, 0.0, 0.0, 0.0)
    a, b = plan_subjects("train", 2, 0)
    visits_a, visits_b = plan_visits(a, 3, offsets_only), plan_visits(b, 3, offsets_only)
    assert len({v.residual_angles_deg for v in visits_a}) == 1 and len({v.residual_shift_mm for v in visits_a}) == 1
    assert visits_a[0].residual_angles_deg != visits_b[0].residual_angles_deg
    # The residual never changes anything else about a visit (pose, scanner, date stay as planned).
    first = plan_visits(a, 3, FIRST_RESIDUAL)
    assert [(v.pose_angles_deg, v.appearance, v.date) for v in first] == [(v.pose_angles_deg, v.appearance, v.date) for v in visits_a]
    assert all(max(abs(x) for x in v.residual_angles_deg) < 6 for v in first)
