"""Verdict thresholds measured, not guessed: same-person vs different-person similarity on a labelled set.

Two alarms exist, so two thresholds, each set for the stated false-alarm rate ``far`` (default 0.1%):

* ``match``: a similarity at or above it says "same person". Different people reach it in at most ``far`` of the
  calibration pairs, so ``possible_duplicate`` (and a `consistent` that is really someone else) is a rare false alarm.
* ``mismatch``: a similarity to the patient's own earlier scans *below* it says "not the same person". The same person
  falls below it in at most ``far`` of the calibration pairs, so ``identity_mismatch`` is a rare false alarm. It is
  never above ``match``; between the two the archive says ``consistent`` and marks the evidence ``uncertain``.

Thresholds are stored per model version (a new model means new thresholds): in ``<index_dir>/thresholds.json`` (a
site's own calibration, preferred) or shipped with the weights in ``fingerprint/weights/thresholds.json``. Without
any for the model in use, clearly-labelled fallback values are used and every verdict's evidence says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.files import write_text
from fingerprint.locations import SHIPPED_WEIGHTS_DIR
from fingerprint.metrics import highest_allowed_negative, pair_scores, score_quantiles

THRESHOLDS_FILE = "thresholds.json"
SHIPPED_THRESHOLDS = SHIPPED_WEIGHTS_DIR / THRESHOLDS_FILE
#: Used only when nothing was calibrated for the model in use; labelled "fallback" in every verdict's evidence.
FALLBACK_MATCH = 0.90
FALLBACK_MISMATCH = 0.50


@dataclass(frozen=True)
class Thresholds:
    """The two decision thresholds for one model version, and where they came from."""

    model_version: str
    match: float
    mismatch: float
    far: float | None  # None for the fallback: no rate was measured
    source: str  # "calibrated" | "fallback" | "explicit"
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def fallback_thresholds(model_version: str) -> Thresholds:
    return Thresholds(
        model_version=model_version,
        match=FALLBACK_MATCH,
        mismatch=FALLBACK_MISMATCH,
        far=None,
        source="fallback",
        details={"warning": f"no thresholds calibrated for model {model_version!r}; run `deepbrainprint calibrate`"},
    )


def pair_similarities(vectors: np.ndarray, subject_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of every same-subject pair and every different-subject pair (upper triangle).

    The vectors are the archive's fingerprints (L2-normalised), so their inner product is the cosine the index uses.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    same, different = pair_scores(vectors @ vectors.T, np.asarray([str(s) for s in subject_ids]))
    return same.astype(np.float64), different.astype(np.float64)


def thresholds_from_similarities(
    same: np.ndarray, different: np.ndarray, far: float, model_version: str, details: dict[str, Any] | None = None
) -> Thresholds:
    """The thresholds for false-alarm rate ``far``, with the measured error rates they give on these pairs."""
    if not 0 < far < 1:
        raise ValueError("far must be in (0, 1)")
    if len(same) == 0 or len(different) == 0:
        raise ValueError("calibration needs same-person and different-person pairs (several visits per subject)")
    diff_desc = np.sort(np.asarray(different, dtype=np.float64))[::-1]
    same_asc = np.sort(np.asarray(same, dtype=np.float64))
    # The next float above the highest allowed different-person similarity: at most a `far` share of pairs reach it.
    match = float(np.nextafter(highest_allowed_negative(diff_desc, far), np.inf))
    allowed_same = int(math.floor(far * len(same_asc)))
    mismatch = float(same_asc[allowed_same]) if allowed_same < len(same_asc) else 1.0
    mismatch = min(mismatch, match)
    measured = {
        "same_pairs": int(len(same)),
        "different_pairs": int(len(different)),
        "pairs_needed_for_far": int(math.ceil(1 / far)),
        "far_duplicate_measured": float(np.mean(diff_desc >= match)),
        "far_mismatch_measured": float(np.mean(same_asc < mismatch)),
        "same_below_match": float(np.mean(same_asc < match)),  # same person not confirmed (consistent, uncertain)
        "different_below_mismatch": float(np.mean(diff_desc < mismatch)),  # swapped patients caught
        "same_similarity": score_quantiles(same_asc),
        "different_similarity": score_quantiles(diff_desc),
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if len(different) < measured["pairs_needed_for_far"]:
        measured["warning"] = f"fewer different-person pairs than 1/far: the {far:g} rate is extrapolated"
    return Thresholds(model_version, match, mismatch, far, "calibrated", {**measured, **(details or {})})


# --- persistence ---------------------------------------------------------------------------------------------------
def site_thresholds_path(index_dir: Path) -> Path:
    """Where a site's own calibration is written beside its index (``calibrate`` also writes it to the store)."""
    return Path(index_dir) / THRESHOLDS_FILE


def save_thresholds(thresholds: Thresholds, path: Path) -> None:
    """Add or replace the entry of this model version in a thresholds JSON file (one entry per model version)."""
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[thresholds.model_version] = thresholds.as_json()
    write_text(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")


def thresholds_from_json(entry: dict[str, Any], where: str) -> Thresholds:
    return Thresholds(**{**entry, "details": {**entry.get("details", {}), "from": where}})


def resolve_thresholds(
    version: str, *, stored: dict[str, Any] | None = None, index_dir: Path | None = None, model_dir: Path | None = None
) -> Thresholds:
    """The thresholds of a model (or verification method) version, from the first place that has them.

    In order: ``stored`` (the site's calibration as the store keeps it), the site's file in ``index_dir``, the file
    shipped beside the model's weights in ``model_dir`` (a custom model brings its own; ``None``: the shipped weights'
    folder), else the labelled fallback. This is the one lookup: the archive, the CLI and the benchmarks all use it.
    """
    if stored:
        return thresholds_from_json(stored, "store")
    beside_model = Path(model_dir) / THRESHOLDS_FILE if model_dir is not None else SHIPPED_THRESHOLDS
    candidates = ([site_thresholds_path(index_dir)] if index_dir is not None else []) + [beside_model]
    if beside_model != SHIPPED_THRESHOLDS:
        candidates.append(SHIPPED_THRESHOLDS)  # the verification method's thresholds do not depend on the model
    for path in candidates:
        if path.exists():
            entry = json.loads(path.read_text()).get(version)
            if entry:
                return thresholds_from_json(entry, str(path))
    return fallback_thresholds(version)


# --- calibration -------------------------------------------------------------------------------------------------
def calibrate_cohort(
    cohort_dir: Path,
    embed: Callable[[np.ndarray], np.ndarray],
    model_version: str,
    far: float = 0.001,
    split: str | None = "calibration",
) -> Thresholds:
    """Embed a labelled cohort and derive the thresholds for ``far``.

    The cohort is read as training and evaluation read it (:func:`fingerprint.model.training.data.load_cohort`): a slice
    cache, or volumes sliced once through the real pipeline and cached beside them; a scan the pipeline refuses is
    left out with its reason (one bad scan never stops the others). Only ``split``'s rows are used when the cohort
    has that split.
    """
    from fingerprint.model.training.data import load_cohort

    data = load_cohort(Path(cohort_dir))
    if split and (data.splits == split).any():
        data = data.subset(data.splits == split)
    same, different = pair_similarities(embed(data.slices.astype(np.float32)), data.subjects.tolist())
    details = {
        "cohort": str(cohort_dir),
        "scans": len(data),
        "subjects": len(set(data.subjects.tolist())),
        "rejected_scans": {scan: entry["rejected"] for scan, entry in data.rejected.items()},
    }
    return thresholds_from_similarities(same, different, far, model_version, details)
