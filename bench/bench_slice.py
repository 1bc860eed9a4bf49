"""Slice benchmark: seconds to read, align and slice real T1 series, one SimpleITK thread, shipped settings against
the previous alignment settings in the same run.

Target (issue 16): read + align + slice of a 176-slice 1 mm T1 series in at most 0.5 s on one worker. Stages are
timed separately (read, align, slice; the canonical brain, which the verification stage needs, is reported beside
them). Each series is aligned with the shipped settings of ``fingerprint.imaging.canonical`` and with the settings it
had before (``PREVIOUS_SETTINGS``: a 2 mm third coarse level, precomputed gradient images, finer stopping steps), in
the same run, so the ratio is same-run; the pose difference between the two (rotation, and displacement of the
canonical plane's centre) is recorded too. How time scales with the number of slices: the Siemens Trio series
(1 mm sagittal, 176 slices) rewritten as DICOM with 44, 88, 176 and 352 slices (4, 2, 1 and 0.5 mm).

Both wall-clock and process CPU seconds are recorded: the development machine is shared (load average in the
output), and CPU seconds of a single-threaded process are what one core takes with the machine to itself. The
headline figures are CPU seconds.

Usage::

    nice -n 5 .venv/bin/python bench/bench_slice.py [--repeats 3] [--data ../shared/data] [--profile]

Writes bench/results/slice.json and slice.md (and, with --profile, bench/results/profile_slice.txt: cProfile's top
functions for one pass over the real series, previous settings then shipped).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fingerprint.imaging import canonical  # noqa: E402
from fingerprint.imaging.brain import extract_brain  # noqa: E402
from fingerprint.imaging.dicom_read import read_series  # noqa: E402
from fingerprint.imaging.dicom_write import write_series  # noqa: E402
from fingerprint.imaging.reference import plane_centre  # noqa: E402
from fingerprint.imaging.slicing import sample_plane, trusted_interior  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: The alignment settings before issue 16 (module constants of fingerprint.imaging.canonical).
PREVIOUS_SETTINGS: dict[str, Any] = {
    "COARSE_SHRINK": (4, 2, 1),
    "COARSE_SIGMAS_MM": (2.0, 1.0, 0.0),
    "COARSE_SIGMAS_IN_MM": False,
    "SAMPLING_FRACTIONS": (1.0, 0.3, 0.1),
    "COARSE_MOVING_SPACING_MM": 2.0,
    "COARSE_MIN_STEP": 0.01,
    "REFINE_MIN_STEP": 0.01,
    "REFINE_SAMPLING_FRACTION": 0.3,
    "START_SPACING_MM": 2.0,
    "PRECOMPUTED_GRADIENT": True,
    "ALIGNMENT_ENGINE": "itk",
}
#: The shipped settings on SimpleITK's registration (the engine before the numpy one, same levels and steps).
ITK_ENGINE_SETTINGS: dict[str, Any] = {"ALIGNMENT_ENGINE": "itk"}
SETTINGS = {"previous": PREVIOUS_SETTINGS, "itk": ITK_ENGINE_SETTINGS, "shipped": {}}
HEADLINE_SERIES = "siemens-trio-3t-sag"
SCALING_THICKNESSES_MM = (4.0, 2.0, 1.0, 0.5)


@contextmanager
def alignment_settings(values: dict[str, Any]) -> Iterator[None]:
    """The module constants of ``canonical`` set to ``values`` inside the block."""
    saved = {name: getattr(canonical, name) for name in values}
    for name, value in values.items():
        setattr(canonical, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(canonical, name, value)


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def cut_slice(image: sitk.Image, transform: sitk.Transform) -> Any:
    """The pipeline's slice stage: the trusted interior, then the canonical plane."""
    return sample_plane(trusted_interior(image), transform)


def pose_difference(a: sitk.Transform, b: sitk.Transform) -> dict[str, float]:
    """Rotation (degrees) between two reference -> image transforms, and how far apart they put the plane's centre."""
    matrix = np.asarray(a.GetMatrix()).reshape(3, 3).T @ np.asarray(b.GetMatrix()).reshape(3, 3)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(matrix) - 1.0) / 2.0))))
    centre = plane_centre()
    shift = np.subtract(a.TransformPoint(centre), b.TransformPoint(centre))
    return {"rotation_deg": round(angle, 2), "centre_mm": round(float(np.linalg.norm(shift)), 2), "level_mm": round(float(shift[2]), 2)}


