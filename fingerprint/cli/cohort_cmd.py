"""``deepbrainprint cohort ...``: the synthetic longitudinal cohort (training set, benchmark, calibration set)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

cohort_app = typer.Typer(
    help="Synthetic longitudinal cohorts built from real heads: training slices, the held-out benchmark, calibration.",
    no_args_is_help=True,
)

#: Per kind: (subjects, visits, seed, output format) when the options are not given.
KIND_DEFAULTS = {
    "train": (1000, 4, 0, "slices"),
    "benchmark": (200, 3, None, "volumes"),  # seed None: visits.BENCHMARK_SEED, the same benchmark for everyone
    "calibration": (100, 3, 1, "volumes"),
}


@cohort_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created; files in it are replaced).")],
    kind: Annotated[
        str,
        typer.Option(
            help="train: training heads, 10% of subjects in a patient-disjoint 'val' split, canonical slices (fast "
            "path). benchmark: held-out heads (Colin27, siemens-trio), fixed seed, full 3D volumes in scanner space. "
            "calibration: training heads, other seeds, volumes."
        ),
    ] = "train",
    subjects: Annotated[int | None, typer.Option(help="Number of subjects (default: train 1000, benchmark 200, calibration 100).")] = None,
    visits: Annotated[int | None, typer.Option(help="Visits per subject (default: train 4, benchmark 3, calibration 3).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: train 0, benchmark 20230227, calibration 1); same seed, same cohort.")] = None,
    output_format: Annotated[
        str | None,
        typer.Option("--format", help="slices: cohort.csv + slices.npz (float16 canonical slices). volumes: one .nii.gz "
                     "per scan + cohort.csv with a path column. (default: slices for train, volumes otherwise)"),
    ] = None,
    dicom: Annotated[int, typer.Option(help="volumes only: also write the first N scans as DICOM series (dicom/<scan_id>/).")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes (the machine is shared: keep it small).")] = 1,
) -> None:
    """Generate a cohort: subjects (smooth deformations of real heads) and their visits (ageing, scanner, position).

    Writes cohort.csv (scan_id, subject_id, visit, date, base_head, split[, path]), cohort.json (parameters, head split,
    timings) and slices.npz or the volumes. Progress goes to stderr.
    """
    from tqdm import tqdm

    from fingerprint.cohort import heads, visits as visit_plans
    from fingerprint.cohort.records import write_manifest

    if kind not in KIND_DEFAULTS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(KIND_DEFAULTS)}")
    default_subjects, default_visits, default_seed, default_format = KIND_DEFAULTS[kind]
    n_subjects = subjects if subjects is not None else default_subjects
    n_visits = visits if visits is not None else default_visits
    seed_value = seed if seed is not None else (default_seed if default_seed is not None else visit_plans.BENCHMARK_SEED)
    fmt = output_format or default_format
    if fmt not in ("slices", "volumes"):
        raise typer.BadParameter("--format must be slices or volumes")
    plans = visit_plans.plan_subjects(kind, n_subjects, seed_value)
    started = time.perf_counter()
    with tqdm(total=len(plans), unit="subject", desc=f"cohort {kind}") as bar:
        if fmt == "slices":
            from fingerprint.cohort.training_set import write_slice_cohort

            scans = write_slice_cohort(out, plans, n_visits, workers, bar.update)
        else:
            from fingerprint.cohort.benchmark import write_volume_cohort

            scans = write_volume_cohort(out, plans, n_visits, workers, bar.update, dicom_scans=dicom)
    seconds = time.perf_counter() - started
    write_manifest(
        out,
        {
            "kind": kind,
            "format": fmt,
            "seed": seed_value,
            "subjects": n_subjects,
            "visits": n_visits,
            "scans": scans,
            "base_heads": sorted({p.base_head for p in plans}),
            "training_heads": list(heads.TRAINING_HEADS),
            "held_out_heads": list(heads.HELD_OUT_HEADS),
            "head_cache_version": heads.HEAD_CACHE_VERSION,
            "residual_rotation_sd_deg": visit_plans.RESIDUAL_ROTATION_SD_DEG,
            "residual_shift_sd_mm": visit_plans.RESIDUAL_SHIFT_SD_MM,
            "workers": workers,
            "seconds": round(seconds, 1),
        },
    )
    typer.echo(f"{scans} scans of {n_subjects} subjects written to {out} in {seconds:.0f} s", err=True)


def register(app: typer.Typer) -> None:
    """Add ``deepbrainprint cohort`` to the app."""
    app.add_typer(cohort_app, name="cohort")
