"""Verification thresholds from real people: how high different people score, how low one person can score.

Two bounds first, each for the false-alarm rate ``far``, each the safer of an empirical quantile and the quantile of
a normal fitted to the scores after Fisher's z transform (``arctanh``; a few thousand pairs of real people cannot
measure a 0.1 % rate alone, the fit extrapolates it):

* the **different-person bound**: different real people reach it at most at rate ``far`` (the larger of the two);
* the **same-person bound**: one person falls below it at most at rate ``far`` (the smaller of the two).

Then the thresholds (at or above ``match``: the same person; below ``mismatch``: not the same person; between:
``needs_review``):

* where the two bounds overlap (same-person bound at or below the different-person one), ``match`` is the
  different-person bound and ``mismatch`` the same-person bound: each error kept at ``far``, the rest reviewed;
* where they are apart (the verification's usual case), ``mismatch`` is the different-person bound and ``match`` the
  point between the two fitted normals that is equally far, in standard deviations, from both (never below the
  different-person bound, never above the same-person bound): a score no different person reaches but closer to
  them than to the same person is reviewed, not decided, and both kinds of error keep the widest margin the data
  allows.

Same-person pairs are simulated visits of real heads (real anatomy, simulated scanners); different-person pairs are
every pair of distinct real people. The heads that test the thresholds are never among those that set them.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.verification import METHOD_VERSION
from fingerprint.metrics import score_quantiles


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
    different_empirical = float(np.nextafter(different[allowed], np.inf)) if allowed < len(different) else -1.0
    different_fitted = _fitted_quantile(different, 1.0 - far)
    different_bound = max(different_empirical, different_fitted)
    same_empirical = float(same[int(math.floor(far * len(same)))])
    same_fitted = _fitted_quantile(same, far)
    same_bound = min(same_empirical, same_fitted)
    if same_bound <= different_bound:
        match, mismatch, how = different_bound, same_bound, "overlapping: match = different bound, mismatch = same bound"
    else:
        match = min(max(_equal_tails(same, different), different_bound), same_bound)
        mismatch, how = different_bound, "apart: mismatch = different bound, match = equal-tail point between them"
    measured = {
        "method": f"bounds at far: different people max(empirical, normal fit on arctanh), same person min(empirical, "
        f"fit); {how}",
        "same_pairs": int(len(same)),
        "different_pairs": int(len(different)),
        "different_bound_empirical": round(different_empirical, 6),
        "different_bound_fitted": round(different_fitted, 6),
        "same_bound_empirical": round(same_empirical, 6),
        "same_bound_fitted": round(same_fitted, 6),
        "far_duplicate_measured": float(np.mean(different >= match)),
        "far_mismatch_measured": float(np.mean(same < mismatch)),
        "same_below_match": float(np.mean(same < match)),
        "different_below_mismatch": float(np.mean(different < mismatch)),
        "gap": round(float(same.min() - different.max()), 6),
        "same_score": score_quantiles(same),
        "different_score": score_quantiles(different),
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if len(different) < math.ceil(1 / far):
        measured["warning"] = f"fewer different-person pairs than 1/far: the {far:g} rate rests on the fitted tail"
    return Thresholds(METHOD_VERSION, float(match), float(mismatch), far, "calibrated", {**measured, **(details or {})})


def _equal_tails(same: np.ndarray, different: np.ndarray) -> float:
    """The score equally many fitted standard deviations above the different-person mean and below the same-person
    mean (in arctanh space)."""
    (mu_s, sd_s), (mu_d, sd_d) = _fit(same), _fit(different)
    return float(np.tanh((mu_d * sd_s + mu_s * sd_d) / (sd_s + sd_d)))


def _fit(scores: np.ndarray) -> tuple[float, float]:
    z = np.arctanh(np.clip(scores, -0.999999, 0.999999))
    return float(z.mean()), max(float(z.std(ddof=1)), 1e-6)


def _fitted_quantile(scores: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a normal fitted to ``arctanh(scores)``, mapped back with ``tanh``."""
    mean, sd = _fit(scores)
    return float(np.tanh(stats.norm.ppf(q, loc=mean, scale=sd)))


def calibrate_real_cohort(
    cohort_dir: Path, fingerprinter: Any, far: float = 0.001, split: str | None = "calibration", workers: int = 1
) -> tuple[Thresholds, Thresholds]:
    """Fingerprint and verification thresholds from one cohort of real people (every scan through the real
    pipeline, every pair of scans verified)."""
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
