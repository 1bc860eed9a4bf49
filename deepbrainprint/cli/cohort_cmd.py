"""``deepbrainprint cohort ...``: the synthetic longitudinal cohort (training set, benchmark, calibration set) and
the real-head cohorts (visits of real people, for calibrating and testing verification on real anatomy)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer

cohort_app = typer.Typer(
    help="Synthetic longitudinal cohorts built from real heads: training slices, the held-out benchmark, calibration.",
    no_args_is_help=True,
)

#: Per kind: (subjects, visits, seed, output format) when the options are not given.
KIND_DEFAULTS: dict[str, tuple[int | None, int, int | None, str]] = {
    "train": (1000, 4, 0, "slices"),
    "benchmark": (200, 3, None, "volumes"),  # seed None: visits.BENCHMARK_SEED, the same benchmark for everyone
    "calibration": (100, 3, 1, "volumes"),
    "real-calibration": (None, 3, 2, "volumes"),  # subjects None: one per real head of the kind
    "real-test": (None, 3, 3, "volumes"),
}


@cohort_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created; files in it are replaced).")],
    kind: Annotated[
        str,
        typer.Option(
            help="train: training heads (or --heads), 10% of subjects in a patient-disjoint 'val' split, canonical "
            "slices (fast path). benchmark: held-out heads (Colin27, siemens-trio), fixed seed, full 3D volumes in scanner space. "
            "calibration: training heads, other seeds, volumes. real-calibration / real-test: one subject per REAL "
            "person of heads.REAL_CALIBRATION_HEADS / REAL_TEST_HEADS (no warp, mild ageing), ~25% thick 2D "
            "visits, volumes."
        ),
    ] = "train",
    subjects: Annotated[int | None, typer.Option(help="Number of subjects (default: train 1000, benchmark 200, calibration 100; real kinds: every real head).")] = None,
    visits: Annotated[int | None, typer.Option(help="Visits per subject (default: train 4, others 3).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: train 0, benchmark 20230227, calibration 1, real-calibration 2, real-test 3); same seed, same cohort.")] = None,
    output_format: Annotated[
        str | None,
        typer.Option("--format", help="slices: cohort.csv + slices.npz (float16 canonical slices). volumes: one .nii.gz "
                     "per scan + cohort.csv with a path column. (default: slices for train, volumes otherwise)"),
    ] = None,
    dicom: Annotated[int, typer.Option(help="volumes only: also write the first N scans as DICOM series (dicom/<scan_id>/).")] = 0,
    workers: Annotated[int, typer.Option(help="Worker processes (the machine is shared: keep it small).")] = 1,
    head_set: Annotated[
        str,
        typer.Option(
            "--heads",
            help="train only: the base heads subjects are warps of. training: heads.TRAINING_HEADS (MNI152 and four "
            "t1/ series; the default, the same cohort as ever). real-calibration: the 26 real people of "
            "heads.REAL_CALIBRATION_HEADS (each subject still a new warped person; the real-test people are never used).",
        ),
    ] = "training",
    residual: Annotated[
        str,
        typer.Option(help="slices only: the pipeline alignment error to mimic. measured: per-subject offset + per-visit "
                     "spread + 5% larger errors, as measured for the current pipeline. coarse-sampling: the earlier pipeline's "
                     "(10% failures of ~10 deg). first: 1.5 deg / 1.5 mm per visit only."),
    ] = "measured",
    thick_2d_share: Annotated[
        float,
        typer.Option(
            "--thick-2d-share",
            help="real kinds only: share of visits acquired as thick (4-5 mm) 2D series, the site's scanner settings "
            "(default 0.25).",
        ),
    ] = 0.25,
) -> None:
    """Generate a cohort: subjects (smooth deformations of real heads, or real people as they are for the real-*
    kinds) and their visits (ageing, scanner, position).

    Writes cohort.csv (scan_id, subject_id, visit, date, base_head, split[, path]), cohort.json (parameters, head split,
    timings) and slices.npz or the volumes. Progress goes to stderr.
    """
    from tqdm import tqdm

    from fingerprint.cohort import heads
    from fingerprint.cohort import visits as visit_plans
    from fingerprint.cohort.records import write_manifest

    if kind not in KIND_DEFAULTS:
        raise typer.BadParameter(f"--kind must be one of {', '.join(KIND_DEFAULTS)}")
    default_subjects, default_visits, default_seed, default_format = KIND_DEFAULTS[kind]
    n_subjects = subjects if subjects is not None else (default_subjects or len(visit_plans.REAL_KINDS[kind][2]))
    n_visits = visits if visits is not None else default_visits
    seed_value = seed if seed is not None else (default_seed if default_seed is not None else visit_plans.BENCHMARK_SEED)
    fmt = output_format or default_format
    if fmt not in ("slices", "volumes"):
        raise typer.BadParameter("--format must be slices or volumes")
    if residual not in visit_plans.RESIDUAL_MODELS:
        raise typer.BadParameter(f"--residual must be one of {', '.join(visit_plans.RESIDUAL_MODELS)}")
    if head_set not in visit_plans.TRAIN_HEAD_SETS:
        raise typer.BadParameter(f"--heads must be one of {', '.join(visit_plans.TRAIN_HEAD_SETS)}")
    if head_set != visit_plans.DEFAULT_HEAD_SET and kind != "train":
        raise typer.BadParameter("--heads is for --kind train only")
    if not 0.0 <= thick_2d_share <= 1.0:
        raise typer.BadParameter("--thick-2d-share must be between 0 and 1")
    if thick_2d_share != visit_plans.THICK_2D_SHARE and kind not in visit_plans.REAL_KINDS:
        raise typer.BadParameter("--thick-2d-share is for the real kinds only")
    plans = visit_plans.plan_subjects(kind, n_subjects, seed_value, head_set, thick_2d_share)
    n_subjects = len(plans)  # real kinds: at most one subject per head
    _require_heads(sorted({p.base_head for p in plans}))
    started = time.perf_counter()
    with tqdm(total=len(plans), unit="subject", desc=f"cohort {kind}") as bar:
        if fmt == "slices":
            from fingerprint.cohort.training_set import write_slice_cohort

            scans = write_slice_cohort(out, plans, n_visits, workers, bar.update, visit_plans.RESIDUAL_MODELS[residual])
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
            **({"head_set": head_set} if head_set != visit_plans.DEFAULT_HEAD_SET else {}),
            "held_out_heads": list(heads.HELD_OUT_HEADS),
            **(_real_manifest(kind) if kind in visit_plans.REAL_KINDS else {}),
            **({"thick_2d_share": thick_2d_share} if kind in visit_plans.REAL_KINDS else {}),
            "head_cache_version": heads.HEAD_CACHE_VERSION,
            # The residual alignment error is only simulated on the fast path; volumes go through the real pipeline.
            "residual_model": {"name": residual, **dataclasses.asdict(visit_plans.RESIDUAL_MODELS[residual])} if fmt == "slices" else None,
            "workers": workers,
            "seconds": round(seconds, 1),
        },
    )
    typer.echo(f"{scans} scans of {n_subjects} subjects written to {out} in {seconds:.0f} s", err=True)


def _require_heads(names: list[str]) -> None:
    """Stop with a clear message (exit 2) when a base head is neither cached nor readable here (shared/data absent)."""
    from fingerprint.cohort import heads

    missing = [name for name in names if not heads.head_available(name)]
    if missing:
        raise typer.BadParameter(
            f"{len(missing)} base head(s) not found (not cached, source absent): {', '.join(missing)}; "
            f"shared data is read from {heads.SHARED_DATA} (set DBP_SHARED_DATA)"
        )


def _real_manifest(kind: str) -> dict[str, object]:
    """What a real-head cohort's cohort.json adds: the real split and the thick 2D share."""
    from fingerprint.cohort import heads
    from fingerprint.cohort import visits as visit_plans

    return {
        "real_person_cohort": True,
        "real_calibration_heads": list(heads.REAL_CALIBRATION_HEADS),
        "real_test_heads": list(heads.REAL_TEST_HEADS),
        "thick_2d_share": visit_plans.THICK_2D_SHARE,
        "thick_2d_slice_mm": list(visit_plans.THICK_2D_SLICE_MM),
    }


