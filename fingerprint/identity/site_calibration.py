"""Thresholds fitted to a site's own archive: its PatientIDs as labels, the few wrong ones treated as noise.

Every hospital archive holds real repeat scans of real people, most of them filed correctly under one PatientID.
Pairs of series that share a PatientID are taken as the same person and pairs that do not as different people, for
the fingerprint (cosine of the stored vectors: every pair) and for the verification (every same-label pair, a fixed
random sample of different-label pairs, whose tail is fitted rather than counted, and the different-label pairs the
fingerprint finds most alike, where one person under two PatientIDs would hide).

Wrong labels are the errors the product exists to find, so they must not set its thresholds:

1. **Label errors are set aside by the verification score**, which separates people by a wide margin: each
   distribution is fitted robustly (median and scaled MAD of the Fisher-z scores of the same-label pairs and of the
   random different-label sample), and a same-label pair closer, in fitted standard deviations, to the
   different-label fit than to its own is a study filed under the wrong patient; a different-label pair closer to
   the same-label fit is one person under two PatientIDs. Those pairs leave both scores' calibration (they are
   reported, with their counts). The different-label pairs most alike by fingerprint are verified for this reason:
   the fingerprint's match threshold is read in that tail, so a label error there must not set it.
2. **Both bounds are fitted robustly** (:func:`fingerprint.identity.score_bounds.score_thresholds` with
   ``robust=True``): mislabelled pairs the first step missed move neither the centre nor the spread.

The calibration refuses, saying how many more it needs, when the archive cannot support the requested false-alarm
rate: the 0.1 % tail of a normal fitted to n pairs is uncertain by about ``sqrt((1 + z²/2) / n)`` of its spread
(z = 3.09 at 0.1 %), so a third of a spread needs ``9 (1 + z²/2)`` same-label pairs (52 at 0.1 %), of which any one
patient counts with at most ``PAIRS_COUNTED_PER_PATIENT`` (one family of scans must not stand for the site).

Example::

    with Archive(config) as archive:
        result = calibrate_from_archive(archive.store, archive.model_version, far=0.001, brains_version="dbp-verify-v1")
        archive.store.save_thresholds(result.fingerprint.model_version, result.fingerprint.as_json())
"""

from __future__ import annotations

import io
import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.score_bounds import normal_fit, score_thresholds
from fingerprint.identity.store import Store
from fingerprint.identity.verification import score_brain_pairs

#: One patient's scans count with at most this many same-label pairs towards what a calibration needs.
PAIRS_COUNTED_PER_PATIENT = 3
#: Different-label pairs verified: a fixed random sample (fits the verification's different-person distribution) ...
DIFFERENT_PAIRS_VERIFIED = 300
#: ... and the most alike by fingerprint (checked for label errors, since the fingerprint's tail is read there).
TOP_DIFFERENT_PAIRS_VERIFIED = 100
#: The sample of different-label pairs is the same on every run of one archive.
SAMPLE_SEED = 20230227
#: What the stored verification rows of calibration pairs say they are (they carry no evidence picture).
CALIBRATION_PURPOSE = "site calibration"


class NotEnoughRepeats(ValueError):
    """The archive holds too few repeat patients for the requested false-alarm rate; says how many it needs."""

    def __init__(self, far: float, counted_pairs: int, needed_pairs: int, repeat_patients: int) -> None:
        more = math.ceil(max(0, needed_pairs - counted_pairs) / PAIRS_COUNTED_PER_PATIENT)
        super().__init__(
            f"too few repeat patients to calibrate at a false-alarm rate of {far:g}: {repeat_patients} patients "
            f"with two or more series give {counted_pairs} same-patient pairs (at most {PAIRS_COUNTED_PER_PATIENT} "
            f"per patient), {needed_pairs} are needed; about {more} more patients with three or more series would "
            f"do (or ask for a higher rate with --far)"
        )
        self.needed_pairs = needed_pairs
        self.counted_pairs = counted_pairs
        self.more_patients = more


