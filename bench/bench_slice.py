"""Slice benchmark: seconds per series to read, align and slice the real T1 series in ../shared/data/t1, one core.

Target (issue 2): < 2 s per series on one core for the alignment. SimpleITK runs with 1 thread here (a worker's
default). Both wall-clock and process CPU seconds are recorded: the development machine is shared (load average in
the output), and CPU seconds are what one core would take with the machine to itself. The array-middle baseline
(no alignment) is timed in the same run, so the ratio is same-run.

Usage::

    nice -n 5 .venv/bin/python bench/bench_slice.py [--repeats 3] [--data ../shared/data]

Writes bench/results/slice.json and slice.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fingerprint.imaging.canonical import align  # noqa: E402
from fingerprint.imaging.dicom_read import read_series  # noqa: E402
from fingerprint.imaging.pipeline import middle_slice  # noqa: E402
from fingerprint.imaging.reference import load_reference  # noqa: E402
from fingerprint.imaging.slicing import sample_canonical_slice  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("read", "align", "slice", "middle")


def timed(function, *args):
    """(result, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_series(folder: Path, repeats: int) -> dict:
    """Per-stage median wall and CPU seconds over ``repeats`` runs for one series."""
    samples: dict[str, dict[str, list[float]]] = {s: {"wall": [], "cpu": []} for s in STAGES}
    size = None
    for _ in range(repeats):
        loaded, wall, cpu = timed(read_series, folder)
        samples["read"]["wall"].append(wall)
        samples["read"]["cpu"].append(cpu)
        size = list(loaded.image.GetSize())
        alignment, wall, cpu = timed(align, loaded.image)
        samples["align"]["wall"].append(wall)
        samples["align"]["cpu"].append(cpu)
        _, wall, cpu = timed(sample_canonical_slice, loaded.image, alignment.transform)
        samples["slice"]["wall"].append(wall)
        samples["slice"]["cpu"].append(cpu)
        _, wall, cpu = timed(middle_slice, loaded.image)
        samples["middle"]["wall"].append(wall)
        samples["middle"]["cpu"].append(cpu)
    medians = {s: {k: statistics.median(v) for k, v in samples[s].items()} for s in STAGES}
    anatomical_cpu = sum(medians[s]["cpu"] for s in ("read", "align", "slice"))
    return {
        "series": folder.name,
        "size": size,
        "median_s": medians,
        "anatomical_total_cpu_s": anatomical_cpu,
        "middle_total_cpu_s": medians["read"]["cpu"] + medians["middle"]["cpu"],
        "attempts": len(alignment.attempts),
    }


def to_markdown(report: dict) -> str:
    lines = [
        "# Slice pipeline: seconds per real T1 series (one SimpleITK thread)",
        "",
        f"Measured {report['date']} on {report['machine']}, load average at start {report['load_average']}, "
        f"{report['repeats']} repeats, medians. Command: `{report['command']}`",
        "",
        "| series | size | read cpu | align cpu (wall) | slice ms | total cpu | middle total cpu |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["series"]:
        m = row["median_s"]
        lines.append(
            f"| {row['series']} | {'x'.join(map(str, row['size']))} | {m['read']['cpu']:.2f} | "
            f"{m['align']['cpu']:.2f} ({m['align']['wall']:.2f}) | {1000 * m['slice']['wall']:.1f} | "
            f"{row['anatomical_total_cpu_s']:.2f} | {row['middle_total_cpu_s']:.2f} |"
        )
    summary = report["summary"]
    lines += [
        "",
        f"Median over series: align {summary['median_align_cpu_s']:.2f} s CPU (target < 2 s), whole anatomical path "
        f"{summary['median_total_cpu_s']:.2f} s CPU, canonical slice sampling {summary['median_slice_ms']:.1f} ms; "
        f"anatomical / middle same-run ratio {summary['anatomical_over_middle']:.1f}x.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    load_reference()  # read once, outside the timings
    folders = sorted((args.data / "t1").iterdir())
    rows = [bench_series(folder, args.repeats) for folder in folders]
    summary = {
        "median_align_cpu_s": statistics.median(r["median_s"]["align"]["cpu"] for r in rows),
        "median_total_cpu_s": statistics.median(r["anatomical_total_cpu_s"] for r in rows),
        "median_slice_ms": 1000 * statistics.median(r["median_s"]["slice"]["wall"] for r in rows),
        "anatomical_over_middle": statistics.median(r["anatomical_total_cpu_s"] / r["middle_total_cpu_s"] for r in rows),
    }
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "repeats": args.repeats,
        "command": "nice -n 5 .venv/bin/python bench/bench_slice.py --repeats " + str(args.repeats),
        "series": rows,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "slice.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "slice.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
