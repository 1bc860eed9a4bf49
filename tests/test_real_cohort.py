"""The real-head cohorts: real people as they are (no warp), a fixed split, thick 2D visits, old kinds untouched.

Plan tests need no data. The one pixel test writes two volumes of one small real head (a 2 mm NIfTI of
shared/data/people, prepared once and cached like every base head) and skips where shared/data is absent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from fingerprint.cohort import deform, heads
from fingerprint.cohort.heads import (
    PEOPLE_HEADS,
    REAL_CALIBRATION_HEADS,
    REAL_TEST_HEADS,
)
from fingerprint.cohort.records import CSV_COLUMNS
from fingerprint.cohort.visits import (
    THICK_2D_SHARE,
    is_thick_2d,
    plan_subjects,
    plan_visits,
)

#: The t1/ DICOM people (plus Colin27, a real man) that join the 33 people of shared/data/people.
NAMED_T1_HEADS = {"philips-elition", "siemens-trio", "siemens-skyra-child", "siemens-prisma-xa30", "siemens-avanto", "colin27"}
#: The cheap real head of the pixel test: the first real-test person (2 mm NIfTI).
SMALL_HEAD = "oa-subj1"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def test_split_is_disjoint_and_covers_every_real_person() -> None:
    test, calibration = set(REAL_TEST_HEADS), set(REAL_CALIBRATION_HEADS)
    assert len(test) == len(REAL_TEST_HEADS) == 13 and len(calibration) == len(REAL_CALIBRATION_HEADS) == 26
    assert not test & calibration
    assert test | calibration == set(PEOPLE_HEADS) | NAMED_T1_HEADS
    assert len(PEOPLE_HEADS) == 33 and "mni152" not in test | calibration  # an average is not a person
    assert {"siemens-trio", "colin27", "oa-subj1", "oa-subj8", "ixi012", "ixi013", "ixi014"} <= test
    assert all(name in heads.HEAD_SOURCES for name in test | calibration)


def test_one_subject_per_real_head_with_its_split() -> None:
    for kind, prefix, split, names in (
        ("real-calibration", "rc", "calibration", REAL_CALIBRATION_HEADS),
        ("real-test", "rt", "test", REAL_TEST_HEADS),
    ):
        plans = plan_subjects(kind, 1000, 0)
        assert [p.base_head for p in plans] == list(names)
        assert [p.subject_id for p in plans] == [f"{prefix}-{name}" for name in names]
        assert {p.split for p in plans} == {split} and all(p.real_person for p in plans)
    assert [p.base_head for p in plan_subjects("real-test", 2, 0)] == list(REAL_TEST_HEADS[:2])


def test_real_person_visits_differ_in_pose_and_appearance_but_not_in_anatomy() -> None:
    subject = plan_subjects("real-test", 1, 4)[0]
    anatomy = subject.anatomy()
    assert anatomy.scale == (1.0, 1.0, 1.0) and anatomy.ventricle_factor == 0.0
    assert not np.any(anatomy.displacement)
    assert deform.REAL_VENTRICLE_PER_YEAR[0] <= anatomy.ageing.ventricle_per_year <= deform.REAL_VENTRICLE_PER_YEAR[1]
    assert deform.REAL_ATROPHY_PER_YEAR[0] <= anatomy.ageing.atrophy_per_year <= deform.REAL_ATROPHY_PER_YEAR[1]
    point = (12.0, -30.0, 25.0)
    assert np.allclose(anatomy.to_base(0.0).TransformPoint(point), point)  # baseline: the person as they are
    first, second = plan_visits(subject, 2)
    assert first.pose_angles_deg != second.pose_angles_deg and first.pose_shift_mm != second.pose_shift_mm
    assert first.appearance != second.appearance
    # Ageing only: a few years move no point of the head by more than about a millimetre.
    moved = np.asarray(anatomy.to_base(second.years).TransformPoint(point))
    assert second.years > 0 and np.linalg.norm(moved - point) < 1.5


def test_thick_2d_visits_occur_at_the_stated_share() -> None:
    visits = [v for seed in range(12) for s in plan_subjects("real-calibration", 26, seed) for v in plan_visits(s, 3)]
    thick = [v for v in visits if is_thick_2d(v)]
    assert len(visits) == 936 and abs(len(thick) / len(visits) - THICK_2D_SHARE) < 0.04
    assert {v.plane for v in thick} == {"sagittal", "axial"} and all(v.oblique_deg == 0.0 for v in thick)
    assert all(4.0 <= v.appearance.thickness_mm <= 5.0 and 0.9 <= v.appearance.pixel_mm <= 1.0 for v in thick)
    assert all(v.appearance.thickness_mm <= 2.5 for v in visits if not is_thick_2d(v))
    # The synthetic kinds never get the thick protocol.
    assert not any(is_thick_2d(v) for s in plan_subjects("calibration", 30, 0) for v in plan_visits(s, 3))


@pytest.mark.parametrize(
    ("kind", "seed", "subject", "visit", "date", "plane", "pose_x", "thickness", "residual_x"),
    [  # recorded from the generator before the real-head kinds were added
        ("train", 0, 1, 1, "2009-11-30", "coronal", 14.390115505029616, 2.5, -1.5945817896150907),
        ("benchmark", 20230227, 1, 2, "2018-03-17", "sagittal", 10.29689275938275, 2.0, -1.9837095315672921),
        ("calibration", 1, 2, 2, "2018-08-11", "axial", -0.9809880110462483, 2.5, 0.8282717297592443),
    ],
)
def test_old_kinds_plan_exactly_as_before(
    kind: str, seed: int, subject: int, visit: int, date: str, plane: str, pose_x: float, thickness: float, residual_x: float
) -> None:
    plan = plan_subjects(kind, subject + 1, seed)[subject]
    got = plan_visits(plan, 3)[visit]
    assert not plan.real_person
    assert (got.date.isoformat(), got.plane, got.pose_angles_deg[0]) == (date, plane, pose_x)
    assert (got.appearance.thickness_mm, got.residual_angles_deg[0]) == (thickness, residual_x)


def test_old_kinds_anatomy_exactly_as_before() -> None:
    anatomy = plan_subjects("train", 1, 0)[0].anatomy()
    assert anatomy.scale == (1.0031836957164713, 0.9483129060718702, 0.9796244697072415)
    assert anatomy.ventricle_factor == 0.12700207237198854


def test_import_and_planning_work_without_shared_data(tmp_path: Path) -> None:
    """No shared/data and no cache: the module imports, real kinds plan, and the heads say they are unavailable."""
    code = (
        "from fingerprint.cohort import heads, visits; "
        "assert len(visits.plan_subjects('real-test', 99, 0)) == 13; "
        "assert not heads.head_available('oa-subj1') and heads.head_available('mni152')"
    )
    env = {**os.environ, "DBP_SHARED_DATA": str(tmp_path / "absent"), "DBP_COHORT_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def cohort_rows(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a cohort folder's cohort.csv."""
    with open(folder / "cohort.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or ()), list(reader)


def test_real_test_cli_writes_head_volumes(tmp_path: Path) -> None:
    """Two visits of one real person through the full path: the CSV contract, the manifest, volumes that are heads."""
    from typer.testing import CliRunner

    from deepbrainprint.cli.app import app

    if not heads.head_available(SMALL_HEAD):
        pytest.skip(f"{SMALL_HEAD}: not cached and {heads.source_path(SMALL_HEAD)} absent (set DBP_SHARED_DATA)")
    out = tmp_path / "real-test"
    args = ["cohort", "generate", "--out", str(out), "--kind", "real-test", "--subjects", "1", "--visits", "2", "--seed", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    columns, rows = cohort_rows(out)
    assert columns == [*CSV_COLUMNS, "path"]
    assert [r["scan_id"] for r in rows] == [f"rt-{SMALL_HEAD}-v0", f"rt-{SMALL_HEAD}-v1"]
    assert {(r["subject_id"], r["base_head"], r["split"]) for r in rows} == {(f"rt-{SMALL_HEAD}", SMALL_HEAD, "test")}
    manifest = json.loads((out / "cohort.json").read_text())
    assert (manifest["kind"], manifest["seed"], manifest["subjects"], manifest["scans"]) == ("real-test", 4, 1, 2)
    assert manifest["base_heads"] == [SMALL_HEAD] and manifest["real_test_heads"] == list(REAL_TEST_HEADS)
    for row in rows:
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(out / row["path"])))
        head = volume > 0.2 * np.percentile(volume, 99.5)
        assert 0.1 < head.mean() < 0.7, row["scan_id"]  # a head in its field of view, neither empty nor all head


