"""How well similarity scores tell people apart: the paper's retrieval protocol plus the verification view.

Retrieval (paper, section 4): leave-one-out over a test set. Each scan queries all the others ranked by cosine
similarity; a hit is a scan of the same person. recall@k: fraction of queries with at least one hit in the top k.
mAP@k: mean over queries of AP@k = (Σ_{i≤k, hit at i} precision@i) / min(#relevant, k), the public code's
definition (a query with 2 other scans is perfect with 2 hits in its top 3). Queries whose person has no other scan
cannot be scored and are left out (their count is reported).

Verification (what the product's thresholds rest on): every pair of scans, same person or not, scored by cosine
similarity; ROC AUC and the true-positive rate at a false-positive rate of 0.1% (the threshold is the 99.9th
percentile of different-person similarities, so at most 0.1% of them lie above it).

Pure arithmetic, free of I/O, so that it is tested on hand-made matrices; used by training (validation), calibration
(thresholds) and the benchmarks in :mod:`fingerprint.evaluation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FPR_TARGET = 1e-3


def cosine_similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, N) cosine similarities in float64 (rows are normalised here, whatever they were)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1.0)
    return v @ v.T


def retrieval_metrics(similarity: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 3)) -> dict[str, Any]:
    """Leave-one-out recall@k and mAP@k for each k in ``ks`` (ties are broken by index, i.e. pessimistically for
    nobody: a stable sort keeps the earlier scan first)."""
    sim = np.array(similarity, dtype=np.float64, copy=True)
    labels = np.asarray(labels)
    n = sim.shape[0]
    if sim.shape != (n, n) or labels.shape != (n,):
        raise ValueError(f"similarity must be (N, N) with N labels, got {sim.shape} and {labels.shape}")
    np.fill_diagonal(sim, -np.inf)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    relevant_counts = same.sum(axis=1)
    scorable = relevant_counts > 0
    kmax = min(max(ks), n - 1)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :kmax]
    hits = np.take_along_axis(same, order, axis=1)[scorable]
    relevant = relevant_counts[scorable]
    result: dict[str, Any] = {"queries": int(scorable.sum()), "unscorable_queries": int((~scorable).sum())}
    for k in ks:
        kk = min(k, kmax)
        top = hits[:, :kk]
        cumulative = np.cumsum(top, axis=1)
        precision_at_hits = np.where(top, cumulative / np.arange(1, kk + 1), 0.0)
        ap = precision_at_hits.sum(axis=1) / np.minimum(relevant, k)
        result[f"recall@{k}"] = float(top.any(axis=1).mean()) if len(top) else float("nan")
        result[f"mAP@{k}"] = float(ap.mean()) if len(ap) else float("nan")
    return result


def pair_scores(similarity: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of all unordered pairs of distinct scans, split into same-person and different-person."""
    labels = np.asarray(labels)
    upper = np.triu_indices(len(labels), k=1)
    scores = np.asarray(similarity)[upper]
    same = labels[upper[0]] == labels[upper[1]]
    return scores[same], scores[~same]


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a random same-person pair scores above a random different-person pair), ties counting half."""
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    scores = np.concatenate([positives, negatives])
    ranks = _average_ranks(scores)
    positive_rank_sum = ranks[: len(positives)].sum()
    u = positive_rank_sum - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as scipy.stats.rankdata, which is not a dependency)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def highest_allowed_negative(negatives: np.ndarray, rate: float) -> float:
    """The (⌊rate·n⌋+1)-th highest negative score: at most a ``rate`` share of the negatives lie strictly above it.

    Accepting scores strictly above it (or at or above the next float up) keeps the false-positive rate at or below
    ``rate``; both the benchmark's TPR at 0.1 % FPR and the calibrated match threshold are this number.
    """
    ordered = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    allowed = int(np.floor(rate * len(ordered)))  # this many negatives may lie above the threshold
    return float(ordered[min(allowed, len(ordered) - 1)])


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float = FPR_TARGET) -> tuple[float, float]:
    """(TPR, threshold): accept pairs scoring strictly above the smallest threshold that keeps FPR ≤ ``fpr``."""
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan"), float("nan")
    threshold = highest_allowed_negative(negatives, fpr)
    return float(np.mean(positives > threshold)), threshold


def verification_metrics(similarity: np.ndarray, labels: np.ndarray, fpr: float = FPR_TARGET) -> dict[str, Any]:
    """ROC AUC, TPR at ``fpr`` and its threshold, and the pair counts they rest on."""
    positives, negatives = pair_scores(similarity, labels)
    tpr, threshold = tpr_at_fpr(positives, negatives, fpr)
    return {
        "roc_auc": roc_auc(positives, negatives),
        f"tpr@fpr{fpr:g}": tpr,
        "threshold": threshold,
        "same_pairs": int(len(positives)),
        "different_pairs": int(len(negatives)),
        "same_mean": float(np.mean(positives)) if len(positives) else float("nan"),
        "different_mean": float(np.mean(negatives)) if len(negatives) else float("nan"),
    }


def all_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Retrieval and verification figures for one set of fingerprints."""
    similarity = cosine_similarity_matrix(vectors)
    return {**retrieval_metrics(similarity, labels), **verification_metrics(similarity, labels)}


def score_quantiles(values: np.ndarray) -> dict[str, float]:
    """Minimum, 1st, 50th and 99th percentile and maximum of a set of scores (as stored with calibrations)."""
    qs = {"min": 0.0, "p01": 0.01, "p50": 0.5, "p99": 0.99, "max": 1.0}
    return {name: round(float(np.quantile(values, q)), 6) for name, q in qs.items()}