@dataclass
class SiteCalibration:
    """Both scores' thresholds fitted on one archive, what they rest on, and a picture of the distributions."""

    fingerprint: Thresholds
    verification: Thresholds | None
    report: dict[str, Any]
    plot_png: bytes = field(repr=False, default=b"")


def pairs_needed(far: float) -> int:
    """Same-label pairs needed for a fitted tail at ``far`` to be known within a third of the spread."""
    z = float(stats.norm.ppf(1.0 - far))
    return math.ceil(9.0 * (1.0 + z * z / 2.0))


def label_errors(
    same: np.ndarray, different: np.ndarray, fitted_on: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the likely label errors: same-label scores that sit with the different-label ones (a study under the
    wrong patient) and different-label scores that sit with the same-label ones (one person, two PatientIDs),
    judged by the distance, in robustly fitted standard deviations of Fisher-z, to each distribution's centre.
    ``fitted_on``: the different-label scores to fit on, where ``different`` is not a fair sample (the pairs most
    alike by fingerprint)."""
    fit_different = different if fitted_on is None else fitted_on
    (mu_s, sd_s), (mu_d, sd_d) = normal_fit(same, robust=True), normal_fit(fit_different, robust=True)

    def closer_to_different(scores: np.ndarray) -> np.ndarray:
        z = np.arctanh(np.clip(scores, -0.999999, 0.999999))
        return np.abs(z - mu_d) / sd_d < np.abs(z - mu_s) / sd_s

    return closer_to_different(np.asarray(same, np.float64)), ~closer_to_different(np.asarray(different, np.float64))


def calibrate_from_archive(
    store: Store,
    model_version: str,
    far: float = 0.001,
    brains_version: str | None = None,
    workers: int = 1,
    site: str = "",
    progress: Callable[[int], None] | None = None,
) -> SiteCalibration:
    """Fit the fingerprint (``model_version``) and verification (``brains_version``; None: fingerprint only)
    thresholds of this archive for ``far``. Raises :class:`NotEnoughRepeats` when it holds too few repeat patients.
    Verification scores of calibration pairs are stored, so a re-run as the archive grows verifies only new pairs."""
    if not 0 < far < 1:
        raise ValueError("far must be in (0, 1)")
    uids, patients, vectors = _fingerprinted(store, model_version)
    groups: dict[str, list[int]] = defaultdict(list)
    for k, patient in enumerate(patients):
        groups[patient].append(k)
    repeat_groups = [members for members in groups.values() if len(members) > 1]
    counted = sum(min(len(m) * (len(m) - 1) // 2, PAIRS_COUNTED_PER_PATIENT) for m in repeat_groups)
    needed = pairs_needed(far)
    if counted < needed:
        raise NotEnoughRepeats(far, counted, needed, len(repeat_groups))
    same_pairs = [(a, b) for members in repeat_groups for i, a in enumerate(members) for b in members[i + 1 :]]
    labels = np.asarray(patients)
    gram = vectors @ vectors.T
    upper = np.triu_indices(len(uids), k=1)
    different_mask = labels[upper[0]] != labels[upper[1]]
    fp_same = np.asarray([gram[a, b] for a, b in same_pairs], dtype=np.float64)
    fp_different_all = gram[upper][different_mask].astype(np.float64)
    report: dict[str, Any] = {
        "site": site,
        "source": "archive (PatientIDs as labels)",
        "series": len(uids),
        "patients": len(groups),
        "repeat_patients": len(repeat_groups),
        "same_label_pairs": len(same_pairs),
        "same_label_pairs_counted": counted,
        "same_label_pairs_needed": needed,
        "different_label_pairs": int(len(fp_different_all)),
    }
    verification = None
    v_same: np.ndarray | None = None  # verification scores, where the brains were compared
    v_different: np.ndarray | None = None
    excluded_same = np.zeros(len(same_pairs), bool)
    excluded_pairs: set[tuple[int, int]] = set()
    if brains_version is not None:
        sampled = _sample_different(upper, different_mask, DIFFERENT_PAIRS_VERIFIED)
        top = _most_alike(upper, different_mask, gram, TOP_DIFFERENT_PAIRS_VERIFIED)
        asked = list(dict.fromkeys(same_pairs + sampled + top))
        scores = _verification_scores(store, uids, asked, brains_version, workers, progress)
        v_same = np.asarray([scores.get(p, np.nan) for p in same_pairs])
        v_different = np.asarray([scores.get(p, np.nan) for p in sampled])
        if np.isfinite(v_same).sum() >= 3 and np.isfinite(v_different).sum() >= 3:
            finite_same, finite_different = np.isfinite(v_same), np.isfinite(v_different)
            err_same, err_different = label_errors(v_same[finite_same], v_different[finite_different])
            excluded_same[np.flatnonzero(finite_same)[err_same]] = True
            keep_different = np.ones(len(sampled), bool)
            keep_different[np.flatnonzero(finite_different)[err_different]] = False
            v_top = np.asarray([scores.get(p, np.nan) for p in top])
            _, err_top = label_errors(v_same[finite_same], np.where(np.isfinite(v_top), v_top, -1.0),
                                      fitted_on=v_different[finite_different])
            wrong_different = sorted({sampled[k] for k in np.flatnonzero(~keep_different)}
                                     | {top[k] for k in np.flatnonzero(err_top & np.isfinite(v_top))})
            excluded_pairs = set(wrong_different)
            report.update(
                {
                    "verified_same_label_pairs": int(finite_same.sum()),
                    "verified_different_label_pairs": int(finite_different.sum()),
                    "same_label_pairs_set_aside": int(excluded_same.sum()),
                    "different_label_pairs_set_aside": len(wrong_different),
                    "most_alike_different_label_pairs_verified": int(np.isfinite(v_top).sum()),
                    "label_error_rule": "verification score closer (robust z) to the other label's distribution",
                }
            )
            verification = score_thresholds(
                v_same[~excluded_same], v_different[keep_different], far, brains_version,
                {**report, "score": "verification"}, robust=True,
            )
    fp_keep_different = _without_pairs(upper, different_mask, excluded_pairs)
    fingerprint = score_thresholds(
        fp_same[~excluded_same], fp_different_all[fp_keep_different], far, model_version,
        {**report, "score": "fingerprint"}, robust=True,
    )
    plot = _plot(fp_same, fp_different_all, excluded_same, verification, v_same, v_different, fingerprint, site)
    return SiteCalibration(fingerprint, verification, report, plot)


# --- internals ---------------------------------------------------------------------------------------------------------
def _fingerprinted(store: Store, model_version: str) -> tuple[list[str], list[str], np.ndarray]:
    with store.reading() as conn:
        rows = store.calibration_rows(conn, model_version)
    uids = [r[0] for r in rows]
    patients = [r[1] for r in rows]
    vectors = np.stack([r[2] for r in rows]) if rows else np.zeros((0, 512), np.float32)
    return uids, patients, vectors.astype(np.float32)


def _sample_different(upper: tuple[np.ndarray, np.ndarray], different_mask: np.ndarray, count: int) -> list[tuple[int, int]]:
    candidates = np.flatnonzero(different_mask)
    chosen = sorted(random.Random(SAMPLE_SEED).sample(range(len(candidates)), min(count, len(candidates))))
    return [(int(upper[0][candidates[k]]), int(upper[1][candidates[k]])) for k in chosen]


def _most_alike(
    upper: tuple[np.ndarray, np.ndarray], different_mask: np.ndarray, gram: np.ndarray, count: int
) -> list[tuple[int, int]]:
    candidates = np.flatnonzero(different_mask)
    similarity = gram[upper][candidates]
    best = candidates[np.argsort(-similarity, kind="stable")[:count]]
    return [(int(upper[0][k]), int(upper[1][k])) for k in best]


def _without_pairs(upper: tuple[np.ndarray, np.ndarray], different_mask: np.ndarray, pairs: set[tuple[int, int]]) -> np.ndarray:
    keep = np.ones(int(different_mask.sum()), bool)
    if pairs:
        a, b = upper[0][different_mask], upper[1][different_mask]
        for k, pair in enumerate(zip(a.tolist(), b.tolist())):
            if pair in pairs:
                keep[k] = False
    return keep


def _verification_scores(
    store: Store,
    uids: list[str],
    pairs: list[tuple[int, int]],
    brains_version: str,
    workers: int,
    progress: Callable[[int], None] | None,
) -> dict[tuple[int, int], float]:
    """Scores of these pairs: stored ones (from verdicts or earlier calibrations) first, the rest verified and kept."""
    with store.reading() as conn:
        known = store.verification_scores(conn, {(uids[a], uids[b]) for a, b in pairs}, brains_version)
    scores = {p: known[(uids[p[0]], uids[p[1]])] for p in pairs if (uids[p[0]], uids[p[1]]) in known}
    todo = [p for p in pairs if p not in scores]
    if not todo:
        return scores
    needed = sorted({k for p in todo for k in p})
    from fingerprint.imaging.brain import brain_from_bytes

    with store.reading() as conn:
        stored = store.brains(conn, [uids[k] for k in needed], brains_version)
    brains = {k: brain_from_bytes(stored[uids[k]]) for k in needed if uids[k] in stored}
    scorable = [p for p in todo if p[0] in brains and p[1] in brains]
    results = [score for score, _seconds in score_brain_pairs(brains, scorable, workers, progress)]
    with store.locked() as conn:
        for (a, b), score in zip(scorable, results):
            store.save_verification(conn, uids[a], uids[b], brains_version, score,
                                    {"purpose": CALIBRATION_PURPOSE}, None)
    scores.update({p: (np.nan if s is None else float(s)) for p, s in zip(scorable, results)})
    return scores


def _plot(
    fp_same: np.ndarray,
    fp_different: np.ndarray,
    set_aside: np.ndarray,
    verification: Thresholds | None,
    v_same: np.ndarray | None,
    v_different: np.ndarray | None,
    fingerprint: Thresholds,
    site: str,
) -> bytes:
    """Both distributions of both scores, the pairs set aside as label errors, and the thresholds (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("fingerprint (cosine)", fp_same, fp_different, fingerprint)]
    if verification is not None and v_same is not None and v_different is not None:
        panels.append(("verification (LoG correlation)", v_same, v_different, verification))
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    for axis, (title, same, different, t) in zip(axes[0], panels):
        same = same[np.isfinite(same)] if len(same) else same
        different = different[np.isfinite(different)]
        low = float(min(np.min(same, initial=1.0), np.min(different, initial=1.0)))
        bins = np.linspace(low, 1.0, 60)
        axis.hist(different, bins=bins, density=True, alpha=0.55, label=f"different PatientIDs ({len(different)})")
        axis.hist(same, bins=bins, density=True, alpha=0.55, label=f"same PatientID ({len(same)})")
        axis.axvline(t.match, color="k", linestyle="-", label=f"match {t.match:.4f}")
        axis.axvline(t.mismatch, color="k", linestyle="--", label=f"mismatch {t.mismatch:.4f}")
        axis.set_title(f"{title}{': ' + site if site else ''}", fontsize=9)
        axis.legend(fontsize=7)
    axes[0][0].text(0.01, 0.98, f"{int(set_aside.sum())} same-label pairs set aside as label errors",
                    transform=axes[0][0].transAxes, fontsize=7, va="top")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