@cohort_app.command("preview")
def preview(
    cohort: Annotated[Path, typer.Argument(help="A slice cohort folder (cohort.csv + slices.npz).")],
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    subjects: Annotated[int, typer.Option(help="Rows: the first N subjects.")] = 8,
) -> None:
    """Write a PNG grid of canonical slices, one row per subject, one column per visit: look at the pixels."""
    import csv

    import numpy as np
    from PIL import Image

    data = np.load(cohort / "slices.npz")
    index = {scan_id: i for i, scan_id in enumerate(data["scan_id"])}
    rows: dict[str, list[int]] = {}
    with open(cohort / "cohort.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["scan_id"] in index and (row["subject_id"] in rows or len(rows) < subjects):
                rows.setdefault(row["subject_id"], []).append(index[row["scan_id"]])
    width = max(len(v) for v in rows.values())
    tiles = [[data["slices"][i].astype(np.float32) for i in v] + [np.zeros((128, 128), np.float32)] * (width - len(v)) for v in rows.values()]
    grid = np.concatenate([np.concatenate(t, axis=1) for t in tiles], axis=0)
    Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(out)
    typer.echo(f"{out}: {len(rows)} subjects x up to {width} visits", err=True)


@cohort_app.command("measure-alignment")
def measure_alignment(
    cohort: Annotated[Path, typer.Argument(help="A benchmark or calibration folder (volumes) made by 'cohort generate'.")],
    limit: Annotated[int | None, typer.Option(help="Only the first N scans (alignment takes ~2-8 s each).")] = None,
    out: Annotated[Path | None, typer.Option(help="JSON file for per-scan records + summary [COHORT/alignment.json].")] = None,
) -> None:
    """Measure the slice pipeline's residual alignment error against the known truth; print the summary as JSON.

    The residual is pose o alignment (reference -> subject space): its rotation and where the canonical plane's centre
    lands (dz = error of the axial level). The training fast path's residual should match its within-subject spread.
    """
    import json

    from fingerprint.cohort.alignment_check import measure

    result = measure(cohort, limit)
    target = out or cohort / "alignment.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result["summary"], indent=2))


def register(app: typer.Typer) -> None:
    """Add ``deepbrainprint cohort`` to the app."""
    app.add_typer(cohort_app, name="cohort")
