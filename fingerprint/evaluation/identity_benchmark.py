"""The real-head benchmark: how the product decides on real people it has never seen.

Input: a :class:`fingerprint.evaluation.identity_data.ViewSet` of held-out real people (simulated visits of real heads, plus the
real series of the shared data). Every figure is given three ways, side by side, on the same scans:

* **raw pixels**: the cosine of the canonical slices themselves (the baseline every encoder must beat);
* **fingerprint**: the encoder's cosine alone;
* **fingerprint + verification**: the product: the fingerprint's top ``RERANK_K`` candidates re-ranked by the 3D
  verification score (retrieval), the verification score for pair figures, and the archive's own decision rule
  (:func:`fingerprint.identity.verdicts.decide`) for verdicts.

Retrieval: recall@1 and mAP@3 (:func:`fingerprint.metrics.retrieval_metrics`); pairs: ROC AUC and TPR at 0.1 %
FPR. Verdicts, with the calibrated thresholds (set on other people): every pair of scans of two distinct people as a
first scan against the other's archive (false ``possible_duplicate``), every such pair filed under the other
person's PatientID (planted mismatches: share that comes back ``identity_mismatch``), and every same-person pair
under two PatientIDs (planted duplicates: share found) and under one (share ``consistent``). A first scan's candidate
of another PatientID is verified only where the archive would verify it (at or above the fingerprint's ``mismatch``
threshold: :func:`fingerprint.identity.verification_stage.other_patients_to_verify`); below it, it stays unverified,
as in the archive, and the planted duplicate is missed (``duplicates_not_verified`` counts them).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.evaluation.identity_data import PairScores, ViewSet
from fingerprint.evaluation.slice_benchmark import raw_pixel_vectors
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.verification_stage import other_patients_to_verify
from fingerprint.identity.verdicts import (
    CONSISTENT,
    IDENTITY_MISMATCH,
    POSSIBLE_DUPLICATE,
    Candidate,
    decide,
)
from fingerprint.metrics import (
    FPR_TARGET,
    cosine_similarity_matrix,
    pair_scores,
    retrieval_metrics,
    roc_auc,
    tpr_at_fpr,
)

#: Candidates the product verifies per query (own scans and other PatientIDs together, as the archive's defaults).
RERANK_K = 5


def retrieval_and_pairs(similarity: np.ndarray, people: np.ndarray) -> dict[str, Any]:
    """recall@1, recall@3, mAP@3, ROC AUC and TPR at 0.1 % FPR of one similarity matrix."""
    retrieval = retrieval_metrics(similarity, people)
    same, different = pair_scores(similarity, people)
    same, different = same[np.isfinite(same)], different[np.isfinite(different)]
    tpr, _ = tpr_at_fpr(same, different, FPR_TARGET)
    return {
        "recall@1": retrieval["recall@1"],
        "recall@3": retrieval["recall@3"],
        "mAP@3": retrieval["mAP@3"],
        "roc_auc": roc_auc(same, different),
        "tpr@fpr0.001": tpr,
        "queries": retrieval["queries"],
        "same_pairs": int(len(same)),
        "different_pairs": int(len(different)),
    }


def reranked(fingerprint: np.ndarray, verification: np.ndarray, k: int = RERANK_K) -> np.ndarray:
    """A similarity matrix whose order is: each query's top ``k`` fingerprint candidates by verification score, then
    the rest by fingerprint (what the archive looks at first)."""
    combined = np.array(fingerprint, dtype=np.float64, copy=True)
    masked = combined.copy()
    np.fill_diagonal(masked, -np.inf)
    top = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    for query, candidates in enumerate(top):
        scores = np.nan_to_num(verification[query, candidates], nan=-1.0)
        combined[query, candidates] = 10.0 + scores
    return combined


def verdict_figures(
    fingerprint: np.ndarray,
    verification: np.ndarray | None,
    people: np.ndarray,
    thresholds: Thresholds,
    verification_thresholds: Thresholds | None,
) -> dict[str, Any]:
    """The archive's decision rule on every ordered pair of scans (see the module docstring)."""
    n = len(people)
    counts: dict[str, Counter] = {k: Counter() for k in ("distinct_first_scan", "planted_mismatch", "planted_duplicate", "same_id")}
    false_pairs: list[tuple[int, int]] = []
    not_picked = 0  # planted duplicates whose fingerprint is below the floor for verifying another PatientID
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            v = None if verification is None or not np.isfinite(verification[i, j]) else float(verification[i, j])
            other = Candidate(j, float(fingerprint[i, j]), f"p:{people[j]}:{j}", f"s{j}", verification=None, verifiable=verification is not None)
            if other_patients_to_verify([other], thresholds, 1):  # the archive's pick rule: is the other PatientID verified?
                other = replace(other, verification=v)
            elif verification is not None and people[i] == people[j]:
                not_picked += 1
            own = Candidate(j, float(fingerprint[i, j]), "p:own", f"s{j}", verification=v, verifiable=verification is not None)
            first = decide(f"p:new:{i}", [], [other], thresholds, verification_thresholds)["verdict"]
            filed = decide("p:own", [own], [], thresholds, verification_thresholds)["verdict"]
            if people[i] != people[j]:
                counts["distinct_first_scan"][first] += 1
                counts["planted_mismatch"][filed] += 1
                if first == POSSIBLE_DUPLICATE and i < j:
                    false_pairs.append((i, j))
            else:
                counts["planted_duplicate"][first] += 1
                counts["same_id"][filed] += 1

    def share(kind: str, verdict: str) -> float | None:
        total = sum(counts[kind].values())
        return counts[kind][verdict] / total if total else None

    return {
        "false_duplicates": counts["distinct_first_scan"][POSSIBLE_DUPLICATE],
        "distinct_pairs_checked": sum(counts["distinct_first_scan"].values()),
        "false_duplicate_person_pairs": sorted({tuple(sorted((str(people[i]), str(people[j])))) for i, j in false_pairs}),
        "mismatch_caught": share("planted_mismatch", IDENTITY_MISMATCH),
        "duplicate_found": share("planted_duplicate", POSSIBLE_DUPLICATE),
        "duplicates_not_verified": not_picked,
        "same_id_consistent": share("same_id", CONSISTENT),
        "verdicts": {k: dict(v) for k, v in counts.items()},
    }


