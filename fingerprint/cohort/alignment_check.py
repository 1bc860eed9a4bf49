"""How wrong is the slice pipeline's alignment? Measured on benchmark volumes, where the truth is known.

For a benchmark visit we know the pose ``P`` (scanner -> subject space). The pipeline's rigid alignment returns ``T``
(reference -> scanner). Their product ``R = P o T`` maps the reference to subject space; if the pipeline were perfect
and the subject exactly the reference's shape it would be the identity. What is left is the *residual* the training
fast path must mimic (:func:`fingerprint.cohort.visits.residual_transform`): its rotation, and where the centre of the
canonical plane lands (the z component is the error in the axial level). Subjects differ in shape (scale, ventricles),
so part of the residual is the same for all visits of a subject; the summary separates that part (``between
subjects``) from the visit-to-visit spread (``within subject``), which is what training must make the model robust to.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from fingerprint.cohort.visits import (
    VisitPlan,
    plan_subjects,
    plan_visits,
    pose_transform,
)


def residual_of(visit: VisitPlan, reference_to_scanner: sitk.Transform) -> dict[str, float]:
    """Rotation (deg) and plane-centre displacement (mm) of ``pose o alignment`` for one visit."""
    pose = pose_transform(visit)
    matrix = np.asarray(pose.GetMatrix()).reshape(3, 3) @ np.asarray(reference_to_scanner.GetMatrix()).reshape(3, 3)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(matrix) - 1.0) / 2.0))))
    from fingerprint.imaging.reference import (
        plane_centre,  # loads the reference: only when measuring
    )

    centre = np.asarray(plane_centre())
    moved = np.asarray(pose.TransformPoint(reference_to_scanner.TransformPoint(tuple(centre))))
    dx, dy, dz = (moved - centre).tolist()
    # Small-angle rotation components about x (pitch), y (roll), z (yaw) from the antisymmetric part.
    rx, ry, rz = (math.degrees(v) for v in (matrix[2, 1] - matrix[1, 2], matrix[0, 2] - matrix[2, 0], matrix[1, 0] - matrix[0, 1]))
    return {"rotation_deg": angle, "rot_x_deg": rx / 2, "rot_y_deg": ry / 2, "rot_z_deg": rz / 2, "dx_mm": dx, "dy_mm": dy, "dz_mm": dz}


def measure(cohort_dir: Path, limit: int | None = None) -> dict[str, Any]:
    """Align each volume of a benchmark/calibration folder with the pipeline and compare with the true pose."""
    from fingerprint.imaging.canonical import align

    manifest = json.loads((cohort_dir / "cohort.json").read_text())
    with open(cohort_dir / "cohort.csv", newline="") as fh:
        paths = {row["scan_id"]: row["path"] for row in csv.DictReader(fh)}
    visits = [
        (subject.subject_id, visit)
        for subject in plan_subjects(manifest["kind"], manifest["subjects"], manifest["seed"])
        for visit in plan_visits(subject, manifest["visits"])
    ]
    records = []
    for subject_id, visit in visits[:limit]:
        image = sitk.ReadImage(str(cohort_dir / paths[visit.scan_id]), sitk.sitkFloat32)
        try:
            alignment = align(image)
        except Exception as error:  # a rejection is a result too: count it, keep going
            records.append({"scan_id": visit.scan_id, "subject_id": subject_id, "failed": str(error)[:200]})
            continue
        records.append({"scan_id": visit.scan_id, "subject_id": subject_id, "metric": alignment.metric, **residual_of(visit, alignment.transform)})
    return {"records": records, "summary": summarise(records)}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians, SDs and 95th percentiles, and the between-subject / within-subject split of the SDs."""
    good = [r for r in records if "failed" not in r]
    summary: dict[str, Any] = {"scans": len(records), "failed": len(records) - len(good)}
    if not good:
        return summary
    subjects = np.array([r["subject_id"] for r in good])
    for key in ("rotation_deg", "rot_x_deg", "rot_y_deg", "rot_z_deg", "dx_mm", "dy_mm", "dz_mm"):
        values = np.array([r[key] for r in good])
        within = np.concatenate([values[subjects == s] - values[subjects == s].mean() for s in np.unique(subjects)])
        means = np.array([values[subjects == s].mean() for s in np.unique(subjects)])
        summary[key] = {
            "mean": round(float(values.mean()), 3),
            "median_abs": round(float(np.median(np.abs(values))), 3),
            "sd": round(float(values.std()), 3),
            "p95_abs": round(float(np.percentile(np.abs(values), 95)), 3),
            "sd_between_subjects": round(float(means.std()), 3),
            "sd_within_subject": round(float(within.std() * math.sqrt(len(values) / max(len(values) - len(means), 1))), 3),
        }
    return summary
