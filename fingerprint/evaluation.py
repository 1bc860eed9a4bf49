"""How well fingerprints recognise people: the paper's retrieval protocol plus the verification view.

Retrieval (paper, section 4): leave-one-out over a test set. Each scan queries all the others ranked by cosine
similarity; a hit is a scan of the same person. recall@k: fraction of queries with at least one hit in the top k.
mAP@k: mean over queries of AP@k = (Σ_{i≤k, hit at i} precision@i) / min(#relevant, k), the public code's
definition (a query with 2 other scans is perfect with 2 hits in its top 3). Queries whose person has no other scan
cannot be scored and are left out (their count is reported).

Verification (what the product's thresholds rest on): every pair of scans, same person or not, scored by cosine
similarity; ROC AUC and the true-positive rate at a false-positive rate of 0.1% (the threshold is the 99.9th
percentile of different-person similarities, so at most 0.1% of them lie above it).

The first half of this module is the arithmetic, free of I/O so that it is tested on hand-made matrices; the second
half (:func:`run_benchmark`) is the ``deepbrainprint evaluate`` driver: one run that compares the shipped model, the
paper's middle-of-array slice, a raw-pixel baseline and the ablation models on the same held-out cohort, plus the
check that the real repeat scans in the shared data find each other first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
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


def tpr_at_fpr(positives: np.ndarray, negatives: np.ndarray, fpr: float = FPR_TARGET) -> tuple[float, float]:
    """(TPR, threshold): accept pairs scoring strictly above the smallest threshold that keeps FPR ≤ ``fpr``."""
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan"), float("nan")
    sorted_negatives = np.sort(negatives)[::-1]
    allowed = int(np.floor(fpr * len(negatives)))  # this many negatives may lie above the threshold
    threshold = float(sorted_negatives[allowed]) if allowed < len(sorted_negatives) else float(sorted_negatives[-1])
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


# --- the benchmark driver ------------------------------------------------------------------------------------------

RAW_PIXELS = "raw pixels"


def default_real_data_dir() -> Path | None:
    """The shared real DICOM data (``../shared/data`` next to the checkout, or ``$DBP_SHARED_DATA``), if present."""
    root = Path(os.environ.get("DBP_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root if (root / "repeats").is_dir() else None


def raw_pixel_vectors(slices: np.ndarray) -> np.ndarray:
    """The baseline: each slice flattened, centred and scaled to unit length (cosine = normalised cross-correlation)."""
    flat = np.asarray(slices, dtype=np.float64).reshape(len(slices), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _benchmark_slices(cohort_dir: Path, method: str, cache_dir: Path, split: str | None, subjects: int | None, workers: int = 1):
    """The cohort's slices for one method (volumes sliced through the pipeline, cached), or None if unavailable."""
    from fingerprint.training.data import load_slice_cache, load_volume_cohort, read_cohort_csv

    rows = read_cohort_csv(cohort_dir)
    if rows and "path" in rows[0]:
        data = load_volume_cohort(cohort_dir, method, cache_dir, subjects, workers)
    elif method == "anatomical" and (Path(cohort_dir) / "slices.npz").exists():
        data = load_slice_cache(cohort_dir)  # fast-path slices: already canonical, no method to choose
    else:
        return None
    if split is not None:
        data = data.subset(data.splits == split)
    return data


def _row(name: str, method: str, vectors: np.ndarray, data) -> dict[str, Any]:
    metrics = all_metrics(vectors, data.labels)
    similarity = cosine_similarity_matrix(vectors)
    same, different = pair_scores(similarity, data.labels)
    return {
        "name": name,
        "slice_method": method,
        "scans": int(len(data)),
        "subjects": int(len(np.unique(data.subjects))),
        "rejected_scans": int(len(data.rejected)),
        **metrics,
        "_same": same,
        "_different": different,
    }


