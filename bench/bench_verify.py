"""Verification benchmark: CPU seconds per verified pair (median, p95) on real brains, one thread, and brain size.

What a worker pays per candidate the verification stage checks (register two canonical brains, score their fine
anatomy), measured as the archive runs it: the new series' brain prepared once, each candidate's brain prepared and
verified. Inputs: the canonical brains of the real series of the shared data (five people and the four decubitus
series), made by the real pipeline (cached in ``~/.cache/deepbrainprint/real-views``). Every pair, ``--repeats``
times. Also the same run's cost of making a canonical brain from an aligned series, and its stored size.

Usage::

    nice -n 5 .venv/bin/python bench/bench_verify.py [--repeats 3]

Writes bench/results/verify.json and verify.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fingerprint.evaluation.identity_data import shared_views  # noqa: E402
from fingerprint.evaluation.slice_benchmark import default_real_data_dir  # noqa: E402
from fingerprint.identity.verification import METHOD_VERSION, prepare, verify  # noqa: E402
from fingerprint.imaging.brain import brain_to_bytes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path.home() / ".cache" / "deepbrainprint" / "real-views"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shared = default_real_data_dir()
    if shared is None:
        sys.exit("the shared real data is needed (../shared/data or $DBP_SHARED_DATA)")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    views = shared_views(shared, CACHE)
    brains = [s.brain for s in views.scans]
    prepare_s, pair_s, scores = [], [], []
    for _ in range(args.repeats):
        for a, b in itertools.combinations(range(len(brains)), 2):
            fixed = prepare(brains[a])
            started = time.process_time()
            moving = prepare(brains[b])
            prepared = time.process_time()
            result = verify(fixed, moving)
            done = time.process_time()
            prepare_s.append(prepared - started)
            pair_s.append(done - started)
            scores.append(result.score)
    sizes = [len(brain_to_bytes(b)) for b in brains]
    result = {
        "method_version": METHOD_VERSION,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "series": len(brains),
        "pairs_timed": len(pair_s),
        "cpu_s_per_pair_p50": float(np.median(pair_s)),
        "cpu_s_per_pair_p95": float(np.percentile(pair_s, 95)),
        "cpu_s_prepare_candidate_p50": float(np.median(prepare_s)),
        "stored_brain_bytes_p50": int(np.median(sizes)),
        "stored_brain_bytes_max": int(np.max(sizes)),
        "stored_bytes_per_million_series_gb": round(float(np.median(sizes)) * 1e6 / 1e9, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Verification benchmark ({METHOD_VERSION}, one thread, CPU)",
        "",
        f"Command: `nice -n 5 .venv/bin/python bench/bench_verify.py --repeats {args.repeats}` ({len(brains)} real "
        f"series of the shared data, every pair, {len(pair_s)} timed verifications; CPU time of one process).",
        "",
        "| what | median | p95 |",
        "|---|---|---|",
        f"| one verified pair (candidate prepared + registered + scored), s | {result['cpu_s_per_pair_p50']:.3f} | "
        f"{result['cpu_s_per_pair_p95']:.3f} |",
        f"| of which preparing the candidate's brain, s | {result['cpu_s_prepare_candidate_p50']:.3f} | |",
        "",
        f"Stored canonical brain: median {result['stored_brain_bytes_p50'] / 1000:.0f} kB per series (max "
        f"{result['stored_brain_bytes_max'] / 1000:.0f} kB), about {result['stored_bytes_per_million_series_gb']} GB "
        "per million series.",
    ]
    (RESULTS / "verify.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
