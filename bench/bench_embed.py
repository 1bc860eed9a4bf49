"""Embedding benchmark: median milliseconds per slice for the encoder on CPU, at batch 1 and batch 32, and peak RSS.

What a worker pays per series once the slice exists (slicing is measured by the slice part). The model is the one
``fingerprint.model.fingerprinter.load_model()`` returns (shipped weights, else the untrained encoder: same architecture, same cost).
Threads: 1 (the product's default per worker process) and, in the same run, all cores, so the ratio is same-run.

Usage::

    nice -n 5 .venv/bin/python bench/bench_embed.py [--repeats 15]

Writes bench/results/embed.json and embed.md.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fingerprint.model.fingerprinter import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(model, batch: int, threads: int, repeats: int) -> dict:
    """Median and quartiles of ms per slice over ``repeats`` timed calls (after two warm-up calls)."""
    model.num_threads = threads
    pixels = np.random.default_rng(0).random((batch, 128, 128), dtype=np.float32)
    for _ in range(2):
        model.embed(pixels)
    per_slice = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.embed(pixels)
        per_slice.append((time.perf_counter() - start) * 1000.0 / batch)
    q = statistics.quantiles(per_slice, n=4)
    return {"batch": batch, "threads": threads, "repeats": repeats, "median_ms_per_slice": statistics.median(per_slice),
            "q1_ms": q[0], "q3_ms": q[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rss_before = peak_rss_mib()
    model = load_model()
    rss_loaded = peak_rss_mib()
    cores = os.cpu_count() or 1
    rows = [measure(model, batch, threads, args.repeats) for threads in sorted({1, cores}) for batch in (1, 32)]
    result = {
        "model_version": model.model_version,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": cores,
                    "python": platform.python_version()},
        "peak_rss_mib": {"before_model": round(rss_before, 1), "after_load": round(rss_loaded, 1),
                         "after_all_runs": round(peak_rss_mib(), 1)},
        "rows": rows,
    }
    one = {r["batch"]: r["median_ms_per_slice"] for r in rows if r["threads"] == 1}
    result["batch32_speedup_vs_batch1_1thread"] = one[1] / one[32]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Embedding benchmark ({model.model_version}, {cores} cores, CPU)",
        "",
        "Command: `nice -n 5 .venv/bin/python bench/bench_embed.py` (medians of "
        f"{args.repeats} timed calls after 2 warm-up calls; 128x128 slices).",
        "",
        "| threads | batch | median ms / slice | IQR ms |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['batch']} | {r['median_ms_per_slice']:.2f} | "
                     f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f} |")
    lines += ["", f"Batch 32 vs batch 1 (1 thread, same run): {result['batch32_speedup_vs_batch1_1thread']:.2f}x "
              "faster per slice.", "",
              f"Peak RSS: {rss_before:.0f} MiB before loading, {rss_loaded:.0f} MiB after loading the model, "
              f"{result['peak_rss_mib']['after_all_runs']:.0f} MiB after all runs."]
    (RESULTS / "embed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
