"""Alignment precision on known re-posings of the real series: does a faster alignment find the same anatomy?

Each real T1 series of the shared data is aligned as it is, then moved in its own field of view by known rigid
transforms (turns of 4-9 degrees about all three axes with shifts of 6-15 mm, resampled on the series' own grid) and
aligned again. A perfect alignment finds the known transform composed with the first pose; the residual is the
rotation between what it found and that, and how far apart the two put the canonical plane's centre. Both alignment
engines (``fingerprint.imaging.canonical.ALIGNMENT_ENGINES``) run on the same volumes in the same run, with their CPU
seconds per alignment. Nothing is fitted here.

Usage::

    nice -n 10 .venv/bin/python bench/bench_alignment_precision.py [--data ../shared/data]
    nice -n 10 .venv/bin/python bench/bench_alignment_precision.py --candidate REFINE_SAMPLING_FRACTION=0.15

Writes bench/results/alignment_precision.json and .md (with ``--candidate``: alignment_precision_candidate.json and
.md, the shipped settings against the candidate).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_slice import alignment_settings, pose_difference  # noqa: E402

from fingerprint.imaging import canonical  # noqa: E402
from fingerprint.imaging.dicom_read import read_series  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SERIES = (
    "t1/siemens-trio-3t-sag",
    "t1/philips-elition-3t-sag-gz",
    "t1/siemens-skyra-3t-sag-child",
    "t1/siemens-prisma-xa30-enhanced-2mm",
    "t1/siemens-avanto-1.5t-axial-postcontrast",
    "repeats/decubitus-HFS-t1-2d",
)
#: Known re-posings: Euler angles (degrees, about x, y, z) and a shift (mm), about the volume's centre.
REPOSINGS: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((6.0, -4.0, 5.0), (8.0, -6.0, 10.0)),
    ((-8.0, 5.0, -3.0), (-12.0, 9.0, -6.0)),
    ((4.0, 9.0, -6.0), (6.0, 15.0, 8.0)),
)


def reposed(image: sitk.Image, angles_deg: tuple[float, float, float], shift_mm: tuple[float, float, float]) -> tuple[sitk.Image, sitk.Euler3DTransform]:
    """``image`` with its content moved: new(p) = image(T(p)), on the same grid; and T."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetRotation(*(math.radians(a) for a in angles_deg))
    transform.SetTranslation(shift_mm)
    return sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32), transform


def expected_pose(first: sitk.Transform, moved_by: sitk.Euler3DTransform) -> sitk.AffineTransform:
    """Reference -> re-posed image: the first pose, then the inverse of the re-posing, as one affine transform."""
    inverse = moved_by.GetInverse()
    composite = sitk.CompositeTransform([inverse, first])  # applied last to first: first, then the inverse
    centre = first.GetCenter()
    combined = sitk.AffineTransform(3)
    matrix = np.asarray(inverse.GetMatrix()).reshape(3, 3) @ np.asarray(first.GetMatrix()).reshape(3, 3)
    combined.SetMatrix(tuple(float(v) for v in matrix.ravel()))
    combined.SetCenter(centre)
    combined.SetTranslation(tuple(float(v) for v in np.subtract(composite.TransformPoint(centre), centre)))
    return combined


def run(data: Path, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name in SERIES:
        image = read_series(data / name).image
        for engine, values in settings.items():
            with alignment_settings(values):
                canonical.align(image)  # warm: the numpy engine builds the reference's sample points once per process
                started = time.process_time()
                first = canonical.align(image).transform
                seconds = [time.process_time() - started]
                for angles, shift in REPOSINGS:
                    moved, transform = reposed(image, angles, shift)
                    started = time.process_time()
                    found = canonical.align(moved).transform
                    seconds.append(time.process_time() - started)
                    residual = pose_difference(expected_pose(first, transform), found)
                    rows.append({"series": name, "engine": engine, "reposing": {"angles_deg": angles, "shift_mm": shift}, **residual})
                rows.append({"series": name, "engine": engine, "cpu_s_median": round(statistics.median(seconds), 3)})
                print(name, engine, [r.get("rotation_deg") for r in rows[-4:-1]], rows[-1]["cpu_s_median"], flush=True)
    summary: dict[str, Any] = {}
    for engine in settings:
        residuals = [r for r in rows if r["engine"] == engine and "rotation_deg" in r]
        times = [r["cpu_s_median"] for r in rows if r["engine"] == engine and "cpu_s_median" in r]
        summary[engine] = {
            "reposings": len(residuals),
            "rotation_deg_median": round(statistics.median(r["rotation_deg"] for r in residuals), 2),
            "rotation_deg_max": round(max(r["rotation_deg"] for r in residuals), 2),
            "centre_mm_median": round(statistics.median(r["centre_mm"] for r in residuals), 2),
            "centre_mm_max": round(max(r["centre_mm"] for r in residuals), 2),
            "cpu_s_per_alignment_median": round(statistics.median(times), 3),
        }
    return {"summary": summary, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Alignment precision on known re-posings of the real series",
        "",
        f"Measured {report['measured_at']} on {report['machine']}, load average at start {report['load_average']}. "
        f"Command: `{report['command']}`",
        "",
        "Residual: rotation between the pose found on the re-posed volume and the known re-posing composed with the "
        "pose found on the volume as it was, and how far apart they put the canonical plane's centre.",
        "",
        "| setting | re-posings | rotation median | rotation max | centre median | centre max | CPU s per alignment (median of series) |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, s in report["summary"].items():
        lines.append(
            f"| {engine} | {s['reposings']} | {s['rotation_deg_median']}° | {s['rotation_deg_max']}° | {s['centre_mm_median']} mm | "
            f"{s['centre_mm_max']} mm | {s['cpu_s_per_alignment_median']} |"
        )
    lines += ["", "| series | setting | re-posing (degrees; mm) | rotation | centre | level |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "rotation_deg" in r:
            lines.append(
                f"| {r['series']} | {r['engine']} | {r['reposing']['angles_deg']}; {r['reposing']['shift_mm']} | "
                f"{r['rotation_deg']}° | {r['centre_mm']} mm | {r['level_mm']} mm |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--candidate", nargs="+", default=[], metavar="NAME=VALUE",
                        help="compare the shipped settings with these module constants of canonical (nothing is shipped)")
    args = parser.parse_args()
    settings: dict[str, dict[str, Any]] = {engine: {"ALIGNMENT_ENGINE": engine} for engine in canonical.ALIGNMENT_ENGINES}
    if args.candidate:
        settings = {"shipped": {}, "candidate": {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in args.candidate)}}
    load = list(os.getloadavg())
    report = {
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(v, 2) for v in load],
        "command": " ".join(["nice -n 10 .venv/bin/python bench/bench_alignment_precision.py", *sys.argv[1:]]),
        "settings": settings,
        **run(args.data, settings),
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "alignment_precision_candidate" if args.candidate else "alignment_precision"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(report))
    print(markdown(report).split("\n\n")[3])


if __name__ == "__main__":
    main()
