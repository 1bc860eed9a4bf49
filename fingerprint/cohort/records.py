"""What a cohort folder says about itself: ``cohort.csv`` (one row per scan) and ``cohort.json`` (how it was made).

The CSV is the contract with training and evaluation (``fingerprint.model.training.data``): scan_id, subject_id, visit,
date (YYYY-MM-DD), base_head, split, and ``path`` (relative to the folder) when the scans are volumes on disk.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fingerprint.cohort.visits import SubjectPlan, VisitPlan

CSV_COLUMNS = ("scan_id", "subject_id", "visit", "date", "base_head", "split")


def scan_row(subject: SubjectPlan, visit: VisitPlan, path: str | None = None) -> dict[str, str]:
    """One CSV row; ``path`` only for cohorts of volumes."""
    row = {
        "scan_id": visit.scan_id,
        "subject_id": subject.subject_id,
        "visit": str(visit.visit),
        "date": visit.date.isoformat(),
        "base_head": subject.base_head,
        "split": subject.split,
    }
    if path is not None:
        row["path"] = path
    return row


def write_cohort_csv(folder: Path, rows: list[dict[str, str]]) -> Path:
    """Write ``cohort.csv`` (columns in the contract's order, ``path`` last when present)."""
    columns = list(CSV_COLUMNS) + (["path"] if rows and "path" in rows[0] else [])
    path = Path(folder) / "cohort.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``cohort.json``: kind, seed, sizes, head split, generator version, timings."""
    path = Path(folder) / "cohort.json"
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path
