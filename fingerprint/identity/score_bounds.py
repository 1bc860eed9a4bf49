"""Thresholds from two score distributions: how high different people score, how low one person can score.

Two bounds first, each for the false-alarm rate ``far``, each the safer of an empirical quantile and the quantile of
a normal fitted to the scores after Fisher's z transform (``arctanh``; a few thousand pairs cannot measure a 0.1 %
rate alone, the fit extrapolates it):

* the **different-person bound**: different people reach it at most at rate ``far`` (the larger of the two);
* the **same-person bound**: one person falls below it at most at rate ``far`` (the smaller of the two).

Then the thresholds (at or above ``match``: the same person; below ``mismatch``: not the same person; between:
``needs_review``):

* where the two bounds overlap (same-person bound at or below the different-person one), ``match`` is the
  different-person bound and ``mismatch`` the same-person bound: each error kept at ``far``, the rest reviewed;
* where they are apart (the verification's usual case), ``mismatch`` is the different-person bound and ``match`` the
  point between the two fitted normals that is equally far, in standard deviations, from both (never below the
  different-person bound, never above the same-person bound).

The fit is the mean and standard deviation where the labels are known to be right (real people of a curated
cohort), or the median and the scaled median absolute deviation (``robust=True``) where some labels are wrong (a
site's own archive, :mod:`fingerprint.identity.site_calibration`): a few mislabelled pairs then move neither the
centre nor the spread of either distribution.

Example::

    thresholds = score_thresholds(same_scores, different_scores, far=0.001, version="dbp-verify-v1")
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import stats

from fingerprint.identity.calibration import Thresholds
from fingerprint.metrics import score_quantiles

#: The median absolute deviation of a normal times this is its standard deviation.
MAD_TO_SD = 1.4826


def score_thresholds(
    same: np.ndarray,
    different: np.ndarray,
    far: float,
    version: str,
    details: dict[str, Any] | None = None,
    robust: bool = False,
) -> Thresholds:
    """The thresholds for ``far`` from same- and different-person scores (NaN scores left out)."""
    if not 0 < far < 1:
        raise ValueError("far must be in (0, 1)")
    same = np.sort(np.asarray(same, dtype=np.float64)[np.isfinite(same)])
    different = np.sort(np.asarray(different, dtype=np.float64)[np.isfinite(different)])[::-1]
    if len(same) < 3 or len(different) < 3:
        raise ValueError("calibration needs at least 3 same-person and 3 different-person pairs")
    allowed = int(math.floor(far * len(different)))
    different_empirical = float(np.nextafter(different[allowed], np.inf)) if allowed < len(different) else -1.0
    different_fitted = fitted_quantile(different, 1.0 - far, robust)
    different_bound = max(different_empirical, different_fitted)
    same_empirical = float(same[int(math.floor(far * len(same)))])
    same_fitted = fitted_quantile(same, far, robust)
    same_bound = min(same_empirical, same_fitted)
    if same_bound <= different_bound:
        match, mismatch, how = different_bound, same_bound, "overlapping: match = different bound, mismatch = same bound"
    else:
        match = min(max(_equal_tails(same, different, robust), different_bound), same_bound)
        mismatch, how = different_bound, "apart: mismatch = different bound, match = equal-tail point between them"
    fit = "median and MAD" if robust else "mean and SD"
    measured = {
        "method": f"bounds at far: different people max(empirical, normal fit on arctanh by {fit}), same person "
        f"min(empirical, fit); {how}",
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
    return Thresholds(version, float(match), float(mismatch), far, "calibrated", {**measured, **(details or {})})


def normal_fit(scores: np.ndarray, robust: bool = False) -> tuple[float, float]:
    """Centre and spread of ``arctanh(scores)``: mean and SD, or median and scaled MAD (``robust``)."""
    z = np.arctanh(np.clip(np.asarray(scores, dtype=np.float64), -0.999999, 0.999999))
    if robust:
        centre = float(np.median(z))
        return centre, max(MAD_TO_SD * float(np.median(np.abs(z - centre))), 1e-6)
    return float(z.mean()), max(float(z.std(ddof=1)), 1e-6)


def fitted_quantile(scores: np.ndarray, q: float, robust: bool = False) -> float:
    """The ``q`` quantile of a normal fitted to ``arctanh(scores)``, mapped back with ``tanh``."""
    centre, spread = normal_fit(scores, robust)
    return float(np.tanh(stats.norm.ppf(q, loc=centre, scale=spread)))


def _equal_tails(same: np.ndarray, different: np.ndarray, robust: bool) -> float:
    """The score equally many fitted standard deviations above the different-person centre and below the
    same-person centre (in arctanh space)."""
    (mu_s, sd_s), (mu_d, sd_d) = normal_fit(same, robust), normal_fit(different, robust)
    return float(np.tanh((mu_d * sd_s + mu_s * sd_d) / (sd_s + sd_d)))
