"""Index benchmark: build time, memory, median query latency and recall@10 of exact vs approximate FAISS indexes.

Fingerprints are random unit vectors clustered like a real archive: each simulated person has a centre and four
visits scattered around it (same-person cosine about 0.8); queries are a further visit of a stored person, as in
production. Recall@10 is measured against the exact index on the same data, same run. Indexes are built exactly as
the archive builds them (``fingerprint.identity.index.new_faiss_index``: an ``IndexIDMap2`` around the factory string).

Usage (long: nice it)::

    nice -n 10 .venv/bin/python bench/bench_index.py --sizes 10000 100000 1000000 --budget-s 3000

Writes bench/results/index.json and index.md after every measured configuration, so a stopped run keeps what it has.
A configuration whose build is predicted (from the previous size) to exceed the remaining budget is skipped and
listed as skipped, with the prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fingerprint.identity.index import new_faiss_index  # noqa: E402

DIM = 512
VISITS = 4
NOISE = 0.5 / np.sqrt(DIM)  # per-dimension visit noise: same-person cosine ~0.8
CONFIGS = [
    # (factory, [search parameter strings to measure])
    ("Flat", [""]),
    ("HNSW32", ["efSearch=16", "efSearch=64", "efSearch=128", "efSearch=512"]),
    ("IVF{nlist},Flat", ["nprobe=8", "nprobe=32", "nprobe=128"]),
]
RESULTS = Path(__file__).resolve().parent / "results"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_fingerprints(n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` stored fingerprints (n/VISITS persons x VISITS visits) and ``n_queries`` new visits of stored persons."""
    rng = np.random.default_rng(seed)
    persons = max(1, n // VISITS)
    data = np.empty((n, DIM), dtype=np.float32)
    chunk = 50_000
    centres = unit(rng.standard_normal((persons, DIM), dtype=np.float32))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        owner = np.arange(start, stop) % persons
        data[start:stop] = unit(centres[owner] + NOISE * rng.standard_normal((stop - start, DIM), dtype=np.float32))
    owners = rng.integers(0, persons, n_queries)
    queries = unit(centres[owners] + NOISE * rng.standard_normal((n_queries, DIM), dtype=np.float32))
    return data, queries


def median_query_ms(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Median latency of one-at-a-time queries (what the archive does per series), and the result ids."""
    times, labels = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, ids = index.search(q.reshape(1, -1), k)
        times.append((time.perf_counter() - t0) * 1000)
        labels.append(ids[0])
    return statistics.median(times), np.stack(labels)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def measure(factory: str, params: list[str], data: np.ndarray, queries: np.ndarray, k: int, truth) -> list[dict]:
    t0 = time.perf_counter()
    index = new_faiss_index(factory, DIM)
    train_s = 0.0
    if not index.is_trained:
        sample = data[np.random.default_rng(1).permutation(len(data))[:200_000]]
        index.train(sample)
        train_s = time.perf_counter() - t0
    index.add_with_ids(data, np.arange(len(data), dtype=np.int64))
    build_s = time.perf_counter() - t0
    memory = faiss.serialize_index(index).nbytes  # what it holds in memory (and on disk), give or take headers
    rows = []
    for param in params:
        if param:
            faiss.ParameterSpace().set_index_parameters(index, param)
        ms, found = median_query_ms(index, queries, k)
        rows.append(
            {
                "factory": factory,
                "search_params": param,
                "n": len(data),
                "build_s": round(build_s, 2),
                "train_s": round(train_s, 2),
                "memory_mb": round(memory / 2**20, 1),
                "median_query_ms": round(ms, 3),
                "recall_at_10": 1.0 if truth is None else round(recall_at_k(found, truth), 4),
                "top1_agreement": 1.0 if truth is None else round(float(np.mean(found[:, 0] == truth[:, 0])), 4),
                "_found": found,
            }
        )
    del index
    return rows


class _BenchModel:
    """Only a model version is needed: fingerprints are given directly."""

    model_version = "bench"


def measure_archive(n: int, store_url: str | None, label: str, timed: int = 200, scratch: bool = False) -> dict:
    """Median/p95 time of Archive.decide_and_record (lock, index catch-up, search, decide, write) at ``n`` series."""
    import tempfile

    from deepbrainprint.settings import load_settings
    from fingerprint.identity.archive import Archive
    from fingerprint.identity.calibration import Thresholds
    from fingerprint.types import FingerprintResult, SeriesIdentifiers, SliceResult

    if store_url and not scratch:  # a scratch schema on the given database, dropped afterwards
        from sqlalchemy import create_engine, text

        schema = f"dbp_bench_{os.getpid()}"
        admin = create_engine(store_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        try:
            return measure_archive(n, f"{store_url}?options=-csearch_path%3D{schema}", label, timed, scratch=True)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    data, _ = clustered_fingerprints(n, 1, seed=7)
    pixels = np.zeros((128, 128), np.float32)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(home=Path(tmp), index_dir=Path(tmp) / "archive", store_url=store_url or None)
        thresholds = Thresholds("bench", 0.8, 0.6, 0.001, "explicit")
        persons = max(1, n // VISITS)
        with Archive(settings.archive_config(), model=_BenchModel(), thresholds=thresholds) as archive:
            for i, vector in enumerate(data):
                ids = SeriesIdentifiers(patient_id=f"P{i % persons}", series_instance_uid=f"{label}.{i}")
                t0 = time.perf_counter()
                archive.decide_and_record(FingerprintResult(vector, "bench", SliceResult(pixels, ids)), {})
                if i >= n - timed:
                    times.append((time.perf_counter() - t0) * 1000)
    return {
        "backend": label,
        "n": n,
        "median_decide_ms": round(statistics.median(times), 2),
        "p95_decide_ms": round(float(np.percentile(times, 95)), 2),
        "timed": len(times),
    }


def write_reports(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "index.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Index benchmark (`bench/bench_index.py`)",
        "",
        f"Command: {results['command'] if '`' in results['command'] else '`' + results['command'] + '`'}  ",
        f"Machine: {results['machine']}; FAISS {results['faiss_version']}, {results['faiss_threads']} thread(s); "
        f"{results['queries']} single queries, k={results['k']}, medians. Data: clustered unit fingerprints "
        f"({VISITS} visits per person, same-person cosine ~{results['same_person_cosine']:.2f}).",
        "Recall@10 and top-1 agreement (the best match, which decides a verdict) are against the exact (Flat) index "
        "on the same data in the same run; memory is the serialized index size (what it holds in RAM and on disk); "
        "`x exact` is the exact index's median query time divided by this one's (same run). Build includes training.",
        "",
        "| n | index | search params | build s | memory MB | median query ms | x exact | recall@10 | top-1 agree |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        exact = next(x for x in results["rows"] if x["n"] == r["n"] and x["factory"] == "Flat")
        speedup = exact["median_query_ms"] / r["median_query_ms"] if r["median_query_ms"] else float("nan")
        lines.append(
            f"| {r['n']:,} | {r['factory']} | {r['search_params'] or '-'} | {r['build_s']} | {r['memory_mb']} | "
            f"{r['median_query_ms']} | {speedup:.1f} | {r['recall_at_10']} | {r['top1_agreement']} |"
        )
    lines += [f"Note: {note}" for note in results.get("notes", [])]
    if results.get("archive"):
        lines += [
            "",
            "Decide-and-record (`Archive.decide_and_record`: archive lock, index catch-up, search, own-scan check, "
            "verdict, write; exact index), timed over the last series added to an archive of n series "
            f"(`{results.get('archive_command', '')}`):",
            "",
            "| store | n | median ms | p95 ms |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {a['backend']} | {a['n']:,} | {a['median_decide_ms']} | {a['p95_decide_ms']} |" for a in results["archive"]
        ]
    if results["skipped"]:
        lines += ["", "Skipped (predicted build time over the remaining budget):", ""]
        lines += [f"- {s}" for s in results["skipped"]]
    (RESULTS / "index.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads (the archive searches one at a time)")
    parser.add_argument("--budget-s", type=float, default=3600, help="skip builds predicted to end after this")
    parser.add_argument("--archive", type=int, default=0, help="also time decide-and-record at this many series")
    parser.add_argument("--postgres-url", default="", help="time the PostgreSQL store too (a scratch database)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    a = unit(rng.standard_normal((1, DIM), dtype=np.float32))
    b = unit(a + NOISE * rng.standard_normal((1, DIM), dtype=np.float32))
    results = {
        "command": "nice -n 10 .venv/bin/python bench/bench_index.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "faiss_version": faiss.__version__,
        "faiss_threads": args.threads,
        "queries": args.queries,
        "k": args.k,
        "same_person_cosine": float((a @ b.T)[0, 0]),
        "rows": [],
        "skipped": [],
    }
    previous = RESULTS / "index.json"
    kept_rows: list[dict] = []
    if previous.exists():  # rows of sizes not measured now are kept (a long 1M run is not repeated for a tweak)
        kept = json.loads(previous.read_text())
        kept_rows = [r for r in kept.get("rows", []) if r["n"] not in args.sizes]
        if kept_rows:
            sizes_run = f"; then `{results['command']}`" if args.sizes else ""
            results["command"] = f"{kept['command']}{sizes_run}"
            results["notes"] = kept.get("notes", [])
        if kept.get("archive") and not args.archive:
            results["archive"], results["archive_command"] = kept["archive"], kept.get("archive_command", "")
        results["skipped"] = [s for s in kept.get("skipped", []) if not any(f"n={n:,}" in s for n in args.sizes)]
    results["rows"] = list(kept_rows)
    if args.archive:
        results["archive_command"] = "nice -n 10 .venv/bin/python bench/bench_index.py " + " ".join(sys.argv[1:])
        results["archive"] = [measure_archive(args.archive, None, "sqlite")]
        if args.postgres_url:
            results["archive"].append(measure_archive(args.archive, args.postgres_url, "postgresql"))
        write_reports(results)
    last_build: dict[str, tuple[int, float]] = {}
    for n in args.sizes:
        data, queries = clustered_fingerprints(n, args.queries, seed=n)
        truth = None
        for template, params in CONFIGS:
            factory = template.format(nlist=max(16, int(4 * np.sqrt(n))))
            key = template
            if key in last_build:
                prev_n, prev_s = last_build[key]
                predicted = prev_s * (n / prev_n) * (1.3 if key.startswith("HNSW") else 1.0)
                remaining = args.budget_s - (time.perf_counter() - started)
                if predicted > remaining:
                    results["skipped"].append(
                        f"{factory} at n={n:,}: build predicted {predicted:.0f} s, {remaining:.0f} s of budget left"
                    )
                    write_reports(results)
                    continue
            rows = measure(factory, params, data, queries, args.k, truth)
            if truth is None:
                truth = rows[0]["_found"]
            for r in rows:
                r.pop("_found")
            last_build[key] = (n, rows[0]["build_s"])
            results["rows"].extend(rows)
            results["rows"].sort(key=lambda r: r["n"])
            write_reports(results)
            print(json.dumps(rows), flush=True)
        del data
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_reports(results)


if __name__ == "__main__":
    main()
