"""Thresholds from a cohort of real people: every scan through the real pipeline, every pair scored.

Same-person pairs are simulated visits of real heads (real anatomy, simulated scanners); different-person pairs are
every pair of distinct real people. The heads that test the thresholds are never among those that set them. The
labels are known to be right here, so both bounds use the plain normal fit (:mod:`fingerprint.identity.score_bounds`
explains the bounds and thresholds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.verification import METHOD_VERSION
from fingerprint.identity.score_bounds import score_thresholds


def verification_thresholds(
    same: np.ndarray, different: np.ndarray, far: float = 0.001, details: dict[str, Any] | None = None
) -> Thresholds:
    """The verification thresholds for ``far`` from same- and different-person scores (NaN scores left out)."""
    return score_thresholds(same, different, far, METHOD_VERSION, details)


def calibrate_real_cohort(
    cohort_dir: Path, fingerprinter: Any, far: float = 0.001, split: str | None = "calibration", workers: int = 1,
    verify: bool = True,
) -> tuple[Thresholds, Thresholds | None]:
    """Fingerprint and verification thresholds from one cohort of real people (every scan through the real
    pipeline, every pair of scans verified); ``verify=False``: the fingerprint's only (verification None)."""
    from fingerprint.evaluation.identity_data import (
        all_pairs,
        cohort_views,
        score_pairs,
        views_cache,
    )
    from fingerprint.identity.calibration import (
        pair_similarities,
        thresholds_from_similarities,
    )

    views = cohort_views(Path(cohort_dir), workers, split)
    details = {
        "cohort": str(cohort_dir),
        "scans": len(views.scans),
        "people": len(set(views.people.tolist())),
        "rejected_scans": {scan: entry["rejected"] for scan, entry in views.rejected.items()},
    }
    vectors = fingerprinter.embed(views.slices)
    same_fp, different_fp = pair_similarities(vectors, views.people.tolist())
    fingerprint = thresholds_from_similarities(
        same_fp, different_fp, far, fingerprinter.model_version, {**details, "people_kind": "real heads"}
    )
    if not verify:
        return fingerprint, None
    pairs = score_pairs(views, all_pairs(views), workers, cache=views_cache(cohort_dir))
    verification = verification_thresholds(
        pairs.score[pairs.same],
        pairs.score[~pairs.same],
        far,
        {
            **details,
            "unscored_pairs": int(np.sum(~np.isfinite(pairs.score))),
            "cpu_s_per_pair_p50": round(float(np.median(pairs.seconds)), 3),
        },
    )
    return fingerprint, verification
