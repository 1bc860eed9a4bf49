"""Verification benchmark: CPU seconds per verified pair (median, p95) on real brains, one thread, before and after
the stage was made faster (issue 16), in one run; the scores of both and whether any pair changed its verdict band.

What a worker pays per candidate the verification stage checks (register two canonical brains, score their fine
anatomy), measured as the archive runs it: the new series' brain prepared once, each candidate's brain prepared and
verified. Inputs: the canonical brains of the real series of the shared data (five people and the four decubitus
series), made by the real pipeline (cached in ``~/.cache/deepbrainprint/real-views``). Every pair, ``--repeats``
times, the two settings (``verification.REGISTRATION_BEFORE`` and ``REGISTRATION``) alternating pair by pair so that
the machine's load falls on both alike. A pair's band is where its score lies against the shipped verification
thresholds (at or above match, below mismatch, between, or no score): the verdict it can lead to. Also a cProfile of
both settings (bench/results/profile_verify.txt) and the stored size of a canonical brain.

Usage::

    nice -n 5 .venv/bin/python bench/bench_verify.py [--repeats 3]

Writes bench/results/verify.json, verify.md and profile_verify.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fingerprint.evaluation.identity_data import shared_views  # noqa: E402
from fingerprint.evaluation.slice_benchmark import default_real_data_dir  # noqa: E402
from fingerprint.identity.calibration import resolve_thresholds  # noqa: E402
from fingerprint.identity.verification import (  # noqa: E402
    METHOD_VERSION,
    REGISTRATION,
    REGISTRATION_BEFORE,
    RegistrationSettings,
    prepare,
    verify,
)
from fingerprint.imaging.brain import brain_to_bytes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path.home() / ".cache" / "deepbrainprint" / "real-views"


def band(score: float | None, match: float, mismatch: float) -> str:
    if score is None:
        return "none"
    return "same" if score >= match else "different" if score < mismatch else "between"


def timed_pair(fixed, brain: np.ndarray, settings: RegistrationSettings) -> tuple[float, float, float | None]:
    """(CPU s of preparing the candidate and verifying it, CPU s of the preparing alone, score)."""
    started = time.process_time()
    moving = prepare(brain)
    prepared = time.process_time()
    result = verify(fixed, moving, settings=settings)
    return time.process_time() - started, prepared - started, result.score


def profile_text(label: str, brains: list[np.ndarray], pairs: list[tuple[int, int]], settings) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for a, b in pairs:
        verify(prepare(brains[a]), prepare(brains[b]), settings=settings)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    return f"## {label}: {len(pairs)} pairs, both brains prepared and verified, one thread\n{out.getvalue()}\n"


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
    people = [s.person for s in views.scans]
    thresholds = resolve_thresholds(METHOD_VERSION)
    pairs = list(itertools.combinations(range(len(brains)), 2))
    runs = {"before": REGISTRATION_BEFORE, "after": REGISTRATION}
    pair_s: dict[str, list[float]] = {k: [] for k in runs}
    prepare_s: dict[str, list[float]] = {k: [] for k in runs}
    scores: dict[str, dict[tuple[int, int], float | None]] = {k: {} for k in runs}
    for repeat in range(args.repeats):
        for a, b in pairs:
            fixed = prepare(brains[a])
            order = list(runs) if (repeat + a + b) % 2 == 0 else list(runs)[::-1]
            for name in order:
                seconds, preparing, score = timed_pair(fixed, brains[b], runs[name])
                pair_s[name].append(seconds)
                prepare_s[name].append(preparing)
                scores[name][(a, b)] = score
    profile = "".join(profile_text(name, brains, pairs[::4], runs[name]) for name in runs)
    differences = [abs((scores["after"][p] or 0.0) - (scores["before"][p] or 0.0)) for p in pairs]
    bands = {name: {p: band(scores[name][p], thresholds.match, thresholds.mismatch) for p in pairs} for name in runs}
    changed = [p for p in pairs if bands["before"][p] != bands["after"][p]]
    sizes = [len(brain_to_bytes(b)) for b in brains]
    load = os.getloadavg()

    def summary(name: str) -> dict:
        return {"settings": runs[name].__dict__, "cpu_s_per_pair_p50": float(np.median(pair_s[name])),
                "cpu_s_per_pair_p95": float(np.percentile(pair_s[name], 95)),
                "cpu_s_prepare_candidate_p50": float(np.median(prepare_s[name])), "pairs_timed": len(pair_s[name])}

    result = {
        "method_version": METHOD_VERSION,
        "command": "nice -n 5 .venv/bin/python bench/bench_verify.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "load_average_1_5_15_at_end": [round(v, 2) for v in load]},
        "series": len(brains),
        "before": summary("before"),
        "after": summary("after"),
        "headline": {"verify_s_p50": round(float(np.median(pair_s["after"])), 4),
                     "verify_s_p50_before": round(float(np.median(pair_s["before"])), 4)},
        "after_vs_before_cpu_ratio": float(np.median(pair_s["after"]) / np.median(pair_s["before"])),
        "scores": {"pairs": len(pairs), "max_abs_difference": float(max(differences)),
                   "median_abs_difference": float(np.median(differences)),
                   "thresholds": {"match": thresholds.match, "mismatch": thresholds.mismatch},
                   "pairs_whose_band_changed": [[views.scans[a].scan_id, views.scans[b].scan_id] for a, b in changed],
                   "per_pair": [{"a": views.scans[a].scan_id, "b": views.scans[b].scan_id,
                                 "same_person": people[a] == people[b], "before": scores["before"][(a, b)],
                                 "after": scores["after"][(a, b)]} for a, b in pairs]},
        "stored_brain_bytes_p50": int(np.median(sizes)),
        "stored_brain_bytes_max": int(np.max(sizes)),
        "stored_bytes_per_million_series_gb": round(float(np.median(sizes)) * 1e6 / 1e9, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "profile_verify.txt").write_text(profile)
    b, a = result["before"], result["after"]
    lines = [
        f"# Verification benchmark ({METHOD_VERSION}, one thread, CPU)",
        "",
        f"Command: `{result['command']}` ({len(brains)} real series of the shared data, every pair, "
        f"{a['pairs_timed']} timed verifications per setting, the two settings alternating; CPU time of one process; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}: compare within this run).",
        "",
        "| setting | one verified pair (candidate prepared + registered + scored), s, median | p95 | of which preparing"
        " the candidate, s |",
        "|---|---|---|---|",
        f"| before ({REGISTRATION_BEFORE}) | {b['cpu_s_per_pair_p50']:.3f} | {b['cpu_s_per_pair_p95']:.3f} | "
        f"{b['cpu_s_prepare_candidate_p50']:.3f} |",
        f"| after ({REGISTRATION}) | {a['cpu_s_per_pair_p50']:.3f} | {a['cpu_s_per_pair_p95']:.3f} | "
        f"{a['cpu_s_prepare_candidate_p50']:.3f} |",
        "",
        f"After / before, same run: {result['after_vs_before_cpu_ratio']:.2f}.",
        "",
        f"Scores of the {len(pairs)} pairs, after against before: largest difference "
        f"{result['scores']['max_abs_difference']:.4f}, median {result['scores']['median_abs_difference']:.4f}; pairs "
        f"whose band (against match {thresholds.match:.3f} / mismatch {thresholds.mismatch:.3f}) changed: "
        f"{len(changed)}.",
        "",
        f"Stored canonical brain: median {result['stored_brain_bytes_p50'] / 1000:.0f} kB per series (max "
        f"{result['stored_brain_bytes_max'] / 1000:.0f} kB), about {result['stored_bytes_per_million_series_gb']} GB "
        "per million series.",
    ]
    (RESULTS / "verify.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
