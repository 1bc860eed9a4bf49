"""Issue 16, search: HNSW index variants side by side at the same recall@10, to choose the shipped one.

The approximate index (``fingerprint.identity.index``, factory ``auto`` above 50,000 fingerprints) is an HNSW graph
over the model's search transform (centring + rotation onto 128 principal axes), its candidates re-ranked by exact
raw inner product. It was float32 ``HNSW32`` until 2026-11-29, which missed the 1 ms target at recall@10 0.99 at 1M;
these runs chose ``HNSW32_SQ8`` that afternoon and ``HNSW48_SQ8`` (``sq8m48`` below) that evening. This experiment
builds, on the same synthetic fingerprints as ``bench_index.py`` (same generator, same seed), variants that trade
differently, and sweeps the search depth of each in the same run (``shipped`` names the float32 HNSW32 shipped
first):

- ``shipped``: HNSW32, float32 vectors in the 128-axis space;
- ``sq8``: HNSW32 with 8-bit scalar-quantized vectors (a quarter of the bytes read per distance);
- ``fp16``: HNSW32 with half-precision vectors (half the bytes);
- ``panorama``: FAISS's HNSW Panorama (``IndexHNSWFlatPanorama``, 8 levels): distances computed level by level
  over the principal axes, a neighbour dropped as soon as its bound says it cannot enter the list;
- ``pca64`` / ``pca96`` / ``pca192``: HNSW32 over fewer or more principal axes (cheaper distances or better order);
- ``sq8m24`` / ``sq8m48`` / ``sq8m64``: ``sq8`` with fewer or more graph links per node (HNSW's M): more links cost
  more distances per hop and may need fewer hops for the same recall.

Every variant is wrapped as the archive wraps its index (pre-transform, exact raw re-rank, id map). Nothing here
changes the shipped index.

Usage (the runs behind bench/results/index_variants.*; one run is kept per size and set of variants)::

    nice -n 10 .venv/bin/python bench/experiment_index_variants.py --n 100000
    nice -n 10 .venv/bin/python bench/experiment_index_variants.py --n 1000000 --variants sq8 sq8m48 sq8m64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_index  # noqa: E402
from fingerprint.identity.index import wrap_search_index  # noqa: E402
from fingerprint.identity.whitening import SearchTransform, fit_search_transform  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: name -> (principal axes, storage, graph links M), storage one of "flat", "sq8", "fp16", "panorama"
VARIANTS: dict[str, tuple[int, str, int]] = {
    "shipped": (128, "flat", 32),
    "sq8": (128, "sq8", 32),
    "fp16": (128, "fp16", 32),
    "panorama": (128, "panorama", 32),
    "pca64": (64, "flat", 32),
    "pca96": (96, "flat", 32),
    "pca192": (192, "flat", 32),
    "sq8m24": (128, "sq8", 24),
    "sq8m48": (128, "sq8", 48),
    "sq8m64": (128, "sq8", 64),
}
PANORAMA_LEVELS = 8
#: (efSearch, k_factor): HNSW explores max(efSearch, k * k_factor) nodes, so the pairs below 10 * k_factor repeat
SEARCHES = [(64, 8), (96, 8), (128, 8), (160, 8), (160, 16), (192, 16), (256, 16), (256, 32), (320, 32)]


def search_index(axes: int, storage: str, links: int, transform: SearchTransform, ef_construction: int) -> faiss.Index:
    """The variant, wrapped as the archive wraps its index (``fingerprint.identity.index.wrap_search_index``)."""
    if storage == "flat":
        inner = faiss.IndexHNSWFlat(axes, links, faiss.METRIC_L2)
    elif storage in ("sq8", "fp16"):
        kind = faiss.ScalarQuantizer.QT_8bit if storage == "sq8" else faiss.ScalarQuantizer.QT_fp16
        inner = faiss.IndexHNSWSQ(axes, kind, links, faiss.METRIC_L2)
    elif storage == "panorama":
        inner = faiss.IndexHNSWFlatPanorama(axes, links, PANORAMA_LEVELS, faiss.METRIC_L2)
    else:
        raise ValueError(storage)
    inner.hnsw.efConstruction = ef_construction
    return wrap_search_index(inner, bench_index.DIM, transform)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    vectors, subject, model_version = bench_index.load_sample()
    generator = bench_index.Generator(vectors[subject % 2 == 1], subject[subject % 2 == 1])
    data, queries = generator.draw(args.n, args.queries, seed=args.n)
    exact = faiss.IndexFlatIP(bench_index.DIM)
    exact.add(data)
    truth_sims, truth_ids = exact.search(queries, 10)
    del exact
    rows: list[dict] = []
    for name in args.variants:
        axes, storage, links = VARIANTS[name]
        transform = fit_search_transform(vectors[subject % 2 == 0], model_version, axes, 0.0)  # the shipped recipe
        eigenvalues = faiss.vector_to_array(transform.pca.eigenvalues)
        index = search_index(axes, storage, links, transform, args.ef_construction)
        faiss.omp_set_num_threads(2)  # the build; one query's search is one thread
        started = time.perf_counter()
        bench_index.fill(index, data)
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        label = {"variant": name, "axes": axes, "storage": storage, "links": links, "n": args.n,
                 "build_s": round(build_s, 1),
                 "variance_share": round(float(eigenvalues[:axes].sum() / eigenvalues.sum()), 4),
                 "bytes_per_fingerprint": round(bench_index.index_bytes(index) / args.n, 1)}
        rows += bench_index.search_rows(index, label, SEARCHES, queries, 10, truth_ids, truth_sims)
        del index
    command = "nice -n 10 .venv/bin/python bench/experiment_index_variants.py " + " ".join(sys.argv[1:])
    run = {"command": command, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), FAISS {faiss.__version__}",
           "n": args.n, "ef_construction": args.ef_construction, "queries": args.queries, "rows": rows}
    write_results(run)


def write_results(run: dict) -> None:
    """Keep one run per size and set of variants (a run at another size, or of other variants, stays), then write
    the JSON and the Markdown tables."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "index_variants.json"
    runs = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    runs = sorted([r for r in runs if _key(r) != _key(run)] + [run], key=lambda r: (r["n"], r["when"]))
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    lines = ["# Index variants at the same recall (issue 16, search; `bench/experiment_index_variants.py`)", "",
             "HNSW variants (links: HNSW's M), each re-ranked by exact raw inner product as the archive's index is; "
             "single queries, k=10, medians, one thread. Data: bench_index.py's synthetic fingerprints (same "
             "generator and seed). Recall@10 against exact search in the same run. Compare within one table only.", ""]
    for r in runs:
        lines += [f"## {r['n']:,} fingerprints", "",
                  f"Command: `{r['command']}`; {r['when']}, {r['machine']}; {r['queries']} queries; "
                  f"efConstruction {r['ef_construction']}.", "",
                  "| variant | axes (variance share) | storage | links | build s | bytes/fp | search params "
                  "| median ms | recall@10 |",
                  "|---|---|---|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {x['variant']} | {x['axes']} ({x['variance_share']}) | {x['storage']} | {x.get('links', 32)} | "
                  f"{x['build_s']} | {x['bytes_per_fingerprint']} | {x['search_params']} | {x['median_query_ms']} | "
                  f"{x['recall_at_10']} |"
                  for x in r["rows"]]
        lines.append("")
    (RESULTS / "index_variants.md").write_text("\n".join(lines))


def _key(run: dict) -> tuple[int, tuple[str, ...]]:
    return run["n"], tuple(sorted({row["variant"] for row in run["rows"]}))


if __name__ == "__main__":
    main()