def run_identity_benchmark(
    views: ViewSet,
    pairs: PairScores,
    embed: Any,
    thresholds: Thresholds,
    verification_thresholds: Thresholds | None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Every figure of the module docstring for one set of held-out real scans; written as JSON and Markdown."""
    people = views.people
    slices = views.slices
    raw = cosine_similarity_matrix(raw_pixel_vectors(slices))
    fingerprint = cosine_similarity_matrix(embed(slices))
    verification = pairs.as_matrix(len(people))
    rows = {
        "raw pixels": retrieval_and_pairs(raw, people),
        "fingerprint": retrieval_and_pairs(fingerprint, people),
        "fingerprint + verification": {
            **retrieval_and_pairs(reranked(fingerprint, verification), people),
            **{k: v for k, v in retrieval_and_pairs(verification, people).items() if k in {"roc_auc", "tpr@fpr0.001"}},
        },
    }
    verdicts = {
        "fingerprint alone": verdict_figures(fingerprint, None, people, thresholds, None),
        "fingerprint + verification": verdict_figures(fingerprint, verification, people, thresholds, verification_thresholds),
    }
    finite = np.isfinite(pairs.score)
    report = {
        "scans": len(people),
        "people": len(set(people.tolist())),
        "rejected": views.rejected,
        "rows": rows,
        "verdicts": verdicts,
        "thresholds": thresholds.as_json(),
        "verification_thresholds": verification_thresholds.as_json() if verification_thresholds else None,
        "verification_scores": {
            "same_min": float(np.min(pairs.score[pairs.same & finite])) if (pairs.same & finite).any() else None,
            "different_max": float(np.max(pairs.score[~pairs.same & finite])) if (~pairs.same & finite).any() else None,
            "unscored_pairs": int((~finite).sum()),
            "cpu_s_per_pair_p50": float(np.median(pairs.seconds)) if len(pairs.seconds) else None,
            "cpu_s_per_pair_p95": float(np.percentile(pairs.seconds, 95)) if len(pairs.seconds) else None,
        },
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "identity.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out_dir / "identity.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report's two tables (retrieval/pairs, verdicts) as Markdown."""
    lines = [
        f"Real-head benchmark: {report['scans']} scans of {report['people']} held-out real people.",
        "",
        "| | recall@1 | recall@3 | mAP@3 | ROC AUC | TPR @ 0.1 % FPR |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        lines.append(
            f"| {name} | {row['recall@1']:.3f} | {row['recall@3']:.3f} | {row['mAP@3']:.3f} | {row['roc_auc']:.3f} "
            f"| {row['tpr@fpr0.001']:.3f} |"
        )
    lines += [
        "",
        "| verdicts | false possible_duplicate (pairs of distinct people) | planted mismatches caught "
        "| planted duplicates found | same ID consistent |",
        "|---|---|---|---|---|",
    ]
    for name, v in report["verdicts"].items():
        lines.append(
            f"| {name} | {v['false_duplicates']} of {v['distinct_pairs_checked']} | {_pct(v['mismatch_caught'])} "
            f"| {_pct(v['duplicate_found'])} | {_pct(v['same_id_consistent'])} |"
        )
    missed = report["verdicts"].get("fingerprint + verification", {}).get("duplicates_not_verified")
    if missed is not None:
        lines += ["", f"Planted duplicates not put to the verification (fingerprint below the mismatch threshold "
                      f"{report['thresholds']['mismatch']:.4f}): {missed}."]
    scores = report["verification_scores"]
    lines += [
        "",
        f"Verification scores: same person min {scores['same_min']}, different people max {scores['different_max']}, "
        f"unscored pairs {scores['unscored_pairs']}; CPU per pair p50 {scores['cpu_s_per_pair_p50']} s, "
        f"p95 {scores['cpu_s_per_pair_p95']} s.",
        "",
    ]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