def test_train_cohort_from_real_calibration_heads_makes_new_warped_people() -> None:
    """``--heads real-calibration``: warps of the 26 calibration people, never a test person, new ids and draws."""
    from fingerprint.cohort.visits import DEFAULT_HEAD_SET, TRAIN_HEAD_SETS

    plans = plan_subjects("train", 2 * 10 * len(REAL_CALIBRATION_HEADS), 0, "real-calibration")
    assert [p.base_head for p in plans[: len(REAL_CALIBRATION_HEADS)]] == list(REAL_CALIBRATION_HEADS)
    assert not {p.base_head for p in plans} & set(REAL_TEST_HEADS)
    assert not any(p.real_person for p in plans)  # warped: every subject is a new person
    val = [p for p in plans if p.split == "val"]
    assert len(val) == len(plans) // 10 and {p.base_head for p in val} == set(REAL_CALIBRATION_HEADS)
    default = plan_subjects("train", len(plans), 0)
    assert default == plan_subjects("train", len(plans), 0, DEFAULT_HEAD_SET)  # the default is the old plan
    assert not {p.subject_id for p in plans} & {p.subject_id for p in default}
    assert len({p.seed_entropy for p in plans} | {p.seed_entropy for p in default}) == 2 * len(plans)
    assert plans[0].anatomy().scale != default[0].anatomy().scale
    assert plan_visits(plans[0], 2)[1].scan_id == f"{plans[0].subject_id}-v1"
    assert set(TRAIN_HEAD_SETS) == {"training", "real-calibration"}
    for kind in ("benchmark", "calibration", "real-test"):
        with pytest.raises(ValueError, match="train kind only"):
            plan_subjects(kind, 2, 0, "real-calibration")
    with pytest.raises(ValueError, match="unknown head set"):
        plan_subjects("train", 2, 0, "real-test")
