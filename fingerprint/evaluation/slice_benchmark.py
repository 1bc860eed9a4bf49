"""The ``deepbrainprint evaluate`` driver: how well fingerprints recognise people on a held-out cohort.

One run compares the shipped model, the paper's middle-of-array slice, a raw-pixel baseline and the ablation models
on the same held-out cohort (retrieval and verification figures from :mod:`fingerprint.metrics`), plus the check
that the real repeat scans in the shared data find each other first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.locations import shared_data_dir
from fingerprint.metrics import all_metrics, cosine_similarity_matrix, pair_scores

# --- the benchmark driver ------------------------------------------------------------------------------------------

RAW_PIXELS = "raw pixels"


def default_real_data_dir() -> Path | None:
    """The shared real DICOM data (``../shared/data`` next to the checkout, or ``$DBP_SHARED_DATA``), if present."""
    root = shared_data_dir()
    return root if (root / "repeats").is_dir() else None


def raw_pixel_vectors(slices: np.ndarray) -> np.ndarray:
    """The baseline: each slice flattened, centred and scaled to unit length (cosine = normalised cross-correlation)."""
    flat = np.asarray(slices, dtype=np.float64).reshape(len(slices), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _benchmark_slices(cohort_dir: Path, method: str, cache_dir: Path, split: str | None, subjects: int | None, workers: int = 1):
    """The cohort's slices for one method (volumes sliced through the pipeline, cached), or None if unavailable."""
    from fingerprint.model.training.data import (
        load_slice_cache,
        load_volume_cohort,
        read_cohort_csv,
    )

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
    from fingerprint.errors import SeriesRejected
    from fingerprint.model.fingerprinter import fingerprint_series

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
    from fingerprint.model.fingerprinter import load_model

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
            from fingerprint.model.encoder import UNTRAINED_VERSION, seeded_encoder
            from fingerprint.model.fingerprinter import Fingerprinter

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
