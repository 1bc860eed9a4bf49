"""Verification thresholds from real people: how high different people score, how low one person can score.

Two thresholds, as for the fingerprint (:mod:`fingerprint.calibration`), for the false-alarm rate ``far``:

* ``match``: at or above it, "the same person". Set so that different real people reach it at most at rate ``far``:
  the larger of the empirical threshold and the ``1 - far`` quantile of a normal fitted to the different-person
  scores after Fisher's z transform (``arctanh``). Why the fitted tail too: a few hundred or thousand pairs of real
  people cannot measure a 0.1 % rate alone; the fit extrapolates it, and the larger of the two is the safer one.
* ``mismatch``: below it, "not the same person". The smaller of the empirical ``far`` quantile of the same-person
  scores and the fitted normal's, never above ``match``. Between the two a verdict is ``needs_review``.

Same-person pairs are simulated visits of real heads (real anatomy, simulated scanners); different-person pairs are
every pair of distinct real people. The heads that test the thresholds are never among those that set them.
"""

from __future__ import annotations

import math
from pathlib import Path
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import stats

from fingerprint.calibration import Thresholds, _quantiles
from fingerprint.verification import METHOD_VERSION


def verification_thresholds(
    same: np.ndarray, different: np.ndarray, far: float = 0.001, details: dict[str, Any] | None = None
) -> Thresholds:
    """The thresholds for ``far`` from same- and different-person verification scores (NaN scores left out)."""
    if not 0 < far < 1:
        raise ValueError("far must be in (0, 1)")
    same = np.sort(np.asarray(same, dtype=np.float64)[np.isfinite(same)])
    different = np.sort(np.asarray(different, dtype=np.float64)[np.isfinite(different)])[::-1]
    if len(same) < 3 or len(different) < 3:
        raise ValueError("verification calibration needs at least 3 same-person and 3 different-person pairs")
    allowed = int(math.floor(far * len(different)))
    empirical_match = float(np.nextafter(different[allowed], np.inf)) if allowed < len(different) else -1.0
    fitted_match = _fitted_quantile(different, 1.0 - far)
    match = max(empirical_match, fitted_match)
    empirical_mismatch = float(same[int(math.floor(far * len(same)))])
    fitted_mismatch = _fitted_quantile(same, far)
    mismatch = min(empirical_mismatch, fitted_mismatch, match)
    measured = {
        "method": "match: max(empirical, normal fit on arctanh scores) of different people at 1 - far; "
        "mismatch: min(empirical, normal fit) of the same person at far, never above match",
        "same_pairs": int(len(same)),
        "different_pairs": int(len(different)),
        "match_empirical": round(empirical_match, 6),
        "match_fitted": round(fitted_match, 6),
        "mismatch_empirical": round(empirical_mismatch, 6),
        "mismatch_fitted": round(fitted_mismatch, 6),
        "far_duplicate_measured": float(np.mean(different >= match)),
        "far_mismatch_measured": float(np.mean(same < mismatch)),
        "same_below_match": float(np.mean(same < match)),
        "different_below_mismatch": float(np.mean(different < mismatch)),
        "gap": round(float(same.min() - different.max()), 6),
        "same_score": _quantiles(same),
        "different_score": _quantiles(different),
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if len(different) < math.ceil(1 / far):
        measured["warning"] = f"fewer different-person pairs than 1/far: the {far:g} rate rests on the fitted tail"
    return Thresholds(METHOD_VERSION, float(match), float(mismatch), far, "calibrated", {**measured, **(details or {})})


def _fitted_quantile(scores: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a normal fitted to ``arctanh(scores)``, mapped back with ``tanh``."""
    z = np.arctanh(np.clip(scores, -0.999999, 0.999999))
    return float(np.tanh(stats.norm.ppf(q, loc=z.mean(), scale=max(z.std(ddof=1), 1e-6))))


def calibrate_real_cohort(
    cohort_dir: Path, fingerprinter: Any, far: float = 0.001, split: str | None = "calibration", workers: int = 1
) -> tuple[Thresholds, Thresholds]:
    """Fingerprint and verification thresholds from one cohort of real people (every scan through the real
    pipeline, every pair of scans verified)."""
    from fingerprint.calibration import pair_similarities, thresholds_from_similarities
    from fingerprint.identity_data import all_pairs, cohort_views, score_pairs, views_cache

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