def real_repeats_check(real_data_dir: Path, model) -> dict[str, Any]:
    """Fingerprint every real series (t1/ and repeats/); each repeat scan must find its own group first."""
    from fingerprint.api import fingerprint_series
    from fingerprint.errors import SeriesRejected

    folders = sorted(p for p in (real_data_dir / "t1").iterdir() if p.is_dir())
    repeat_folders = sorted(p for p in (real_data_dir / "repeats").iterdir() if p.is_dir())
    names, vectors, rejected = [], [], {}
    for folder in folders + repeat_folders:
        name = f"{folder.parent.name}/{folder.name}"
        try:
            vectors.append(fingerprint_series(folder, model=model).vector)
            names.append(name)
        except SeriesRejected as exc:
            rejected[name] = exc.as_json()
    group = {n for n in names if n.startswith("repeats/")}
    result: dict[str, Any] = {"series": names, "rejected": rejected, "queries": {}}
    if len(group) < 2:
        result["all_repeats_retrieve_own_scans_first"] = None
        return result
    similarity = cosine_similarity_matrix(np.stack(vectors))
    all_first = True
    for i, name in enumerate(names):
        if name not in group:
            continue
        order = [j for j in np.argsort(-similarity[i], kind="stable") if j != i]
        ranked = [(names[j], round(float(similarity[i, j]), 4)) for j in order]
        own_first = all(n in group for n, _ in ranked[: len(group) - 1])
        all_first &= own_first
        result["queries"][name] = {"own_scans_first": own_first, "ranking": ranked}
    result["all_repeats_retrieve_own_scans_first"] = all_first
    return result


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Held-out cohort: `{report['cohort']}` ({report['rows'][0]['scans'] if report['rows'] else 0} scans). "
        "Leave-one-out retrieval (mAP@3 = AP@3 / min(#relevant, 3)); verification over all pairs.",
        "",
        "| model | slice | scans | subjects | recall@1 | recall@3 | mAP@3 | ROC AUC | TPR @ FPR 0.1% "
        "| same / diff mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['name']} | {r['slice_method']} | {r['scans']} | {r['subjects']} | {r['recall@1']:.4f} | "
            f"{r['recall@3']:.4f} | {r['mAP@3']:.4f} | {r['roc_auc']:.4f} | {r['tpr@fpr0.001']:.4f} | "
            f"{r['same_mean']:.3f} / {r['different_mean']:.3f} |"
        )
    rejected = {r["slice_method"]: r["rejected_scans"] for r in report["rows"]}
    lines += ["", f"Volumes the slice pipeline rejected (left out), per method: {json.dumps(rejected)}"]
    real = report.get("real_repeats")
    if real:
        lines += ["", "Real repeat scans (one man, four decubitus positions) among all real series in the shared data:"]
        verdict = real.get("all_repeats_retrieve_own_scans_first")
        lines.append(f"all repeats retrieve their own scans first: **{verdict}**")
        for name, q in real["queries"].items():
            top = ", ".join(f"{n} ({s})" for n, s in q["ranking"][:3])
            lines.append(f"- {name}: {'OK' if q['own_scans_first'] else 'FAIL'}; top 3: {top}")
        if real["rejected"]:
            lines.append(f"- rejected by the pipeline: {json.dumps(real['rejected'])}")
    return "\n".join(lines) + "\n"


def _histograms(rows: list[dict[str, Any]], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows):
        bins = np.linspace(min(r["_different"].min(), r["_same"].min()), 1.0, 60)
        ax.hist(r["_different"], bins=bins, density=True, alpha=0.6, label="different people")
        ax.hist(r["_same"], bins=bins, density=True, alpha=0.6, label="same person")
        ax.axvline(r["threshold"], color="k", linestyle="--", linewidth=0.8, label="FPR 0.1% threshold")
        ax.set_title(f"{r['name']}\n{r['slice_method']}", fontsize=9)
        ax.set_xlabel("cosine similarity")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def run_benchmark(
    cohort_dir: Path,
    out_dir: Path,
    model_path: Path | None = None,
    others: dict[str, Path] | None = None,
    real_data_dir: Path | None = None,
    cache_dir: Path | None = None,
    split: str | None = None,
    subjects: int | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Evaluate everything on one held-out cohort; writes results.json, results.md, similarity_histograms.png.

    ``workers``: processes that slice the volumes not yet in the cache.
    """
    from fingerprint.api import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / "slice-cache"
    main = load_model(model_path)
    models = [(main.model_version, main)] + [(name, load_model(path)) for name, path in (others or {}).items()]
    if main.model_version != "untrained-0":
        models.append(("untrained-0 (random init)", None))  # how much training added
    rows = []
    anatomical = _benchmark_slices(cohort_dir, "anatomical", cache_dir, split, subjects, workers)
    if anatomical is None:
        raise ValueError(f"{cohort_dir} has neither volume paths nor slices.npz")
    for name, model in models:
        if model is None:
            from fingerprint.api import Fingerprinter
            from fingerprint.model import UNTRAINED_VERSION, seeded_encoder

            model = Fingerprinter(seeded_encoder(), UNTRAINED_VERSION)
        model.num_threads = None
        rows.append(_row(name, "anatomical", model.embed(anatomical.slices.astype(np.float32)), anatomical))
    middle = _benchmark_slices(cohort_dir, "middle", cache_dir, split, subjects, workers)
    if middle is not None:
        rows.insert(1, _row(main.model_version, "middle (paper)", main.embed(middle.slices.astype(np.float32)), middle))
    rows.append(_row(RAW_PIXELS, "anatomical", raw_pixel_vectors(anatomical.slices), anatomical))
    report: dict[str, Any] = {
        "cohort": str(cohort_dir),
        "split": split,
        "subjects_limit": subjects,
        "model_version": main.model_version,
        "rows": rows,
        "rejected": {"anatomical": anatomical.rejected, "middle": middle.rejected if middle is not None else None},
    }
    if real_data_dir is not None:
        report["real_repeats"] = real_repeats_check(Path(real_data_dir), main)
    _histograms(rows, out_dir / "similarity_histograms.png")
    (out_dir / "results.md").write_text(_markdown(report))
    public = {**report, "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}
    (out_dir / "results.json").write_text(json.dumps(public, indent=2, default=str) + "\n")
    report["rows"] = public["rows"]
    return report
