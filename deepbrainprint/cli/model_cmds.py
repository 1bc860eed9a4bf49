"""``deepbrainprint fingerprint``, ``train``, ``evaluate`` and ``quantize``: the model's commands.

Exit codes of ``fingerprint``: 0 when every series was fingerprinted, 1 when at least one was rejected or failed
(each still gets its own output line; the others are processed), 2 for usage errors (Typer's). Its output names each
series by a label, its folder only with ``--show-paths`` (:mod:`deepbrainprint.cli.labels`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from deepbrainprint.cli.labels import ShowPathsOption, series_label

METHODS = ("anatomical", "middle")


def _fingerprint_one(
    series_dir: str, position: int, total: int, method: str, model: Any, show_paths: bool = False
) -> tuple[dict[str, Any], bool]:
    """One series' output object and whether it succeeded. Never raises: one bad series must not stop the others.

    The series is named by its label (:func:`series_label`); its folder (``series_dir``) and an unexpected error's
    message (``detail``) are added only with ``show_paths``: a folder's name may carry a patient's, and an error's
    message may quote the folder. A rejection's ``detail`` stays: it is the pipeline's own reason text (codes,
    counts, header values such as the modality), which names no path.
    """
    from fingerprint.errors import SeriesRejected
    from fingerprint.model.fingerprinter import fingerprint_series

    ok = False
    try:
        result = fingerprint_series(Path(series_dir), method=method, model=model)
    except SeriesRejected as exc:
        uid = exc.identifiers.series_instance_uid if exc.identifiers is not None else ""
        out: dict[str, Any] = exc.as_json()
    except Exception as exc:  # noqa: BLE001 - reported per series, by its class (the message may quote the path)
        uid = ""
        out = {"error": type(exc).__name__, **({"detail": str(exc)[:500]} if show_paths else {})}
    else:
        ok, uid = True, result.slice.identifiers.series_instance_uid
        out = {
            "fingerprint": [round(float(v), 7) for v in result.vector],
            "model_version": result.model_version,
            "method": result.slice.method,
            "geometry": result.slice.geometry,
            "series": result.slice.identifiers.as_json(include_patient_id=False),
        }
    where = {"series_dir": series_dir} if show_paths else {}
    return {"label": series_label(position, total, uid), **where, **out}, ok


def fingerprint_cmd(
    series_dirs: list[str] = typer.Argument(..., metavar="SERIES_DIR...", help="DICOM series folders."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line per series (else a summary line)."),
    method: str = typer.Option("anatomical", help="Slice method: anatomical (product) or middle (paper protocol)."),
    model_path: Optional[Path] = typer.Option(None, "--model", help="Weights folder; default: the shipped weights."),
    show_paths: ShowPathsOption = False,
) -> None:
    """Fingerprint each series: a 512-d L2-normalised vector, the model version and the slice geometry. Each series
    is named by a label, not by its folder (folder names often carry patients' names): N/TOTAL, its place among the
    SERIES_DIRs given, and series:<12 hex>, the start of the hash of its SeriesInstanceUID that the spool and the
    worker use (the place only when no header could be read). JSON fields: label, fingerprint, model_version,
    method, geometry, series (its UIDs, modality, manufacturer, description; no PatientID); a rejected series prints
    {"label", "rejected": CODE, "detail"} and an unexpected failure {"label", "error": CLASS}, and the others go on.
    series_dir, and an unexpected failure's message (detail), only with --show-paths. Exit code 1 if any series was
    rejected or failed, 0 otherwise."""
    from fingerprint.model.fingerprinter import load_model

    if method not in METHODS:
        raise typer.BadParameter(f"method must be one of {', '.join(METHODS)}")
    model = load_model(model_path)
    all_ok = True
    for position, series_dir in enumerate(series_dirs, start=1):
        output, ok = _fingerprint_one(series_dir, position, len(series_dirs), method, model, show_paths)
        all_ok &= ok
        where = f"{series_dir}\t" if show_paths else ""
        if as_json:
            typer.echo(json.dumps(output, default=str))
        elif ok:
            typer.echo(f"{output['label']}\t{where}OK\t{output['model_version']}\t{len(output['fingerprint'])} floats")
        else:
            reason = output.get("rejected") or output.get("error")
            detail = f": {output['detail']}" if "detail" in output else ""
            typer.echo(f"{output['label']}\t{where}REJECTED\t{reason}{detail}")
        sys.stdout.flush()
    if not all_ok:
        raise typer.Exit(code=1)


def train_cmd(
    cohort_dir: Path = typer.Argument(..., help="Cohort folder: cohort.csv + slices.npz, or cohort.csv with volumes."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/train-<UTC time>)."),
    max_minutes: Optional[float] = typer.Option(None, help="Wall-time budget; β and lr schedules end with it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    beta_schedule: str = typer.Option("linear", help="linear (1 - t/H, paper) | constant (0.5) | step."),
    branch: str = typer.Option("both", help="both | ssl (Barlow Twins only) | supervised (NT-Xent only)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = typer.Option("auto", help="auto (bf16 where supported) | bf16 | fp32."),
    epochs: int = typer.Option(180, help="Epochs planned (the paper's 180); --max-minutes usually ends first."),
    max_steps: Optional[int] = typer.Option(None, help="Steps planned, instead of epochs."),
    batch_size: int = typer.Option(64),
    per_subject: int = typer.Option(4, help="Scans per subject in a batch (P×K sampling)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    seed: int = typer.Option(0),
    validate_every: Optional[int] = typer.Option(None, help="Steps between validations (default: one epoch)."),
    patience: int = typer.Option(10, help="Validations without gain (mAP@3 + TPR at 0.1 % FPR) before early stopping."),
    slice_method: str = typer.Option("anatomical", help="Slice method when the cohort holds volumes."),
    model_version: Optional[str] = typer.Option(None, help="Version string written into model.json."),
    init: Optional[Path] = typer.Option(None, help="Start the encoder from this weights folder (fine-tuning)."),
) -> None:
    """Train the encoder (Barlow Twins + supervised NT-Xent, LARS), with checkpoints, a curve plot and a log."""
    from datetime import datetime, timezone

    from fingerprint.model.losses import BETA_SCHEDULES, BRANCHES
    from fingerprint.model.training.checkpoint import CHECKPOINT_FILE
    from fingerprint.model.training.loop import TrainConfig, train

    if beta_schedule not in BETA_SCHEDULES:
        raise typer.BadParameter(f"--beta-schedule must be one of {', '.join(BETA_SCHEDULES)}")
    if branch not in BRANCHES:
        raise typer.BadParameter(f"--branch must be one of {', '.join(BRANCHES)}")
    run_dir = out or Path("runs") / f"train-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    if (run_dir / CHECKPOINT_FILE).exists() and not resume:
        typer.echo(f"{run_dir} already holds a run: pass --resume to continue it, or another --out", err=True)
        raise typer.Exit(code=2)
    config = TrainConfig(
        cohort_dir=cohort_dir, run_dir=run_dir, max_minutes=max_minutes, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, per_subject=per_subject, beta_schedule=beta_schedule, branch=branch, device=device,
        precision=precision, threads=threads, seed=seed, validate_every=validate_every, patience=patience,
        slice_method=slice_method, model_version=model_version, init_weights=init,
    )
    summary = train(config)
    training = summary["metadata"]["training"]
    typer.echo(json.dumps({
        "model_dir": summary["model_dir"], "model_version": summary["metadata"]["model_version"],
        "steps": training["steps"], "wall_time_s": training["wall_time_s"],
        "stopped_because": training["stopped_because"], "validation": training["validation_at_selected_step"],
    }, indent=2))


def evaluate_cmd(
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Benchmark cohort folder (cohort.csv + volumes)."),
    real_heads: Optional[Path] = typer.Option(
        None,
        "--real-heads",
        help="Held-out real-head cohort (cohort generate --kind real-test): the real-head benchmark, with the real "
        "series of the shared data, raw pixels vs fingerprint vs fingerprint + verification.",
    ),
    model_path: Optional[Path] = typer.Option(None, "--model", help="Main model; default: the shipped weights."),
    out: Path = typer.Option(..., "--out", help="Folder for results.json, results.md and the histograms."),
    compare: list[str] = typer.Option(
        [], "--compare", help="NAME=WEIGHTS_DIR of another model to evaluate alongside (repeatable)."
    ),
    repeats: Optional[Path] = typer.Option(
        None, help="Real-data folder with t1/ and repeats/ (default: the shared data when present)."
    ),
    skip_real: bool = typer.Option(False, "--skip-real", help="Skip the real repeat-scan check."),
    cache: Optional[Path] = typer.Option(None, help="Where sliced benchmark volumes are cached (default: in --out)."),
    split: Optional[str] = typer.Option(None, help="Only rows of this split of cohort.csv (default: all rows)."),
    subjects: Optional[int] = typer.Option(None, help="Only the first N subjects of cohort.csv (default: all)."),
    workers: int = typer.Option(1, help="Processes slicing the volumes not yet cached (alignment about 0.3 s CPU each)."),
) -> None:
    """Leave-one-out retrieval + verification on a held-out cohort, comparing models, slice methods and a raw-pixel
    baseline in one run; plus the real repeat-scan check. With --real-heads: the real-head benchmark instead."""
    from fingerprint.evaluation.slice_benchmark import (
        default_real_data_dir,
        run_benchmark,
    )

    if real_heads is not None:
        _real_head_benchmark(real_heads, model_path, out, None if skip_real else default_real_data_dir(), workers)
        return
    if cohort is None:
        raise typer.BadParameter("give --cohort (synthetic benchmark) or --real-heads (real-head benchmark)")

    others: dict[str, Path] = {}
    for item in compare:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--compare expects NAME=WEIGHTS_DIR, got {item!r}")
        others[name] = Path(path)
    real = None if skip_real else (repeats if repeats is not None else default_real_data_dir())
    if real is not None and not (real / "repeats").is_dir():
        raise typer.BadParameter(f"{real} has no repeats/ folder (pass --skip-real to skip the real-data check)")
    report = run_benchmark(
        cohort_dir=cohort, model_path=model_path, out_dir=out, others=others, real_data_dir=real,
        cache_dir=cache, split=split, subjects=subjects, workers=workers,
    )
    typer.echo((Path(out) / "results.md").read_text())
    typer.echo(f"written: {out}/results.json, results.md, similarity_histograms.png ({len(report['rows'])} rows)")


def _real_head_benchmark(cohort: Path, model_path: Optional[Path], out: Path, shared: Optional[Path], workers: int) -> None:
    """The real-head benchmark (:mod:`fingerprint.evaluation.identity_benchmark`) with the shipped or given thresholds."""
    from deepbrainprint.settings import load_settings
    from fingerprint.evaluation.identity_benchmark import run_identity_benchmark
    from fingerprint.evaluation.identity_data import (
        all_pairs,
        cohort_views,
        score_pairs,
        shared_views,
    )
    from fingerprint.identity.calibration import resolve_thresholds
    from fingerprint.identity.verification import METHOD_VERSION
    from fingerprint.model.fingerprinter import load_model

    settings = load_settings(model_path=model_path)
    fingerprinter = load_model(settings.model_path, runtime=settings.model_runtime)
    views = cohort_views(cohort, workers)
    if shared is not None:
        views = views + shared_views(shared, Path(out) / "shared-views", workers)
    pairs = score_pairs(views, all_pairs(views), workers, cache=Path(out) / "pair-cache")
    archive_config = settings.archive_config()
    verification = resolve_thresholds(METHOD_VERSION, index_dir=archive_config.index_dir, model_dir=archive_config.model_dir)
    run_identity_benchmark(
        views,
        pairs,
        fingerprinter.embed,
        resolve_thresholds(fingerprinter.model_version, index_dir=archive_config.index_dir, model_dir=archive_config.model_dir),
        None if verification.source == "fallback" else verification,
        Path(out),
    )
    typer.echo((Path(out) / "identity.md").read_text())
    typer.echo(f"written: {out}/identity.json, identity.md")


def quantize_cmd(
    cohort: Path = typer.Option(..., "--cohort", help="Calibration people (cohort generate --kind real-calibration)."),
    model_path: Optional[Path] = typer.Option(None, "--model", help="Weights folder; default: the shipped weights."),
    workers: int = typer.Option(1, "--workers", help="Processes for slicing the cohort's volumes."),
) -> None:
    """Make the int8 graph of the weights (written beside them as encoder-int8.onnx + encoder-int8.json): ONNX
    Runtime static quantization, 7-bit per-channel weights, 8-bit activations whose ranges are measured on the
    cohort's canonical slices (calibration people only). Its fingerprints are the model version <version>+int8
    (use it with DBP_MODEL_RUNTIME=int8, after `calibrate` has set thresholds for that version)."""
    import numpy as np

    from fingerprint.evaluation.identity_data import cohort_views
    from fingerprint.locations import SHIPPED_WEIGHTS_DIR, weights_folder
    from fingerprint.model.encoder import load_encoder
    from fingerprint.model.quantize import quantize_encoder

    folder = weights_folder(Path(model_path)) if model_path is not None else SHIPPED_WEIGHTS_DIR
    if not (cohort / "cohort.csv").exists():
        raise typer.BadParameter(f"{cohort}/cohort.csv not found")
    encoder, metadata = load_encoder(folder)
    views = cohort_views(cohort, workers)
    manifest = quantize_encoder(
        encoder, views.slices.astype(np.float32), folder, model_version=str(metadata["model_version"]),
        description=f"{cohort.name}: {len(views.slices)} canonical slices of {len(set(views.people.tolist()))} people",
    )
    typer.echo(json.dumps({k: v for k, v in manifest.items() if k != "probe_fingerprints"}, indent=2))


def register(app: typer.Typer) -> None:
    """Add this module's subcommands to the app."""
    app.command("fingerprint")(fingerprint_cmd)
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("quantize")(quantize_cmd)