def bench_series(folder: Path, repeats: int) -> dict[str, Any]:
    """Per-stage median wall and CPU seconds over ``repeats`` runs of one series, for each of SETTINGS."""
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        name: {stage: {"wall": [], "cpu": []} for stage in ("read", "align", "slice", "brain")} for name in SETTINGS
    }
    transforms: dict[str, sitk.Transform] = {}
    size: list[int] = []
    for _ in range(repeats):
        for name, values in SETTINGS.items():
            loaded, wall, cpu = timed(read_series, folder)
            size = list(loaded.image.GetSize())
            stages = samples[name]
            stages["read"]["wall"].append(wall)
            stages["read"]["cpu"].append(cpu)
            with alignment_settings(values):
                alignment, wall, cpu = timed(canonical.align, loaded.image)
            stages["align"]["wall"].append(wall)
            stages["align"]["cpu"].append(cpu)
            _, wall, cpu = timed(cut_slice, loaded.image, alignment.transform)
            stages["slice"]["wall"].append(wall)
            stages["slice"]["cpu"].append(cpu)
            _, wall, cpu = timed(extract_brain, trusted_interior(loaded.image), alignment.transform)
            stages["brain"]["wall"].append(wall)
            stages["brain"]["cpu"].append(cpu)
            transforms[name] = alignment.transform
    row: dict[str, Any] = {"series": folder.name, "size": size}
    for name in SETTINGS:
        medians = {stage: {k: statistics.median(v) for k, v in values.items()} for stage, values in samples[name].items()}
        row[name] = {
            "median_s": medians,
            "read_align_slice_cpu_s": sum(medians[s]["cpu"] for s in ("read", "align", "slice")),
            "read_align_slice_wall_s": sum(medians[s]["wall"] for s in ("read", "align", "slice")),
        }
    row["shipped_over_previous"] = row["shipped"]["read_align_slice_cpu_s"] / row["previous"]["read_align_slice_cpu_s"]
    row["shipped_over_itk"] = row["shipped"]["read_align_slice_cpu_s"] / row["itk"]["read_align_slice_cpu_s"]
    row["pose_shipped_vs_previous"] = pose_difference(transforms["previous"], transforms["shipped"])
    row["pose_shipped_vs_itk"] = pose_difference(transforms["itk"], transforms["shipped"])
    return row


def scaling_series(source: Path, out: Path) -> list[Path]:
    """The source series rewritten as sagittal DICOM series of each SCALING_THICKNESSES_MM (1 mm in-plane)."""
    image = read_series(source).image
    folders = []
    for thickness in SCALING_THICKNESSES_MM:
        folder = out / f"{thickness:g}mm"
        write_series(image, folder, patient_id="BENCH", orientation="sagittal", slice_thickness_mm=thickness, pixel_spacing_mm=1.0)
        folders.append(folder)
    return folders


def profile_pass(folders: list[Path]) -> str:
    """cProfile's top functions (cumulative and own time) for one read + align + slice pass over ``folders``, per
    setting."""
    parts = []
    for name, values in SETTINGS.items():
        profiler = cProfile.Profile()
        with alignment_settings(values):
            profiler.enable()
            for folder in folders:
                loaded = read_series(folder)
                cut_slice(loaded.image, canonical.align(loaded.image).transform)
            profiler.disable()
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(25)
            parts.append(f"===== {name} settings, sorted by {order} =====\n{text.getvalue().strip()}\n")
    return "\n".join(parts)


def to_markdown(report: dict[str, Any]) -> str:
    head = report["headline"]
    lines = [
        "# Slice pipeline: seconds per real T1 series (one SimpleITK thread, one process)",
        "",
        f"Measured {report['date']} on {report['machine']}, load average at start {report['load_average']} and at end "
        f"{report['load_average_end']}, {report['repeats']} repeats, medians of CPU seconds (wall in brackets). "
        f"Command: `{report['command']}`",
        "",
        f"**Headline (shipped settings):** read + align + slice of the 176-slice 1 mm series ({HEADLINE_SERIES}) "
        f"{head['slice_s_p50']:.2f} s; median over the real series {head['slice_s_p50_all_real']:.2f} s; alignment "
        f"{head['align_s_p50']:.2f} s. Previous settings, same run: {report['previous']['slice_s_p50']:.2f} s, "
        f"{report['previous']['slice_s_p50_all_real']:.2f} s, {report['previous']['align_s_p50']:.2f} s; the shipped "
        f"settings on SimpleITK's registration (engine \"itk\"): {report['itk']['slice_s_p50']:.2f} s, "
        f"{report['itk']['slice_s_p50_all_real']:.2f} s, {report['itk']['align_s_p50']:.2f} s.",
        "",
        "| series | size | read | align previous | align itk | align shipped | slice ms | brain ms | read+align+slice previous | itk | shipped "
        "| ratio to previous | ratio to itk | pose change from itk |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["series"] + report["scaling"]:
        old, itk, new = row["previous"], row["itk"], row["shipped"]
        pose = row["pose_shipped_vs_itk"]
        lines.append(
            f"| {row['series']} | {'x'.join(map(str, row['size']))} | {new['median_s']['read']['cpu']:.2f} | "
            + " | ".join(f"{r['median_s']['align']['cpu']:.2f} ({r['median_s']['align']['wall']:.2f})" for r in (old, itk, new))
            + f" | {1000 * new['median_s']['slice']['cpu']:.0f} | {1000 * new['median_s']['brain']['cpu']:.0f} | "
            f"{old['read_align_slice_cpu_s']:.2f} | {itk['read_align_slice_cpu_s']:.2f} | {new['read_align_slice_cpu_s']:.2f} | "
            f"{row['shipped_over_previous']:.2f} | {row['shipped_over_itk']:.2f} | {pose['rotation_deg']:.2f}°, {pose['centre_mm']:.2f} mm |"
        )
    lines += [
        "",
        "Rows `trio-*mm`: the Trio series rewritten with that slice thickness (number of slices in the size). "
        "Pose change: rotation between the poses of the \"itk\" engine and the shipped (numpy) engine, same settings "
        "otherwise, and how far apart they put the canonical plane's centre. The numpy engine's sample points of the reference are built once per process, "
        "before the timings (`canonical.prepare_alignment`).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--profile", action="store_true", help="also write bench/results/profile_slice.txt")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    canonical.prepare_alignment()  # the reference and its sample points, once per process, outside the timings
    load_average = [round(v, 2) for v in os.getloadavg()]
    folders = sorted((args.data / "t1").iterdir())
    rows = [bench_series(folder, args.repeats) for folder in folders]
    with tempfile.TemporaryDirectory() as tmp:
        scaled = scaling_series(args.data / "t1" / HEADLINE_SERIES, Path(tmp))
        scaling = []
        for folder in scaled:
            row = bench_series(folder, args.repeats)
            row["series"] = f"trio-{folder.name}"
            scaling.append(row)
    if args.profile:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "profile_slice.txt").write_text(
            f"# bench/bench_slice.py --profile: one pass over {len(folders)} real series, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}\n\n"
            + profile_pass(folders)
        )

    def figures(name: str) -> dict[str, float]:
        headline_row = next(r for r in rows if r["series"] == HEADLINE_SERIES)
        return {
            "slice_s_p50": round(headline_row[name]["read_align_slice_cpu_s"], 3),
            "slice_s_p50_all_real": round(statistics.median(r[name]["read_align_slice_cpu_s"] for r in rows), 3),
            "align_s_p50": round(statistics.median(r[name]["median_s"]["align"]["cpu"] for r in rows), 3),
        }

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": 1,
        "load_average": load_average,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "repeats": args.repeats,
        "command": "nice -n 5 .venv/bin/python bench/bench_slice.py --repeats " + str(args.repeats) + (" --profile" if args.profile else ""),
        "headline": figures("shipped"),
        "previous": figures("previous"),
        "itk": figures("itk"),
        "previous_settings": {k: list(v) if isinstance(v, tuple) else v for k, v in PREVIOUS_SETTINGS.items()},
        "series": rows,
        "scaling": scaling,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "slice.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "slice.md").write_text(to_markdown(report))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
